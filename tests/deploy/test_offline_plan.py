"""scripts/offline_plan.py on a wheelhouse of small made-up wheels: the server's optional
extras (e.g. ``ray`` for a Ray cluster's image) add their closure, and only when asked."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.deploy.tools import REPO

# Names no real environment has, so nothing counts as already installed.
WHEELS = {
    "fashion_florence-0.1.0": ["ffplan-alpha>=1", 'ffplan-beta>=2; extra == "ray"'],
    "fashion_florence_client-0.1.0": ["ffplan-alpha"],
    "ffplan_alpha-1.0": [],
    "ffplan_beta-2.0": ["ffplan-gamma"],
    "ffplan_gamma-1.5": [],
}


def _wheelhouse(folder: Path) -> Path:
    folder.mkdir()
    for stem, requires in WHEELS.items():
        name, version = stem.rsplit("-", 1)
        metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        metadata += [f"Requires-Dist: {r}" for r in requires]
        with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{stem}.dist-info/METADATA", "\n".join(metadata) + "\n")
    return folder


def _plan(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "offline_plan.py"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_extras_add_their_closure_only_when_asked(tmp_path: Path) -> None:
    wheelhouse = str(_wheelhouse(tmp_path / "wheels"))
    base = ["fashion-florence==0.1.0", "fashion-florence-client==0.1.0", "ffplan-alpha==1.0"]
    assert _plan(wheelhouse) == base
    with_ray = _plan("--extras", "ray", wheelhouse)
    assert with_ray == [*base, "ffplan-beta==2.0", "ffplan-gamma==1.5"]
    assert _plan("--deps-only", "--extras", "ray", wheelhouse) == [
        "ffplan-alpha==1.0", "ffplan-beta==2.0", "ffplan-gamma==1.5",
    ]  # fmt: skip
