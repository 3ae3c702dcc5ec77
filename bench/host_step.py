"""Host time per jump-forward decoder step, the model's own computation excluded.

    python -m bench.host_step [--model-dir DIR] [--batch-sizes 1,16,32,64] [--repeats 5]

The jump-forward loop runs over a stepper that times its model calls (the encoder, each
decoder block, the LM head). For one ``decode()`` call, host time is its wall time minus
those calls, divided by the decoder steps it ran: drafting, grammar fills and accepts,
block assembly, masking, choosing and committing, i.e. everything a GPU would wait for.
Masking and the argmax stay in the host figure: on CPU they run on the host's cores.

Robust to a shared host: the headline figure is process CPU time (the loop's CPU use,
which waiting for a core does not inflate; it includes xgrammar's worker threads), and
every figure is the median over repeats of one full decode each. Wall time is shown
beside it.
CPU only: on CUDA the model calls return before the device finishes, so the subtraction
would not mean "host time".
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, cast

import torch
from PIL import Image

from bench.load import payloads as synthetic_payloads
from bench.models import prepare_model
from service.gc_freeze import freeze_startup_objects
from service.inference.decoding.decoders import SpecialIds
from service.inference.decoding.florence import Florence2Stepper
from service.inference.decoding.grammar import SchemaGrammar, compile_schema_grammar
from service.inference.decoding.jump_forward import JumpForwardDecoder

DEFAULT_BATCH_SIZES: Final = (1, 16, 32, 64)
MAX_NEW_TOKENS: Final = 256
#: The stepper's calls that are the model's computation (timed and subtracted).
MODEL_CALLS: Final = frozenset({"encode", "decode", "logits"})


class TimedStepper:
    """Forwards to a :class:`Florence2Stepper`, adding up the wall time of model calls."""

    def __init__(self, inner: Florence2Stepper) -> None:
        self._inner = inner
        self.model_s = 0.0
        self.model_cpu_s = 0.0  # process CPU time: what preemption by other work cannot inflate

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if name not in MODEL_CALLS:
            return target

        def timed(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return target(*args, **kwargs)
            finally:
                self.model_s += time.perf_counter() - started
                self.model_cpu_s += time.process_time() - cpu

        return timed


class HostTimer:
    """One decoder over the loaded model and a pool of preprocessed images."""

    def __init__(self, model_dir: Path, images: int = 64) -> None:
        from model_store.loading import load_model

        loaded = load_model(str(model_dir))
        model: Any = loaded.model
        processor: Any = loaded.processor
        tokenizer = processor.tokenizer
        self.grammar: SchemaGrammar = compile_schema_grammar(
            tokenizer, int(model.config.text_config.vocab_size)
        )
        self.stepper = TimedStepper(Florence2Stepper(model))
        ids = SpecialIds.of(model, tokenizer)
        self.decoder = JumpForwardDecoder(
            cast(Florence2Stepper, self.stepper),  # duck-typed: forwards every call
            self.grammar, tokenizer,
            start_id=ids.start, bos_id=ids.bos, pad_id=ids.pad, max_new_tokens=MAX_NEW_TOKENS,
        )  # fmt: skip
        pictures = [Image.open(io.BytesIO(p)).convert("RGB") for p in synthetic_payloads(images)]
        encoded = processor(
            text=[loaded.manifest.prompt] * len(pictures), images=pictures, return_tensors="pt"
        )
        self._ids: torch.Tensor = encoded["input_ids"]
        self._pixels: torch.Tensor = encoded["pixel_values"].to(model.dtype)

    def once(self, batch: int, start: int = 0) -> tuple[float, float, int]:
        """One decode of ``batch`` images: (host wall s, host CPU s, decoder steps)."""
        rows = [(start + k) % self._ids.shape[0] for k in range(batch)]
        ids, pixels = self._ids[rows], self._pixels[rows]
        self.stepper.model_s = self.stepper.model_cpu_s = 0.0
        started, cpu = time.perf_counter(), time.process_time()
        self.decoder.decode(ids, torch.ones_like(ids), pixels)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        host_wall = wall - self.stepper.model_s
        return host_wall, cpu - self.stepper.model_cpu_s, self.decoder.last_steps

    def host_ms_per_step(self, batch: int, repeats: int) -> dict[str, float]:
        self.once(batch)  # warm-up: first shapes pay for allocation
        wall: list[float] = []
        cpu: list[float] = []
        positions: list[float] = []
        steps = 0
        for repeat in range(repeats):
            host_wall, host_cpu, steps = self.once(batch, start=repeat * batch)
            wall.append(host_wall * 1000.0 / steps)
            cpu.append(host_cpu * 1000.0 / steps)
            positions.append(self.decoder.last_positions / batch)
        return {
            "batch_size": batch,
            "host_ms_per_step": statistics.median(cpu),
            "wall_ms_per_step": statistics.median(wall),
            "min_wall_ms": min(wall),
            "max_wall_ms": max(wall),
            "steps": steps,
            # Decoder positions computed per image, padding included (plain greedy: one
            # per token); the same images give the same figure, so the median is exact.
            "positions_per_image": statistics.median(positions),
            "repeats": repeats,
        }


def measure(model_dir: Path, batch_sizes: Sequence[int], repeats: int) -> list[dict[str, float]]:
    timer = HostTimer(model_dir, images=max(64, max(batch_sizes)))
    # As the service runs after its load: what is alive is frozen out of the collector's
    # reach, so a full collection during a step does not walk the whole heap (in
    # bench.offline, three engines' worth of it).
    freeze_startup_objects()
    try:
        return [timer.host_ms_per_step(b, repeats) for b in batch_sizes]
    finally:
        gc.unfreeze()


def host_rows(model_dir: Path, batch_sizes: Sequence[int], repeats: int) -> list[dict[str, float]]:
    """:func:`measure`, or nothing where it would not mean host time (CUDA) or is off."""
    if repeats <= 0 or torch.cuda.is_available():
        return []
    return measure(model_dir, batch_sizes, repeats)


def markdown(rows: Sequence[dict[str, float]]) -> str:
    lines = [
        "| batch | host CPU ms/step (median) | host wall ms/step (median, min-max) | decoder "
        "steps | positions per image | repeats |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch_size']:.0f} | {r['host_ms_per_step']:.3f} | "
            f"{r['wall_ms_per_step']:.3f} ({r['min_wall_ms']:.3f}-{r['max_wall_ms']:.3f}) | "
            f"{r['steps']:.0f} | {r['positions_per_image']:.1f} | {r['repeats']:.0f} |"
        )
    return "\n".join(lines)


Rows = list[dict[str, float]]


def run_per_batch_size_cli(
    doc: str | None,
    measure_rows: Callable[[Path, Sequence[int], int], Rows],
    to_markdown: Callable[[Sequence[dict[str, float]]], str],
    default_batch_sizes: Sequence[int],
) -> int:
    """The command line both per-batch-size CPU benchmarks share: a model (the trained demo
    built in a temporary folder unless ``--model-dir``), batch sizes, repeats, threads."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="default: trained demo")
    parser.add_argument("--batch-sizes", default=",".join(map(str, default_batch_sizes)))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="ff-bench-") as work:
        model_dir = args.model_dir or prepare_model(Path(work))
        print(to_markdown(measure_rows(model_dir, sizes, args.repeats)))
    return 0


def main() -> int:
    return run_per_batch_size_cli(__doc__, measure, markdown, DEFAULT_BATCH_SIZES)


if __name__ == "__main__":
    raise SystemExit(main())
