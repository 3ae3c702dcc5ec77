"""One small virtual environment per peer, its version pinned in one file.

    python -m bench.peers --install [--peers litserve,rayserve,bentoml,pytriton]

Each peer's pins conflict with ours in places (FastAPI, Starlette, pydantic), and none of
them may enter the service's dependencies, so each gets ``.venv-peers/<peer>``: created
from the base interpreter, with a ``.pth`` line that puts the interpreter's site-packages
(the project's venv: torch, transformers, this project) after the peer's own packages.
``bench/peers/requirements-<peer>.txt`` holds the pin; installing is pip, nothing else.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
VENVS: Final = ROOT / ".venv-peers"
HERE: Final = Path(__file__).resolve().parent
PEERS: Final = ("litserve", "rayserve", "bentoml", "pytriton")
#: The module each venv must import once installed.
IMPORTS: Final = {
    "litserve": "litserve",
    "rayserve": "ray.serve",
    "bentoml": "bentoml",
    "pytriton": "pytriton",
}


@dataclass(frozen=True)
class Venv:
    peer: str

    @property
    def path(self) -> Path:
        return VENVS / self.peer

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def requirements(self) -> Path:
        return HERE / f"requirements-{self.peer}.txt"

    def pin(self) -> str:
        lines = self.requirements.read_text().splitlines()
        return next(line.strip() for line in lines if line.strip() and not line.startswith("#"))

    @property
    def marker(self) -> Path:
        """Written once pip has installed the pin: what it installed."""
        return self.path / "bench-peers-installed.txt"

    def problem(self) -> str | None:
        """Why this peer cannot run (not installed, or not at its pin), or None. Cheap, no
        import: a peer that is installed but cannot start is reported by its start."""
        if not self.python.exists() or not self.marker.exists():
            return (
                f"{self.peer}: not installed in {self.path} (run `python -m bench.peers --install`)"
            )
        installed = self.marker.read_text().strip()
        if installed != self.pin():
            return f"{self.peer}: {installed} installed, {self.pin()} pinned (rerun --install)"
        return None

    def import_problem(self) -> str | None:
        """Why the peer's module does not import in its venv, or None (after installing)."""
        module = IMPORTS[self.peer]
        done = subprocess.run(
            [str(self.python), "-c", f"import {module}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            return f"{self.peer}: `import {module}` failed: {done.stderr.strip()[-500:]}"
        return None


def shared_site_packages() -> Path:
    """Where this interpreter's packages are (resolved: the venv may be a symlink)."""
    return Path(sysconfig.get_paths()["purelib"]).resolve()


def install(peer: str) -> Venv:
    """Create the peer's venv if needed and pip-install its pin (idempotent)."""
    venv = Venv(peer)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    if not venv.python.exists():
        subprocess.run([str(base), "-m", "venv", str(venv.path)], check=True)
    purelib = subprocess.run(
        [str(venv.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "shared-venv.pth").write_text(f"{shared_site_packages()}\n")
    subprocess.run(
        [str(venv.python), "-m", "pip", "install", "-q", "-r", str(venv.requirements)],
        check=True,
    )
    venv.marker.write_text(f"{venv.pin()}\n")
    return venv


def install_all(peers: tuple[str, ...] = PEERS) -> dict[str, str]:
    """Install every peer; a peer that fails to install is reported, not raised."""
    out = {}
    for peer in peers:
        try:
            install(peer)
        except subprocess.CalledProcessError as exc:
            out[peer] = f"install failed: {exc}"
            continue
        venv = Venv(peer)
        out[peer] = venv.problem() or venv.import_problem() or f"ok ({venv.pin()})"
    return out
