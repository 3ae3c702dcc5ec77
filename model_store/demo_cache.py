"""The demo model a start serves when no model path is given.

``trained`` (what ``make run`` serves): the trained demo **shipped with the package**
(``model_store/demo_model/``: weights, tokenizer, processor, model and training
manifests, the evaluation report), served in place after its checksums are verified. The
server never trains anything: a copy that fails its checksums is an error naming the file
and the remedy, never a rebuild. ``fashion-florence model build-trained-demo`` is how the
shipped files are made (:mod:`model_store.demo`).

``random``: the random-weight build (about a second; plumbing only), built once into the
cache directory and reused.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Final

from model_store.build import build_model
from model_store.manifest import ManifestError, sha256_file, verify_directory

SHIPPED_DEMO_DIR: Final = Path(__file__).parent / "demo_model"
#: Every shipped file's sha256 (the model manifest covers the weights only).
SHIPPED_FILES: Final = "shipped_files.json"


def write_shipped_checksums(directory: Path) -> dict[str, str]:
    """Record the sha256 of every file in ``directory`` (the shipped demo's own list)."""
    files = {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != SHIPPED_FILES
    }
    (directory / SHIPPED_FILES).write_text(json.dumps(files, indent=2) + "\n", encoding="utf-8")
    return files


def verify_shipped(directory: Path = SHIPPED_DEMO_DIR) -> Path:
    """Check the shipped demo file by file; raises ManifestError saying what is wrong."""
    remedy = (
        "reinstall fashion-florence, or rebuild it with `fashion-florence model "
        "build-trained-demo --out DIR` and serve that with FF_MODEL_PATH=DIR"
    )
    listing = directory / SHIPPED_FILES
    try:
        expected: dict[str, str] = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"the shipped demo model has no readable {listing} ({exc}); {remedy}") from exc  # fmt: skip
    bad = []
    for name, digest in sorted(expected.items()):
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(name)
    if bad:
        raise ManifestError(f"the shipped demo model in {directory} is corrupt or incomplete: {bad} do not match {SHIPPED_FILES}; {remedy}")  # fmt: skip
    try:
        verify_directory(directory)
    except ManifestError as exc:
        raise ManifestError(f"the shipped demo model fails its manifest: {exc}; {remedy}") from exc
    return directory


def ensure_demo_model(directory: Path, *, trained: bool = True) -> Path:
    """The demo model's directory: the verified shipped one, or the random build.

    ``directory`` is where the random-weight build is cached (built on first use); the
    trained demo is served from the package itself and never written anywhere.
    """
    if trained:
        return verify_shipped()

    def usable() -> bool:
        try:
            return verify_directory(directory).adapter is None
        except ManifestError:
            return False

    if usable():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (several workers may start together); the others wait and
    # then find the finished model instead of building it again.
    with (directory.parent / f".{directory.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not usable():
            build_model("demo", directory)
    return directory
