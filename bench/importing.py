"""Importing original-layout checkpoints, and profile grammars over the real vocabulary.

    python -m bench.importing [--preset florence-2-large] [--format bin] [--skip-import]

Prints (1) the time and peak memory of `model import` for a preset written in Florence-2's
original layout (random fp16 weights, the size of the published files), run in a child
process so its peak RSS is the import's alone; (2) grammar compile time per built-in
profile and the grammar's host cost per decoding step (fill, copy, apply, argmax and
normalizer) at batch 1/16/64 with Florence-2's real 51,290-token vocabulary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import torch

from bench.decoding import mask_overhead
from model_store.profiles import BUILTIN_PROFILES, OutputProfile, target_text
from model_store.vocabulary import florence_tokenizer, native_embedding_rows
from service.inference.decoding.grammar import SchemaGrammar, compile_schema_grammar

GPT2_RANKS: Final = Path(__file__).resolve().parents[2] / "shared/data/tokenizers/gpt2.tiktoken"
BATCHES: Final = (1, 16, 64)


def write_original_preset(preset_name: str, directory: Path, fmt: str) -> int:
    """A preset in the original layout, with the original module tree's names (the test
    re-creation) and zero fp16 tensors (timing only); returns the bytes written."""
    from model_store.build import PRESETS
    from model_store.vocabulary import FLORENCE_ORIGINAL_VOCAB_SIZE, bart_tokenizer
    from tests.model_store.original_layout import (
        OriginalFlorence2,
        original_config,
        write_original,
    )

    preset = PRESETS[preset_name]
    config = original_config(preset, FLORENCE_ORIGINAL_VOCAB_SIZE)
    with torch.device("meta"):  # no random init of 0.77B parameters: zeros time the same
        tree = OriginalFlorence2(config)
    tree = tree.to_empty(device="cpu").half()
    with torch.no_grad():
        for tensor in (*tree.parameters(), *tree.buffers()):
            tensor.zero_()
    language: Any = tree.language_model
    shared = language.model.shared.weight  # re-tie: casting gave each use its own copy
    language.model.encoder.embed_tokens.weight = shared
    language.model.decoder.embed_tokens.weight = shared
    language.lm_head.weight = shared
    write_original(directory, tree, config, bart_tokenizer(GPT2_RANKS), fmt=fmt)
    size = json.loads((directory / "preprocessor_config.json").read_text())
    size["size"] = {"height": preset.image_size, "width": preset.image_size}
    size["image_seq_length"] = preset.image_seq_length
    (directory / "preprocessor_config.json").write_text(json.dumps(size))
    return sum(p.stat().st_size for p in directory.iterdir())


def _import_child(source: str, out: str) -> None:
    """Runs in the child: one import, then its own peak RSS and wall time as JSON."""
    from model_store.importing.convert import import_checkpoint

    started = time.perf_counter()
    import_checkpoint(Path(source), Path(out))
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024}))


def measure_import(preset: str, fmt: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ff-bench-import-") as work:
        source = Path(work) / "original"
        source_bytes = write_original_preset(preset, source, fmt)
        child = subprocess.run(
            [sys.executable, "-m", "bench.importing", "--child", str(source), f"{work}/out"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
        out_bytes = sum(p.stat().st_size for p in (Path(work) / "out").iterdir())
    return {**result, "source_mib": source_bytes / 2**20, "out_mib": out_bytes / 2**20}


def mask_ms(grammar: SchemaGrammar, tokenizer: Any, profile: OutputProfile, batch: int) -> float:
    """Median host ms per step of the grammar's work, over the profile's target texts."""
    return mask_overhead(grammar, tokenizer, batch, lambda labels: target_text(labels, profile))


def measure_grammars() -> dict[str, dict[str, float]]:
    tokenizer = florence_tokenizer(GPT2_RANKS)
    rows = native_embedding_rows(len(tokenizer))
    report: dict[str, dict[str, float]] = {}
    for name, profile in BUILTIN_PROFILES.items():
        grammar = compile_schema_grammar(tokenizer, rows, profile=profile)
        report[name] = {"compile_ms": grammar.compile_ms}
        for batch in BATCHES:
            report[name][f"mask_ms_b{batch}"] = mask_ms(grammar, tokenizer, profile, batch)
    return report


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _import_child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="florence-2-large")
    parser.add_argument("--format", default="bin", choices=["bin", "safetensors"])
    parser.add_argument("--skip-import", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if not args.skip_import:
        result = measure_import(args.preset, args.format)
        print(f"\nimport {args.preset} ({args.format}, fp16, original layout), CPU:")
        print(f"  {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
              f"source {result['source_mib']:.0f} MiB -> out {result['out_mib']:.0f} MiB")  # fmt: skip
    report = measure_grammars()
    print("\n| profile | compile ms | " + " | ".join(f"mask ms/step b{b}" for b in BATCHES) + " |")
    print("|---|---|" + "---|" * len(BATCHES))
    for name, row in report.items():
        cells = " | ".join(f"{row[f'mask_ms_b{b}']:.3f}" for b in BATCHES)
        print(f"| {name} | {row['compile_ms']:.0f} | {cells} |")


if __name__ == "__main__":
    main()
