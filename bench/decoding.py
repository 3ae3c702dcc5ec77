"""Decoding benchmark: decoder passes per output token, mask overhead, images/s by mode.

    python -m bench.decoding [--images N] [--gpt2-ranks FILE] [--model-dir DIR]

1. Decoder forward passes per output token with jump-forward decoding. The demo model is
   too small to learn a realistic output distribution, so a *scripted* model stands in for
   a perfectly trained one: its greedy pick is always the next token of the canonical
   tokenization of a random schema-valid target. The loop itself is the real one. With
   ``--gpt2-ranks`` (GPT-2's BPE ranks, e.g. ``whisper/assets/gpt2.tiktoken`` from the
   ``openai-whisper`` sdist: ``pip download openai-whisper --no-deps --no-binary :all:``)
   the same runs with a BART-size vocabulary, Florence-2's real tokenization.
2. Grammar mask cost per decoding step (batched fill, copy, apply, argmax) at batch 1, 16
   and 64, beside one demo-model decoder step at the same batch.
3. End-to-end engine images/s of the fine-tuned demo model: plain, constrained and
   jump-forward decoding in one run, at batch 1 and 16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from bench.models import prepare_model
from fashion_florence_client.schema import (
    CATEGORIES,
    COLORS,
    MATERIALS,
    MAX_TAGS,
    OCCASION_TAGS,
    STYLE_TAGS,
    FashionAttributes,
)
from model_store.synthetic import COLOR_CLASSES, block_garment
from service.inference.decoding.constrained import RowMatchers, masked_scores
from service.inference.decoding.florence import EncoderState
from service.inference.decoding.grammar import SchemaGrammar, compile_schema_grammar
from service.inference.decoding.jump_forward import JumpForwardDecoder

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BATCHES = (1, 16, 64)


def random_targets(count: int, seed: int = 0) -> list[FashionAttributes]:
    rng = random.Random(seed)

    def tags(vocabulary: tuple[str, ...]) -> list[Any]:
        picked = rng.sample(range(len(vocabulary)), rng.randint(0, MAX_TAGS))
        return [vocabulary[i] for i in sorted(picked)]

    return [
        FashionAttributes(
            category=rng.choice(CATEGORIES),
            primary_color=rng.choice(COLORS),
            material=rng.choice([None, *MATERIALS]),
            style_tags=tags(STYLE_TAGS),
            occasion_tags=tags(OCCASION_TAGS),
        )
        for _ in range(count)
    ]


class ScriptedModel:
    """Stands in for Florence2Stepper: a model whose greedy choice after any prefix of a
    row's canonical target is that target's next token (a perfectly trained model)."""

    max_positions = 4096

    def __init__(self, targets: list[list[int]], vocab_size: int, eos: int) -> None:
        self._all = targets
        self._vocab_size = vocab_size
        self._eos = eos
        self._targets: list[list[int]] = []
        self._fed: list[list[int]] = []  # per row, the entries of its cache slots

    def encode(self, input_ids: torch.Tensor, *_: Any) -> EncoderState:
        self._targets = list(self._all)
        self._fed = [[] for _ in self._targets]
        batch = input_ids.shape[0]
        return EncoderState(torch.zeros(batch, 1, 1), torch.ones(batch, 1, dtype=torch.long))

    def new_cache(self, batch: int, capacity: int) -> None:
        return None

    def keep_rows(self, cache: Any, encoder: EncoderState, index: torch.Tensor) -> EncoderState:
        rows = index.tolist()
        self._targets = [self._targets[r] for r in rows]
        self._fed = [self._fed[r] for r in rows]
        return encoder.select(index)

    def decode(
        self, cache: Any, encoder: Any, tokens: torch.Tensor, slots: torch.Tensor,
        offsets: torch.Tensor, length: int,
    ) -> torch.Tensor:  # fmt: skip
        picks = torch.full((*tokens.shape, 1), float(self._eos))
        rows = zip(tokens.tolist(), slots.tolist(), offsets.tolist(), self._targets, strict=True)
        for row, (block, places, offset, target) in enumerate(rows):
            history = self._fed[row][:offset]  # entries past the offset were rejected
            for position, (token, slot) in enumerate(zip(block, places, strict=True)):
                if slot != offset + position:  # padding, written to the sink
                    break
                history.append(token)
                if history == target[: len(history)]:
                    picks[row, position, 0] = float(target[min(len(history), len(target) - 1)])
            self._fed[row] = history
        return picks

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(hidden.shape[0], self._vocab_size)
        scores.scatter_(1, hidden.long(), 10.0)
        return scores


def passes_per_token(
    tokenizer: Any, grammar: SchemaGrammar, targets: list[FashionAttributes]
) -> dict[str, float]:
    """Jump-forward decoder passes per output token for a perfectly trained model."""
    encode = tokenizer.backend_tokenizer.encode
    scripts = [
        [2, 0, *encode(t.to_target_text(), add_special_tokens=False).ids, 2] for t in targets
    ]
    model = ScriptedModel(scripts, grammar.vocab_size, eos=2)
    decoder = JumpForwardDecoder(
        cast(Any, model), grammar, tokenizer,
        start_id=2, bos_id=0, pad_id=1, max_new_tokens=grammar.max_output_tokens + 2,
    )  # fmt: skip
    ids = torch.zeros((len(targets), 1), dtype=torch.long)
    rows = decoder.decode(ids, ids, ids)
    for row, script in zip(rows, scripts, strict=True):
        assert row.tokens == script[1:], "the scripted model was not followed"
    tokens = sum(len(r.tokens) for r in rows)  # <s> ... </s>, as the engine counts them
    passes = sum(r.forward_passes for r in rows)
    return {
        "vocab_size": grammar.vocab_size,
        "tokens_per_image": tokens / len(rows),
        "passes_per_image": passes / len(rows),
        "passes_per_token": passes / tokens,
    }


def mask_overhead(
    grammar: SchemaGrammar,
    tokenizer: Any,
    batch: int,
    target_text: Callable[[Any], str] = lambda labels: str(labels.to_target_text()),
) -> float:
    """Median ms per decoding step for the grammar's part: batched fill, copy, apply,
    argmax and normalizer (the median resists preemption by other processes), over
    ``target_text`` of random label sets (default: this project's target text)."""
    encode = tokenizer.backend_tokenizer.encode
    scripts = [
        [*encode(target_text(t), add_special_tokens=False).ids, 2]
        for t in random_targets(batch, seed=batch)
    ]
    rows = RowMatchers(grammar, batch, torch.device("cpu"))
    logits = torch.randn(batch, grammar.vocab_size)
    steps: list[float] = []
    for step in range(max(len(s) for s in scripts)):
        live = [r for r, s in enumerate(scripts) if step < len(s)]
        started = time.perf_counter()
        bitmask = rows.bitmask(batch)
        rows.fill(live, live, bitmask)
        masked_scores(logits.clone(), rows.on_device(bitmask))
        steps.append(time.perf_counter() - started)
        rows.accept(live, [scripts[r][step] for r in live])
    return statistics.median(steps) * 1000.0


def decoder_step_ms(model_dir: Path, batch: int) -> float:
    """One demo-model decoder step (one token per row, ~30 cached) for scale."""
    from model_store.loading import load_model
    from service.inference.decoding.florence import Florence2Stepper

    loaded = load_model(str(model_dir))
    stepper = Florence2Stepper(loaded.model)
    prompt = loaded.processor(
        text=[loaded.manifest.prompt], images=[block_garment((0, 0, 0), random.Random(0))],
        return_tensors="pt",
    )  # fmt: skip
    ids = prompt["input_ids"].expand(batch, -1)
    with torch.inference_mode():
        encoder = stepper.encode(
            ids, torch.ones_like(ids), prompt["pixel_values"].expand(batch, -1, -1, -1)
        )
        cache = stepper.new_cache(batch, 64)
        timings = []
        tokens = torch.full((batch, 1), 5, dtype=torch.long)
        for position in range(40):
            slots = torch.full((batch, 1), position, dtype=torch.long)
            started = time.perf_counter()
            hidden = stepper.decode(cache, encoder, tokens, slots, slots[:, 0], position + 1)
            stepper.logits(hidden[:, -1])
            timings.append(time.perf_counter() - started)
    return statistics.median(timings[10:]) * 1000.0


@dataclass
class ModeRun:
    mode: str
    batch: int
    images_per_s: float
    cpu_ms_per_image: float  # process CPU time: less sensitive than wall time to a busy host
    tokens_per_image: float
    valid: int


def throughput(model_dir: Path, images: int, repeats: int) -> list[ModeRun]:
    from model_store.loading import load_model
    from service.inference.decoding.decoders import DecodingMode
    from service.inference.engine import FlorenceEngine

    rng = random.Random(42)
    pictures = [block_garment(c, rng) for c in list(COLOR_CLASSES) * (images // 3 + 1)][:images]
    loaded = load_model(str(model_dir))
    engines = {m: FlorenceEngine(loaded, max_new_tokens=256, decoding=m) for m in DecodingMode}
    prepared = [engines[DecodingMode.PLAIN].preprocess(p) for p in pictures]
    runs = []
    for batch in (1, 16):
        for mode, engine in engines.items():
            engine.run_batch(prepared[:batch])  # warm up this shape
            rates, cpu = [], []
            for _ in range(repeats):  # the median damps other processes on a shared host
                started, cpu_started = time.perf_counter(), time.process_time()
                outcomes = []
                for start in range(0, len(prepared), batch):
                    outcomes += engine.run_batch(prepared[start : start + batch])
                rates.append(len(prepared) / (time.perf_counter() - started))
                cpu.append((time.process_time() - cpu_started) * 1000.0 / len(prepared))
            runs.append(ModeRun(
                mode.value, batch, statistics.median(rates), statistics.median(cpu),
                statistics.mean(o.generated_tokens for o in outcomes), sum(o.ok for o in outcomes),
            ))  # fmt: skip
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads; 1 keeps timings honest on a host shared with other work, where "
        "a preempted intra-op thread stalls every multi-threaded op for a time slice",
    )  # fmt: skip
    parser.add_argument("--gpt2-ranks", type=Path, default=None)
    parser.add_argument("--model-dir", type=Path, default=None, help="a fine-tuned demo model")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from model_store.loading import load_model

    work = Path(tempfile.mkdtemp(prefix="ff-bench-decoding-"))
    model_dir = args.model_dir or prepare_model(work)
    demo_tokenizer = load_model(str(model_dir)).processor.tokenizer
    tokenizers: dict[str, Any] = {"demo": demo_tokenizer}
    if args.gpt2_ranks is not None:
        from model_store.vocabulary import bart_tokenizer

        tokenizers["bart"] = bart_tokenizer(args.gpt2_ranks)
    targets = random_targets(args.targets)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}",
        "passes": {},
        "mask_ms_per_step": {},
    }
    for name, tokenizer in tokenizers.items():
        grammar = compile_schema_grammar(tokenizer, len(tokenizer))
        report["passes"][name] = passes_per_token(tokenizer, grammar, targets)
        report["passes"][name]["grammar_compile_ms"] = grammar.compile_ms
        report["mask_ms_per_step"][name] = {
            b: mask_overhead(grammar, tokenizer, b) for b in BATCHES
        }
    report["decoder_step_ms_demo"] = {b: decoder_step_ms(model_dir, b) for b in BATCHES}
    report["throughput"] = [vars(r) for r in throughput(model_dir, args.images, args.repeats)]
    report["load_average_after"] = os.getloadavg()[0]
    print(f"machine: {report['machine']} (after: {report['load_average_after']:.1f})\n")
    print("| tokenizer | vocab | tokens/image | passes/image | passes/token | compile ms |")
    print("|---|---|---|---|---|---|")
    for name, p in report["passes"].items():
        print(f"| {name} | {p['vocab_size']} | {p['tokens_per_image']:.1f} | "
              f"{p['passes_per_image']:.1f} | {p['passes_per_token']:.3f} | "
              f"{p['grammar_compile_ms']:.1f} |")  # fmt: skip
    print("\n| mask ms/step | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    for name, row in report["mask_ms_per_step"].items():
        print(f"| {name} | " + " | ".join(f"{row[b]:.3f}" for b in BATCHES) + " |")
    step = report["decoder_step_ms_demo"]
    print("| demo decoder step | " + " | ".join(f"{step[b]:.3f}" for b in BATCHES) + " |")
    print("\n| mode | batch | images/s | CPU ms/image | tokens/image | valid |")
    print("|---|---|---|---|---|---|")
    for run in report["throughput"]:
        print(f"| {run['mode']} | {run['batch']} | {run['images_per_s']:.1f} | "
              f"{run['cpu_ms_per_image']:.1f} | {run['tokens_per_image']:.1f} | "
              f"{run['valid']}/{args.images} |")  # fmt: skip
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"decoding-{platform.machine()}.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
