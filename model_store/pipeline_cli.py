"""``fashion-florence data ...``, ``train`` and ``eval``: the model pipeline's commands.

The argument names are a stable interface (other tools script against them); see
``docs/model_pipeline.md``. Each handler prints one JSON summary on stdout and returns
0, or prints ``FAILED: <reason>`` and returns 1 for bad input.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from model_store.data.dataset import DataError, Record
from model_store.predictors import ServedDecoding
from model_store.training.config import DeviceName, Preset

if TYPE_CHECKING:
    from model_store.training.loop import Validator


def _print(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, indent=2))


def register(
    subcommands: argparse._SubParsersAction[argparse.ArgumentParser], decoding: ServedDecoding
) -> None:
    """Add ``data``, ``train`` and ``eval``. ``decoding`` builds predictors that decode as
    the service does (the service's CLI passes it: model_store never imports the service)."""
    data = subcommands.add_parser("data", help="build, synthesise and check datasets")
    actions = data.add_subparsers(dest="action", required=True)
    _add_data_build(actions)

    synth = actions.add_parser("synth", help="render a synthetic source (images + table.csv)")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--n", type=int, default=1000, help="rows (garments) to render")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.add_argument("--size", type=int, default=128, help="image side in pixels")
    synth.set_defaults(handler=_data_synth)

    check = actions.add_parser("check", help="leak check: ids or images shared across splits")
    check.add_argument("directory", type=Path, help="a folder with train/val/test.jsonl")
    check.set_defaults(handler=_data_check)

    _add_train(subcommands, decoding)
    _add_eval(subcommands, decoding)


def _add_data_build(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = actions.add_parser("build", help="a labelled source -> train/val/test JSONL + report")
    build.add_argument(
        "--format", required=True, choices=["imat-json", "table", "folders"], help="source shape"
    )
    needed = "no default: needed with --format"
    build.add_argument(
        "--annotations", type=Path, help=f"the annotations JSON ({needed} imat-json)"
    )
    build.add_argument("--labels", type=Path, help=f"label_map_228.csv ({needed} imat-json)")
    build.add_argument("--table", type=Path, help=f"a .csv or .parquet file ({needed} table)")
    build.add_argument(
        "--mapping", type=Path, help=f"JSON {{class folder: category}} ({needed} folders)"
    )
    build.add_argument(
        "--no-weak-colors",
        action="store_true",
        help="folders: leave colour unknown instead of the weak pixel labeller's answer",
    )
    build.add_argument(
        "--limit-per-split",
        type=int,
        default=None,
        help="folders: keep this many images of each source split, evenly spaced over "
        "the classes (quick recipes; default: all)",
    )
    build.add_argument("--images", type=Path, required=True, help="folder of the images")
    build.add_argument(
        "--out", type=Path, required=True, help="output folder (image paths in it are "
        "written relative to it: move it together with the images)",
    )  # fmt: skip
    build.add_argument("--val-ratio", type=float, default=0.1, help="hash split: val share")
    build.add_argument("--test-ratio", type=float, default=0.1, help="hash split: test share")
    build.add_argument("--split-seed", type=int, default=0, help="hash split: seed")
    build.set_defaults(handler=_data_build)


def _add_train(
    subcommands: argparse._SubParsersAction[argparse.ArgumentParser], decoding: ServedDecoding
) -> None:
    train = subcommands.add_parser("train", help="LoRA (or full) fine-tuning on a built dataset")
    train.add_argument("--data", type=Path, required=True, help="output of `data build`")
    train.add_argument(
        "--base",
        required=True,
        help="base model: a native Florence-2 directory (e.g. model_store/demo_model) or "
        "hub id; an original-layout checkpoint needs `model import` first",
    )
    train.add_argument("--out", type=Path, required=True, help="adapter (or model) directory")
    train.add_argument(
        "--preset",
        choices=get_args(Preset),
        default="decoder",
        help="decoder: LoRA on the language decoder (the paper's text); all-linear: LoRA on "
        "every linear layer (the paper's code); full: every weight, no adapter (OUT is a "
        "servable model)",
    )
    train.add_argument("--rank", type=int, default=16, help="LoRA rank r")
    train.add_argument("--alpha", type=int, default=32, help="LoRA alpha")
    train.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    train.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (AdamW)")
    train.add_argument("--epochs", type=float, default=3.0, help="passes over train")
    train.add_argument("--batch-size", type=int, default=4, help="per step, before accumulation")
    train.add_argument("--grad-accum", type=int, default=4, help="effective batch = size x this")
    train.add_argument(
        "--warmup-ratio", type=float, default=0.05, help="share of steps of linear warm-up"
    )
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    train.add_argument(
        "--max-steps", type=int, default=None, help="optimizer steps (default: from --epochs)"
    )
    train.add_argument(
        "--eval-every", type=int, default=None, help="validation loss every N steps "
        "(default: once per epoch)",
    )  # fmt: skip
    train.add_argument(
        "--val-generate",
        type=int,
        default=256,
        help="val items decoded at the end with the best weights, as the service answers "
        "them (and unconstrained beside); 0: none",
    )
    train.add_argument("--seed", type=int, default=0, help="data order, LoRA init, augmentation")
    train.add_argument(
        "--augment", action="store_true", help="flip, zoom and shift training images at random"
    )
    train.add_argument(
        "--device", choices=get_args(DeviceName), default="auto", help="where to train"
    )
    train.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA too")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    train.add_argument(
        "--no-progress", action="store_true", help="no progress bars (for logs and CI)"
    )
    train.set_defaults(handler=functools.partial(_train, decoding=decoding))


def _add_eval(
    subcommands: argparse._SubParsersAction[argparse.ArgumentParser], decoding: ServedDecoding
) -> None:
    evaluate = subcommands.add_parser(
        "eval",
        help="score a model (as the service answers, and unconstrained beside) or a "
        "predictions file on a test set",
    )
    evaluate.add_argument("--test", type=Path, required=True, help="test.jsonl")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", type=Path, help='JSONL of {"id", "output"}')
    source.add_argument(
        "--model", help="model directory or hub id, run by the serving engine: the headline "
        "is what /v1/extract would answer",
    )  # fmt: skip
    evaluate.add_argument("--out", type=Path, required=True, help="report folder")
    evaluate.add_argument(
        "--name", default=None, help="system name in the report (default: --model or the "
        "predictions file's name)",
    )  # fmt: skip
    evaluate.add_argument("--batch-size", type=int, default=32, help="images per engine batch")
    evaluate.add_argument(
        "--max-new-tokens", type=int, default=None, help="generation bound (default: "
        "FF_MAX_NEW_TOKENS, else 256; the schema grammar needs at least 216)",
    )  # fmt: skip
    evaluate.add_argument(
        "--device", choices=get_args(DeviceName), default=None,
        help="model device (default: FF_DEVICE, else auto)",
    )  # fmt: skip
    evaluate.add_argument(
        "--limit", type=int, default=None, help="first N test items only (default: all)"
    )
    evaluate.add_argument(
        "--no-unconstrained", action="store_true",
        help="skip the unconstrained run (the paper's figures beside the served ones)",
    )  # fmt: skip
    evaluate.add_argument(
        "--no-progress", action="store_true", help="no progress bars (weights loading)"
    )
    evaluate.set_defaults(handler=functools.partial(_eval, decoding=decoding))


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
        limit_per_split=args.limit_per_split,
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


def _train(args: argparse.Namespace, decoding: ServedDecoding) -> int:
    from model_store.loading import ModelLoadError
    from model_store.training.config import TrainConfig
    from model_store.training.loop import TrainingError, train

    _quiet_loading(args.no_progress)

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
            validate=_served_validation(decoding, args.base, args.preset, args.device),
        )
    except (DataError, TrainingError, ModelLoadError) as exc:
        print(f"FAILED: {exc}")
        return 1
    assert manifest is not None  # only stop_after_steps (not a CLI option) stops early
    _print(
        {"out": str(args.out), "metrics": manifest.metrics, "seconds": manifest.training_seconds}
    )
    return 0


def _quiet_loading(quiet: bool) -> None:
    """Hide transformers' own bars (loading weights) with ours."""
    if quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _served_validation(decoding: ServedDecoding, base: str, preset: str, device: str) -> Validator:
    """Scores the trained weights as the service would load them: the base with the
    adapter merged at load, or (``--preset full``) the output itself."""

    def validate(out_dir: Path, records: Sequence[Record]) -> dict[str, object]:
        from model_store.evaluation import validation_metrics

        model, adapter = (str(out_dir), None) if preset == "full" else (base, out_dir)
        return validation_metrics(records, decoding(model, adapter=adapter, device=device))

    return validate


def _eval(args: argparse.Namespace, decoding: ServedDecoding) -> int:
    from model_store.evaluation import evaluate_model, evaluate_predictions
    from model_store.evaluation.metrics import headline
    from model_store.loading import ModelLoadError

    _quiet_loading(args.no_progress)
    try:
        if args.predictions is not None:
            report = evaluate_predictions(args.test, args.predictions, args.out, system=args.name)
            _print({"out": str(args.out), **headline(report)})
            return 0
        runs = decoding(args.model, device=args.device, max_new_tokens=args.max_new_tokens)
        if args.no_unconstrained:
            runs = dict(list(runs.items())[:1])
        report = evaluate_model(
            args.test, runs, args.out, system=args.name or args.model, model=args.model,
            batch_size=args.batch_size, limit=args.limit,
        )  # fmt: skip
    except (DataError, ModelLoadError, ValueError) as exc:  # ValueError: a bad FF_* setting
        print(f"FAILED: {exc}")
        return 1
    summary: dict[str, Any] = {"out": str(args.out), "figures": report["figures"]}
    summary[report["headline"]] = headline(report)
    for name in list(report["figures"])[1:]:
        summary[name] = headline(report[name])
    _print(summary)
    return 0
