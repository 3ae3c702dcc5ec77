"""``fashion-florence model ...``: build, merge and verify model directories."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_store.manifest import ManifestError
from model_store.profiles import BUILTIN_PROFILES


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model = subcommands.add_parser("model", help="build, merge and verify model directories")
    actions = model.add_subparsers(dest="action", required=True)

    demo = actions.add_parser(
        "build-demo", help="build a random-weight Florence-2 (offline, deterministic)"
    )
    demo.add_argument("--out", type=Path, required=True, help="output directory")
    demo.add_argument(
        "--preset",
        default="demo",
        choices=["demo", "florence-2-base", "florence-2-large"],
        help="demo = tiny model for tests; the others have real dimensions (GPU benchmarks)",
    )
    demo.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    demo.add_argument(
        "--gpt2-ranks",
        type=Path,
        default=None,
        help="GPT-2's BPE ranks (.tiktoken): the real-size presets get Florence-2's real "
        "vocabulary (e.g. ../shared/data/tokenizers/gpt2.tiktoken; default: none, the demo "
        "tokenizer padded to Florence-2's size)",
    )
    demo.set_defaults(handler=_build_demo)

    trained = actions.add_parser(
        "build-trained-demo",
        help="rebuild the demo model `make run` serves (shipped in model_store/demo_model): "
        "the tiny Florence-2 trained by the pipeline on real photos and synthetic garments, "
        "with its report",
    )
    trained.add_argument("--out", type=Path, required=True, help="output directory")
    trained.add_argument(
        "--photos",
        type=Path,
        required=True,
        help="clothing-small's folder (train/validation/test class folders)",
    )
    trained.add_argument(
        "--work", type=Path, default=None,
        help="keep data and stages here (default: a new temporary folder)",
    )  # fmt: skip
    trained.add_argument("--progress", action="store_true", help="show training progress bars")
    trained.set_defaults(handler=_build_trained_demo)

    merge = actions.add_parser("merge", help="merge a LoRA adapter into a base model")
    merge.add_argument("base", help="base model directory or hub id")
    merge.add_argument("adapter", type=Path, help="LoRA adapter directory (safetensors)")
    merge.add_argument("out", type=Path, help="output directory for the merged model")
    merge.set_defaults(handler=_merge)

    imported = actions.add_parser(
        "import",
        help="convert a checkpoint in Florence-2's original (trust_remote_code) layout, "
        "optionally with a LoRA adapter trained on it, into a servable native model",
    )
    imported.add_argument(
        "source", type=Path,
        help="original-layout model folder (a local copy: download a hub id first)",
    )  # fmt: skip
    imported.add_argument("out", type=Path, help="output directory (must not exist or be empty)")
    imported.add_argument(
        "--adapter", type=Path, default=None,
        help="PEFT LoRA adapter trained on SRC, merged (default: none); it must have been "
        "trained on this very base",
    )  # fmt: skip
    imported.add_argument(
        "--profile",
        default="fashion-florence",
        choices=sorted(BUILTIN_PROFILES),
        help="the text the model writes: fashion-florence (this project's), paper (the "
        "paper's five fields, tags sorted), paper-v1 (its V1 adapter's four fields; "
        "occasions derived by the V1 rules from the style tags, else the category)",
    )
    imported.add_argument(
        "--name", default=None,
        help="model name in the manifest (default: SRC's folder name, +ADAPTER's)",
    )  # fmt: skip
    imported.set_defaults(handler=_import)

    verify = actions.add_parser("verify", help="check a model directory against its manifest")
    verify.add_argument("directory", type=Path)
    verify.set_defaults(handler=_verify)


def _build_demo(args: argparse.Namespace) -> int:
    from model_store.build import build_model

    manifest = build_model(args.preset, args.out, seed=args.seed, gpt2_ranks=args.gpt2_ranks)
    print(json.dumps({"out": str(args.out), "weights": manifest.weights}, indent=2))
    return 0


def _build_trained_demo(args: argparse.Namespace) -> int:
    import shlex
    import sys
    import tempfile

    from model_store.data.dataset import DataError
    from model_store.demo import build_trained_demo
    from model_store.demo_cache import write_shipped_checksums
    from model_store.demo_report import write_demo_report

    work = args.work or Path(tempfile.mkdtemp(prefix="ff-demo-"))
    try:
        build = build_trained_demo(args.out, photos=args.photos, work_dir=work, progress=args.progress)  # fmt: skip
    except DataError as exc:
        print(f"FAILED: {exc}")
        return 1
    seconds = {stage: round(value, 1) for stage, value in build.seconds.items()}
    summary = {
        "command": "fashion-florence " + shlex.join(sys.argv[1:]),
        "seconds": {**seconds, "total": round(sum(build.seconds.values()), 1)},
        "weights_bytes": sum((args.out / name).stat().st_size for name in build.manifest.weights),
        "data": {key: build.report[key] for key in ("data_version", "n_input", "kept", "dropped")},
        "selection": build.metrics.get("val"),
    }
    parts = {"syn": work / "data-synthetic", "real": work / "data-photos"}
    result = write_demo_report(args.out, parts, work / "figures", dict(summary))
    write_shipped_checksums(args.out)
    print(json.dumps({"out": str(args.out), **summary, "scores": result["scores"]}, indent=2))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from model_store.loading import ModelLoadError
    from model_store.lora import AdapterError
    from model_store.merge import write_merged

    try:
        manifest = write_merged(args.base, args.adapter, args.out)
    except (ModelLoadError, AdapterError) as exc:
        print(f"FAILED: {exc}")
        return 1
    print(json.dumps({"out": str(args.out), "weights": manifest.weights}, indent=2))
    return 0


def _import(args: argparse.Namespace) -> int:
    from model_store.importing.convert import import_checkpoint
    from model_store.importing.errors import CheckpointImportError

    try:
        manifest = import_checkpoint(
            args.source,
            args.out,
            adapter=args.adapter,
            profile=BUILTIN_PROFILES[args.profile],
            name=args.name,
        )
    except CheckpointImportError as exc:
        print(f"FAILED (nothing written to {args.out}): {exc}")
        return 1
    dropped = manifest.imported.dropped if manifest.imported else {}
    summary = {"out": str(args.out), "weights": manifest.weights, "profile": args.profile}
    print(json.dumps({**summary, "dropped": dropped}, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from model_store.manifest import verify_directory

    try:
        manifest = verify_directory(args.directory)
    except ManifestError as exc:
        print(f"FAILED: {exc}")
        return 1
    print(
        f"OK: {manifest.name} (schema v{manifest.schema_version}, {len(manifest.weights)} weight file(s))"
    )
    return 0
