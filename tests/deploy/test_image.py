"""The Dockerfile: hadolint, the one install path shared with `make`, the runtime stage's
promises (non-root, no compilers, healthcheck, entrypoint, drain-aligned stop), the build
context, and the pinned runtime dependencies. No Docker engine here: what can be checked
statically is checked, and the install commands are the ones the test venv was built with."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.deploy.tools import REPO, run, tool

DOCKERFILE = REPO / "Dockerfile"
HADOLINT_CONFIG = REPO / "deploy" / "docker" / "hadolint.yaml"
INSTALL_SCRIPT = REPO / "scripts" / "install.sh"
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|cc|make|build-essential|cmake|[\w.+-]+-dev)\b")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(text: str) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for instruction, args in _instructions(text):
        if instruction == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else args
            current = stages.setdefault(name, [])
        if current is not None:
            current.append((instruction, args))
    return stages


def _chain(stages: dict[str, list[tuple[str, str]]], name: str) -> list[str]:
    """The stage and the stages it is built FROM (variant bases: all of them)."""
    chain = [name]
    base = stages[name][0][1].split()[0]
    if "-${" in base:
        # A variant stage (base-${VARIANT}, builder-${VARIANT}): every variant and its chain.
        prefix = base.split("${")[0]
        for variant in [s for s in stages if s.startswith(prefix)]:
            chain += _chain(stages, variant)
        return chain
    if base in stages:
        chain += _chain(stages, base)
    return chain


@pytest.fixture(scope="module")
def stages() -> dict[str, list[tuple[str, str]]]:
    return _stages(DOCKERFILE.read_text())


def test_hadolint_passes_with_every_finding_fatal() -> None:
    result = run([tool("hadolint"), "--no-color", "-c", str(HADOLINT_CONFIG), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_catch_a_bad_instruction(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "RUN pip install requests\n")
    result = run([tool("hadolint"), "--no-color", "-c", str(HADOLINT_CONFIG), str(bad)])
    assert result.returncode != 0
    assert "DL3013" in result.stdout  # unpinned pip install


def test_shellcheck_passes_on_the_install_scripts() -> None:
    scripts = sorted(str(p) for p in (REPO / "scripts").glob("*.sh"))
    assert str(INSTALL_SCRIPT) in scripts
    result = run([tool("shellcheck"), "--shell=sh", *scripts])
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_and_make_share_one_install_path(stages: dict[str, list[tuple[str, str]]]) -> None:
    makefile = (REPO / "Makefile").read_text()
    dockerfile = DOCKERFILE.read_text()
    # Nobody installs packages around the script: no pip in the Dockerfile or the Makefile.
    for name, text in (("Dockerfile", dockerfile), ("Makefile", makefile)):
        assert not re.search(r"pip\s+install", text), f"{name} runs pip itself"
    cpu_runs = [args for instruction, args in stages["builder-cpu"] if instruction == "RUN"]
    # The project itself, with the optional extras an image may ask for (EXTRAS=ray).
    installs = r'sh scripts/install.sh /opt/ff \./clients/python "\.\$\{EXTRAS:\+\[\$EXTRAS\]\}"'
    assert any(re.search(installs, args) for args in cpu_runs), cpu_runs
    # The GPU variant: the offline path a GPU host runs (wheelhouse, then install onto the
    # base image's torch), never a torch install.
    gpu_runs = " ".join(a for instruction, a in stages["builder-gpu"] if instruction == "RUN")
    assert 'sh scripts/wheelhouse.sh --extras "$EXTRAS"' in gpu_runs
    assert 'sh scripts/install.sh --wheelhouse /tmp/wheels --extras "$EXTRAS"' in gpu_runs
    assert "--target /opt/ff" in gpu_runs
    assert "TORCH_SPEC" not in gpu_runs
    assert stages["builder"][0][1].startswith("builder-${VARIANT}")
    assert re.search(r"^\t.*sh scripts/install\.sh \$\(VENV\)", makefile, re.MULTILINE)
    # The same torch default everywhere.
    script_default = re.search(r"TORCH_SPEC:-([^}]+)\}", INSTALL_SCRIPT.read_text())
    make_default = re.search(r"^TORCH_SPEC \?= (\S+)$", makefile, re.MULTILINE)
    docker_default = re.search(r"^ARG TORCH_SPEC=(\S+)$", dockerfile, re.MULTILINE)
    assert script_default
    assert make_default
    assert docker_default
    assert script_default[1] == make_default[1] == docker_default[1]
    # The script applies the pins in both cases.
    assert '--constraint "$constraints"' in INSTALL_SCRIPT.read_text()


def test_runtime_pins_match_the_environment_the_tests_run_in() -> None:
    """scripts/constraints.txt pins the runtime closure at the versions installed here (the
    image gets exactly these); a new or bumped dependency must be re-locked."""
    result = run([sys.executable, "scripts/lock_runtime.py", "--check", "scripts/constraints.txt"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_stage_is_non_root_without_compilers_and_drains(
    stages: dict[str, list[tuple[str, str]]],
) -> None:
    assert list(stages)[-1] == "runtime", "the last stage is the image"
    runtime = stages["runtime"]
    users = [args for instruction, args in runtime if instruction == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"0", "root"}
    assert int(users[-1].split(":")[0]) >= 10000
    # No compiler or -dev package in anything the runtime image is made of.
    for stage in _chain(stages, "runtime"):
        for instruction, args in stages[stage]:
            if instruction == "RUN" and "apt-get install" in args:
                packages = args.split("apt-get install", 1)[1].split("&&")[0]
                assert "--no-install-recommends" in packages
                assert not COMPILERS.search(packages.replace("--no-install-recommends", "")), (
                    stage, packages,
                )  # fmt: skip
    copies = [args for instruction, args in runtime if instruction == "COPY"]
    assert all(("--from=" in c) or "healthcheck.py" in c for c in copies), copies
    entry = dict(runtime)["ENTRYPOINT"]
    assert entry == '["fashion-florence", "serve"]'
    assert dict(runtime)["STOPSIGNAL"] == "SIGTERM"
    healthcheck = dict(runtime)["HEALTHCHECK"]
    assert "healthcheck.py" in healthcheck
    # The healthcheck script asks /healthz (liveness), never /readyz.
    script = (REPO / "deploy" / "docker" / "healthcheck.py").read_text()
    assert "/healthz" in script
    assert '/readyz"' not in script


def test_models_are_mounted_or_baked_by_build_argument(
    stages: dict[str, list[tuple[str, str]]],
) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BAKE_MODEL=none$", text, re.MULTILINE)
    assert {"model-none", "model-demo", "models"} <= set(stages)
    assert stages["models"][0][1].startswith("model-${BAKE_MODEL}")
    assert any("build-demo --out /opt/models/demo" in a for _, a in stages["model-demo"])
    env = " ".join(args for instruction, args in stages["runtime"] if instruction == "ENV")
    # The demo model (FF_MODEL_PATH unset) is built into a directory that deployments mount
    # writable; the Kubernetes manifests and compose mount exactly this path.
    assert "FF_DEMO_MODEL_DIR=/var/cache/fashion-florence/demo-model" in env
    assert "HF_HUB_OFFLINE=1" in env


def test_cpu_and_gpu_variants_share_the_stages(stages: dict[str, list[tuple[str, str]]]) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.MULTILINE)
    assert stages["base-cpu"][0][1].startswith("python:3.11")
    assert stages["base-gpu"][0][1].startswith("${GPU_BASE}")
    gpu_base = re.search(r"^ARG GPU_BASE=(\S+)$", text, re.MULTILINE)
    assert gpu_base, "the GPU base is a build argument with a default"
    # The default holds a CUDA torch (the variant installs none) and no compilers.
    assert gpu_base[1].startswith("pytorch/pytorch:")
    assert re.search(r"-cuda[\d.]+-cudnn\d+-runtime$", gpu_base[1])
    # The base image's python and torch are used as they are: packages on PYTHONPATH.
    gpu_env = " ".join(a for instruction, a in stages["base-gpu"] if instruction == "ENV")
    assert "PYTHONPATH=/opt/ff" in gpu_env
    assert "VIRTUAL_ENV" not in gpu_env
    for image in (stages["base-cpu"][0][1].split()[0], gpu_base[1]):
        assert ":" in image, f"{image} is not pinned"
        assert not image.endswith(":latest"), f"{image} is not pinned"


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or a parent) decides."""
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_private() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[str] = []
    for instruction, args in _instructions(DOCKERFILE.read_text()):
        words = shlex.split(args)
        if instruction == "COPY" and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[:-1] if not w.startswith("--")]
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert not _dockerignore_excludes(relative, patterns), relative
    for private in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "models/demo/x",
                    "service/__pycache__/app.cpython-311.pyc", ".env", "bench/run.py"):  # fmt: skip
        assert _dockerignore_excludes(private, patterns), private
