"""Where a batch's time goes per decoding mode: the encoders, shared by every mode, and
the decoding that jump-forward shortens; with and without its block-width cap.

    python -m bench.mode_split [--model-dir DIR] [--batch-sizes 1,8,16,32,64]
        [--repeats 5] [--threads 1]

For each batch size, ``engine.run_batch`` over the same images in three variants,
interleaved repeat by repeat (so a change in the host's load hits all three alike):
plain greedy, jump-forward, and jump-forward with every step's block as wide as its
widest row (the cap off, as before it existed). The figure is process CPU time per batch,
median over repeats: on a host shared with other work, waiting for a core does not
inflate it. Jump-forward's encoder time (vision tower and text encoder, the same
computation ``generate`` runs once) is timed on its own, so the last column is the best
ratio any decode loop could reach: plain's batch time over the encoders' alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from bench.host_step import run_per_batch_size_cli
from bench.load import payloads
from bench.offline import engines_for, load, prepare_images
from service.inference.decoding import jump_forward
from service.inference.decoding.decoders import DecodingMode
from service.inference.decoding.florence import Florence2Stepper

DEFAULT_BATCH_SIZES: Final = (1, 8, 16, 32, 64)
VARIANTS: Final = ("plain", "jump-forward", "jump-forward, cap off")


@contextmanager
def _patched(owner: Any, name: str, replacement: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _widest(lengths: list[int], least: int) -> int:
    return max(lengths)


def measure(
    model_dir: Path, batch_sizes: Sequence[int], repeats: int, images: int = 64
) -> list[dict[str, float]]:
    """One row per batch size; batches are drawn round-robin from ``images`` garments."""
    loaded = load(model_dir)
    engines = engines_for(loaded, [DecodingMode.PLAIN, DecodingMode.JUMP_FORWARD])
    prepared = prepare_images(engines[DecodingMode.PLAIN], payloads(images))
    encoding = [0.0]
    encode = Florence2Stepper.encode

    def timed_encode(self: Florence2Stepper, *args: Any) -> Any:
        started = time.process_time()
        try:
            return encode(self, *args)
        finally:
            encoding[0] += time.process_time() - started

    def run(variant: str, batch: list[Any]) -> float:
        engine = engines[DecodingMode.PLAIN if variant == "plain" else DecodingMode.JUMP_FORWARD]
        width: Callable[[list[int], int], int] = (
            _widest if variant.endswith("cap off") else jump_forward.block_width
        )
        with _patched(jump_forward, "block_width", width):
            started = time.process_time()
            engine.run_batch(batch)
            return time.process_time() - started

    rows: list[dict[str, float]] = []
    with _patched(Florence2Stepper, "encode", timed_encode):
        for size in batch_sizes:
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            encoders: list[float] = []
            for variant in VARIANTS:
                run(variant, prepared[:size])  # warm-up: new shapes pay for allocation
            for repeat in range(repeats):
                batch = [prepared[(repeat * size + k) % len(prepared)] for k in range(size)]
                for variant in VARIANTS:
                    encoding[0] = 0.0
                    times[variant].append(run(variant, batch))
                    if variant == "jump-forward":
                        encoders.append(encoding[0])
            ms = {v: statistics.median(t) * 1000.0 for v, t in times.items()}
            rows.append({"batch_size": size, **ms, "encoders": statistics.median(encoders) * 1000})
    return rows


def markdown(rows: Sequence[dict[str, float]]) -> str:
    lines = [
        "| batch | plain CPU ms/batch | jump-forward | cap off | encoders (in jump-forward) "
        "| jump-forward/plain img/s | cap off/plain | ceiling: plain/encoders |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        plain, jump, off = r["plain"], r["jump-forward"], r["jump-forward, cap off"]
        lines.append(
            f"| {r['batch_size']:.0f} | {plain:.1f} | {jump:.1f} | {off:.1f} | "
            f"{r['encoders']:.1f} | {plain / jump:.3f} | {plain / off:.3f} | "
            f"{plain / r['encoders']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    return run_per_batch_size_cli(__doc__, measure, markdown, DEFAULT_BATCH_SIZES)


if __name__ == "__main__":
    raise SystemExit(main())
