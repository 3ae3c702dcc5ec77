"""The offline install onto a host's own torch: scripts/wheelhouse.sh builds the wheelhouse
(here, where the registry is reachable, for this interpreter), scripts/install.sh
--wheelhouse installs from it with --no-index into a --target folder for a fresh "host" venv
that already has torch and some of the service's dependencies at other versions than the
pins. Torch and those packages must stay the host's; the rest comes from the wheelhouse;
the engine then loads the random-weight demo model and reads one image from PYTHONPATH=SITE
alone (not the checkout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.tools import REPO

pytestmark = pytest.mark.slow

# Already on the "host", at versions the pins (scripts/constraints.txt) do not have: the
# install must keep them rather than re-pin them into the target.
HOST_EXTRAS = ("numpy==1.26.4", "tqdm==4.66.0")

PROBE = """
import json, os, sys
from importlib import metadata
import numpy, torch, tqdm
from PIL import Image
import service
from service.inference.engine import load_engine
from service.settings import Settings

engine = load_engine(Settings())
(outcome,) = engine.run_batch([engine.preprocess(Image.new("RGB", (64, 64), (200, 30, 30)))])
print(json.dumps({
    "service": service.__file__, "numpy": [numpy.__version__, numpy.__file__],
    "tqdm": tqdm.__file__, "torch": [torch.__version__, torch.__file__],
    "xgrammar": str(metadata.distribution("xgrammar").locate_file("")),
    "tokens": outcome.generated_tokens,
}))
"""


def _run(argv: list[str], env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(
        argv, cwd=env.get("CWD", REPO), env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _link_host_torch(host: Path) -> None:
    """Give the "host" its own torch: torch and what it requires, linked from this venv's
    site-packages (installing the 200 MB wheel again cost a minute of the suite). Only
    those distributions: the service's dependencies must come from the wheelhouse."""
    (site,) = host.glob("lib/python*/site-packages")
    todo, done = ["torch"], set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        dist = metadata.distribution(name)
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
        # Top-level entries of the distribution (packages, modules, its .dist-info).
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)


def _distributions(python: Path, env: dict[str, str]) -> dict[str, str]:
    code = (
        "import json; from importlib import metadata; print(json.dumps("
        "{d.metadata['Name'].lower().replace('_', '-'): d.version for d in metadata.distributions()}))"
    )
    return dict(json.loads(_run([str(python), "-c", code], env, 60)))


def test_offline_install_keeps_the_hosts_torch_and_packages(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # Outside the checkout: its fashion_florence.egg-info would count as installed there.
    env["CWD"] = str(tmp_path)
    online = dict(env, PYTHON=sys.executable)
    wheelhouse = tmp_path / "wheelhouse"
    _run(["sh", f"{REPO}/scripts/wheelhouse.sh", str(wheelhouse)], online, 300)
    wheels = {p.name.split("-")[0].lower() for p in wheelhouse.glob("*.whl")}
    assert {"fashion_florence", "fashion_florence_client", "xgrammar", "fastapi"} <= wheels
    assert not {"torch", "triton"} & wheels
    assert not any(w.startswith("nvidia") for w in wheels)

    host = tmp_path / "host"
    python = host / "bin" / "python"
    _run([sys.executable, "-m", "venv", str(host)], env, 120)
    _link_host_torch(host)
    _run([str(python), "-m", "pip", "install", "--quiet", *HOST_EXTRAS], env, 600)
    before = _distributions(python, env)

    # Offline from here on: no index, no find-links or other pip settings from this machine.
    offline = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    offline |= {"PIP_CONFIG_FILE": os.devnull, "PYTHON": str(python)}
    site = tmp_path / "site"
    install = ["sh", f"{REPO}/scripts/install.sh", "--wheelhouse", str(wheelhouse)]
    install += ["--target", str(site)]
    _run(install, offline, 300)

    assert _distributions(python, env) == before, "the host's own environment changed"
    in_site = {p.name.split("-")[0].lower().replace("_", "-") for p in site.glob("*.dist-info")}
    assert {"fashion-florence", "fashion-florence-client", "xgrammar", "pydantic"} <= in_site
    shadowed = in_site & set(before)
    assert not shadowed, f"installed over packages the host already had: {shadowed}"
    assert not (site / "torch").exists()

    # The service runs from the target alone, on the host's torch, numpy and tqdm.
    runtime = dict(
        offline, PYTHONPATH=str(site), FF_DEMO_MODEL="random",
        FF_DEMO_MODEL_DIR=str(tmp_path / "demo"), HF_HUB_OFFLINE="1",
    )  # fmt: skip
    report = json.loads(_run([str(python), "-c", PROBE], runtime, 300).splitlines()[-1])
    assert Path(report["service"]).is_relative_to(site)
    assert Path(report["xgrammar"]).is_relative_to(site)
    assert report["torch"][0] == before["torch"]
    assert report["numpy"][0] == "1.26.4"
    for name in ("torch", "numpy", "tqdm"):
        path = report[name][1] if isinstance(report[name], list) else report[name]
        assert Path(path).is_relative_to(host), (name, path)
    assert report["tokens"] > 0

    # A second run finds nothing missing and installs nothing.
    assert _run(install, offline, 300) == ""
    assert _distributions(python, env) == before
