"""The demo model a start serves when no model path is given, built once and cached.

Which demo (trained or random weights) is the caller's choice; this module checks the cache
against it and builds what is missing. The trained build is the model pipeline
(:mod:`model_store.demo`), imported only when a demo model is asked for: the engine imports
this module, and a service given its own model never loads the data and training modules.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from model_store.build import build_model
from model_store.manifest import ManifestError, verify_directory


def ensure_demo_model(directory: Path, *, trained: bool = True) -> Path:
    """Return a verified demo model at ``directory``, building it on first use.

    ``trained`` (what ``make run`` serves): the tiny Florence-2 trained on synthetic
    garments by the model pipeline (``model_store.demo``): a few CPU minutes once, then
    cached. Otherwise the random-weight build (about a second; plumbing only). A cache
    that is corrupt, or was built by another recipe, is rebuilt.
    """
    # Here, not at the top: the pipeline (data, training, evaluation) is only for the demo.
    from model_store.demo import DemoRecipe, build_trained_demo

    expected = DemoRecipe().tag if trained else None

    def usable() -> bool:
        try:
            return verify_directory(directory).adapter == expected
        except ManifestError:
            return False

    if usable():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (several workers may start together); the others wait and
    # then find the finished model instead of training it again.
    with (directory.parent / f".{directory.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not usable():
            if trained:
                build_trained_demo(directory)
            else:
                build_model("demo", directory)
    return directory
