"""``fashion-florence data ...``, ``train`` and ``eval``: the model pipeline's commands.

The argument names are a stable interface (other tools script against them); see
``docs/model_pipeline.md``. Each handler prints one JSON summary on stdout and returns
0, or prints ``FAILED: <reason>`` and returns 1 for bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from model_store.data.dataset import DataError


def _print(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, indent=2))


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    data = subcommands.add_parser("data", help="build, synthesise and check datasets")
    actions = data.add_subparsers(dest="action", required=True)

    build = actions.add_parser("build", help="iMaterialist -> train/val/test JSONL + report")
    build.add_argument("--format", required=True, choices=["imat-json", "table", "folders"])
    build.add_argument("--annotations", type=Path, help="imat-json: the annotations JSON")
    build.add_argument("--labels", type=Path, help="imat-json: label_map_228.csv")
    build.add_argument("--table", type=Path, help="table: a .csv or .parquet file")
    build.add_argument("--mapping", type=Path, help="folders: JSON {class folder: category}")
    build.add_argument(
        "--no-weak-colors",
        action="store_true",
        help="folders: leave colour unknown instead of the weak pixel labeller's answer",
    )
    build.add_argument("--images", type=Path, required=True, help="folder of the images")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--val-ratio", type=float, default=0.1)
    build.add_argument("--test-ratio", type=float, default=0.1)
    build.add_argument("--split-seed", type=int, default=0)
    build.set_defaults(handler=_data_build)

    synth = actions.add_parser("synth", help="render a synthetic source (images + table.csv)")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--n", type=int, default=1000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=128)
    synth.set_defaults(handler=_data_synth)

    check = actions.add_parser("check", help="leak check: ids or images shared across splits")
    check.add_argument("directory", type=Path, help="a folder with train/val/test.jsonl")
    check.set_defaults(handler=_data_check)

    train = subcommands.add_parser("train", help="LoRA fine-tuning on a built dataset")
    train.add_argument("--data", type=Path, required=True, help="output of `data build`")
    train.add_argument("--base", required=True, help="base model directory or hub id")
    train.add_argument("--out", type=Path, required=True, help="adapter directory")
    train.add_argument("--preset", choices=["decoder", "all-linear"], default="decoder")
    train.add_argument("--rank", type=int, default=16)
    train.add_argument("--alpha", type=int, default=32)
    train.add_argument("--dropout", type=float, default=0.05)
    train.add_argument("--lr", type=float, default=2e-4)
    train.add_argument("--epochs", type=float, default=3.0)
    train.add_argument("--batch-size", type=int, default=4, help="per step, before accumulation")
    train.add_argument("--grad-accum", type=int, default=4, help="effective batch = size x this")
    train.add_argument("--warmup-ratio", type=float, default=0.05)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--eval-every", type=int, default=None, help="steps (default: per epoch)")
    train.add_argument("--val-generate", type=int, default=256, help="val items decoded at end")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--augment", action="store_true", help="flip, zoom and shift training images at random"
    )
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA too")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(handler=_train)

    evaluate = subcommands.add_parser("eval", help="score a model or predictions on a test set")
    evaluate.add_argument("--test", type=Path, required=True, help="test.jsonl")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", type=Path, help='JSONL of {"id", "output"}')
    source.add_argument("--model", help="model directory or hub id to run")
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.add_argument("--name", default=None, help="system name in the report")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--max-new-tokens", type=int, default=96)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--limit", type=int, default=None, help="first N test items only")
    evaluate.set_defaults(handler=_eval)


def _data_build(args: argparse.Namespace) -> int:
    from model_store.data.build import SplitConfig, build_dataset
    from model_store.data.rules import load_rules
    from model_store.data.sources import read_imat_json, read_table

    rules = load_rules()
    split = SplitConfig(args.val_ratio, args.test_ratio, args.split_seed)
    try:
        if args.format == "folders":
            report = _build_folders(args, split)
        elif args.format == "imat-json":
            if args.annotations is None or args.labels is None:
                raise DataError("--format imat-json needs --annotations and --labels")
            items = read_imat_json(args.annotations, args.labels, args.images, rules)
            source = {"format": "imat-json", "annotations": str(args.annotations)}
        else:
            if args.table is None:
                raise DataError("--format table needs --table")
            items = read_table(args.table, args.images, rules)
            source = {"format": "table", "table": str(args.table)}
        if args.format != "folders":
            report = build_dataset(items, args.out, source=source, split=split, rules=rules)
    except DataError as exc:
        print(f"FAILED: {exc}")
        return 1
    keys = ("data_version", "rules_version", "n_input", "kept", "dropped")
    _print({"out": str(args.out), **{key: report[key] for key in keys}})
    return 0


def _build_folders(args: argparse.Namespace, split: Any) -> dict[str, Any]:
    from model_store.data.folders import build_folder_dataset, read_mapping

    if args.mapping is None:
        raise DataError("--format folders needs --mapping (JSON: class folder -> category)")
    return build_folder_dataset(
        args.images,
        read_mapping(args.mapping),
        args.out,
        weak_colors=not args.no_weak_colors,
        split=split,
        source={"mapping": str(args.mapping)},
    )


def _data_synth(args: argparse.Namespace) -> int:
    from model_store.data.synthesize import write_synthetic_source

    table = write_synthetic_source(args.out, n=args.n, seed=args.seed, size=args.size)
    _print({"table": str(table), "images": str(args.out / "images"), "rows": args.n})
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from model_store.data.dataset import SPLITS, read_split
    from model_store.data.split import find_leaks

    try:
        leaks = find_leaks({name: read_split(args.directory, name) for name in SPLITS})
    except DataError as exc:
        print(f"FAILED: {exc}")
        return 1
    if leaks:
        print(f"FAILED: {leaks.summary()}")
        return 1
    print("OK: no item id or image is shared between train, val and test")
    return 0


def _train(args: argparse.Namespace) -> int:
    from model_store.loading import ModelLoadError
    from model_store.training.config import TrainConfig
    from model_store.training.loop import TrainingError, train

    config = TrainConfig(
        preset=args.preset,
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        max_steps=args.max_steps,
        eval_every=args.eval_every,
        val_generate=args.val_generate,
        augment=args.augment,
        seed=args.seed,
        device=args.device,
        bf16=not args.no_bf16,
    )
    try:
        manifest = train(
            args.data,
            args.base,
            args.out,
            config,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except (DataError, TrainingError, ModelLoadError) as exc:
        print(f"FAILED: {exc}")
        return 1
    assert manifest is not None  # only stop_after_steps (not a CLI option) stops early
    _print(
        {"out": str(args.out), "metrics": manifest.metrics, "seconds": manifest.training_seconds}
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from model_store.evaluation import evaluate_model, evaluate_predictions
    from model_store.loading import ModelLoadError

    try:
        if args.predictions is not None:
            report = evaluate_predictions(args.test, args.predictions, args.out, system=args.name)
        else:
            report = evaluate_model(
                args.test,
                args.model,
                args.out,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                device=args.device,
                limit=args.limit,
            )
    except (DataError, ModelLoadError) as exc:
        print(f"FAILED: {exc}")
        return 1
    from model_store.training.loop import HEADLINE_METRICS

    _print({"out": str(args.out), **{key: report[key] for key in HEADLINE_METRICS}})
    return 0
