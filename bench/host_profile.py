"""Where the jump-forward loop's host time per step goes, part by part.

    python -m bench.host_profile --model-dir DIR [--batch 32] [--repeats 15] [--threads 1]

:mod:`bench.host_step`'s measurement (process CPU time of one ``decode()`` minus its model
calls, per decoder step), with each part of the loop timed on its own: the decoder's
step methods and the scoring function, wrapped by name. A name the loop under test does
not have is skipped, so the same command profiles an older loop (run it with that tree
first on ``PYTHONPATH``). "rest" is the host time no wrapped part accounts for: the loop
itself, the device read, the logits' row selection. Figures are medians and minima over
``--repeats`` decodes: on a shared host the minimum is the steadier of the two.

Wrapping adds two clock reads per call, and each part runs with caches cooled by the
model's forward pass in between, so parts cost more here than in a tight loop of their own.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final
from unittest.mock import patch

import torch

import service.inference.decoding.jump_forward as jump_forward
from bench.host_step import HostTimer
from bench.models import prepare_model

#: Decoder methods timed, by label (older loops named some of them differently).
METHODS: Final = {
    "_plan": "plan (memo lookups; drafts of misses)",
    "_block": "block inputs (assembled, uploaded)",
    "_explore": "explore (xgrammar fills of misses)",
    "_verification_masks": "masks or allowed ids (assembled, uploaded)",
    "_allowed_ids": "masks or allowed ids (assembled, uploaded)",
    "_commit": "commit (and matcher accepts, where done there)",
}
#: Module-level functions of the loop timed, by label.
FUNCTIONS: Final = {
    "masked_scores": "scores (mask or gather, argmax, normalizer)",
    "allowed_scores": "scores (mask or gather, argmax, normalizer)",
    "RowMatchers": "RowMatchers() per batch",
}
#: Stepper calls that are host work (the model calls are subtracted by HostTimer).
STEPPER: Final = {"keep_rows": "keep_rows (finished rows dropped)", "new_cache": "new_cache"}
REST: Final = "rest (loop, device read, logits' row selection)"


def _timed(target: Callable[..., Any], label: str, spent: dict[str, float]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return target(*args, **kwargs)
        finally:
            spent[label] += time.process_time() - started

    return timed


def profile(model_dir: Path, batch: int, repeats: int) -> dict[str, list[float]]:
    """ms per decoder step of each part, one value per repeat; ``"total"`` is host_step's.

    The loop's module functions are wrapped for the call only (restored after)."""
    timer = HostTimer(model_dir, images=max(64, batch))
    spent: dict[str, float] = defaultdict(float)
    decoder: Any = timer.decoder
    for name, label in METHODS.items():
        if callable(getattr(decoder, name, None)):
            setattr(decoder, name, _timed(getattr(decoder, name), label, spent))
    inner: Any = timer.stepper._inner
    for name, label in STEPPER.items():
        setattr(inner, name, _timed(getattr(inner, name), label, spent))
    parts: dict[str, list[float]] = defaultdict(list)
    with ExitStack() as patches:
        for name, label in FUNCTIONS.items():
            if hasattr(jump_forward, name):
                wrapped = _timed(getattr(jump_forward, name), label, spent)
                patches.enter_context(patch.object(jump_forward, name, wrapped))
        for warm in range(3):  # first shapes pay for allocation; the memo fills
            timer.once(batch, start=warm * batch)
        for repeat in range(repeats):
            spent.clear()
            _, host_cpu, steps = timer.once(batch, start=repeat * batch)
            for label, seconds in spent.items():
                parts[label].append(seconds * 1000.0 / steps)
            parts[REST].append((host_cpu - sum(spent.values())) * 1000.0 / steps)
            parts["total"].append(host_cpu * 1000.0 / steps)
    return parts


def markdown(parts: dict[str, list[float]]) -> str:
    lines = ["| part | host CPU ms/step (median) | min |", "|---|---|---|"]
    ordered = sorted(parts.items(), key=lambda kv: (kv[0] == "total", -statistics.median(kv[1])))
    for label, values in ordered:
        lines.append(f"| {label} | {statistics.median(values):.3f} | {min(values):.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="default: trained demo")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ff-bench-host-profile-") as work:
        model_dir = args.model_dir or prepare_model(Path(work))
        parts = profile(model_dir, args.batch, args.repeats)
    print(f"batch {args.batch}, {args.repeats} decodes, torch threads {args.threads}")
    print(markdown(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
