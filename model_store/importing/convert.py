"""``fashion-florence model import``: an original-layout directory to a servable native one.

The output is built in a sibling temporary directory and renamed into place only when
complete, so a refused import (an unknown key, a pickle with code, a shape mismatch)
leaves nothing at OUT, and a crash never leaves a half-written model a server would load.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, Florence2ForConditionalGeneration, Florence2Processor

from model_store.build import IMAGENET_MEAN, IMAGENET_STD, make_processor
from model_store.importing.adapter import convert_adapter, merge_converted
from model_store.importing.errors import CheckpointImportError
from model_store.importing.layout import is_original_config, native_config, read_config
from model_store.importing.tensors import Accounting, convert_state_dict
from model_store.importing.weights import read_state_dict, weight_files
from model_store.manifest import (
    DEFAULT_PROMPT,
    ImportRecord,
    ModelManifest,
    new_manifest,
    sha256_file,
)
from model_store.profiles import PROJECT_PROFILE, OutputProfile
from model_store.vocabulary import (
    add_florence_tokens,
    add_image_token,
    florence_added_tokens,
    native_embedding_rows,
)


def import_tokenizer(source: Path, model_vocab: int) -> Any:
    """The source's tokenizer with Florence-2's added tokens (which the original processor
    adds at run time, so the files usually lack them) and the native ``<image>`` after."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise CheckpointImportError(f"cannot read the tokenizer in {source}: {exc}") from exc
    added = len(florence_added_tokens())
    if len(tokenizer) == model_vocab - added:
        add_florence_tokens(tokenizer)
    elif len(tokenizer) != model_vocab:
        raise CheckpointImportError(
            f"the tokenizer has {len(tokenizer)} tokens and the model {model_vocab} embeddings "
            f"(neither equal nor {added} apart, Florence-2's added tokens): ids would not match"
        )
    return add_image_token(tokenizer)


def import_processor(source: Path, tokenizer: Any) -> Florence2Processor:
    path = source / "preprocessor_config.json"
    if not path.is_file():
        raise CheckpointImportError(f"{source} has no preprocessor_config.json")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    size = config.get("size") or {}
    height, width = size.get("height"), size.get("width")
    if not isinstance(height, int) or height != width:
        raise CheckpointImportError(f"{path}: only square input sizes are supported, got {size}")
    if config.get("do_center_crop"):
        raise CheckpointImportError(f"{path}: centre cropping is not Florence-2's preprocessing")
    # DaViT downsamples 32x; the projector adds one pooled token.
    seq_length = int(config.get("image_seq_length", (height // 32) ** 2 + 1))
    return make_processor(
        tokenizer,
        image_size=height,
        image_seq_length=seq_length,
        mean=config.get("image_mean", IMAGENET_MEAN),
        std=config.get("image_std", IMAGENET_STD),
        resample=int(config.get("resample", 3)),
    )


def _meta_model(config: dict[str, Any], model_vocab: int) -> Florence2ForConditionalGeneration:
    """The native model's skeleton: ``<image>`` takes the id after the original vocabulary
    (as in transformers' own conversion) and the table is padded to a multiple of 64."""
    native = native_config(
        config, vocab_rows=native_embedding_rows(model_vocab + 1), image_token_id=model_vocab
    )
    with torch.device("meta"):  # shapes only; the tensors come from the checkpoint
        return Florence2ForConditionalGeneration(native)


def _cast(
    model: Florence2ForConditionalGeneration, dtype: torch.dtype
) -> Florence2ForConditionalGeneration:
    # ``to`` is wrapped with functools.wraps, which mypy cannot bind as a method.
    move: Callable[..., Florence2ForConditionalGeneration] = model.to
    return move(dtype=dtype)


def _greedy_defaults(model: Florence2ForConditionalGeneration) -> None:
    """The service decodes greedily under its grammar: the original's beams, n-gram ban
    (which forbids the repeated `":"` of any JSON) and forced tokens are not carried over."""
    model.generation_config.num_beams = 1
    model.generation_config.no_repeat_ngram_size = 0
    model.generation_config.forced_bos_token_id = None
    model.generation_config.forced_eos_token_id = None


def convert_directory(
    source: Path, adapter: Path | None = None
) -> tuple[Florence2ForConditionalGeneration, Florence2Processor, Accounting]:
    """The native model (on CPU, the source's dtype) and processor for ``source``."""
    config = read_config(source)
    if not is_original_config(config):
        raise CheckpointImportError(
            f"{source} is not in the original Florence-2 layout (no auto_map / DaViT "
            "vision_config); a native directory needs no import"
        )
    text = config.get("text_config") or {}
    model_vocab = int(text.get("vocab_size") or config.get("vocab_size") or 0)
    if adapter is not None:
        convert_adapter(adapter)  # refuse a bad adapter before reading gigabytes of weights
    model = _meta_model(config, model_vocab)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state, accounting = convert_state_dict(read_state_dict(source), expected, model_vocab)
    tokenizer = import_tokenizer(source, model_vocab)
    if tokenizer.image_token_id != model.config.image_token_id:
        raise CheckpointImportError(f"<image> got id {tokenizer.image_token_id}, not {model_vocab}")
    processor = import_processor(source, tokenizer)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.train(False)
    if adapter is not None:
        dtype = model.dtype
        model = _cast(merge_converted(_cast(model, torch.float32), adapter), dtype)  # fp32 merge
    _greedy_defaults(model)
    return model, processor, accounting


def _record(source: Path, adapter: Path | None, accounting: Accounting) -> ImportRecord:
    adapter_files = (
        sorted(p for p in adapter.iterdir() if p.name.startswith("adapter_")) if adapter else []
    )
    return ImportRecord(
        source=str(source),
        weights={p.name: sha256_file(p) for p in weight_files(source)},
        adapter=str(adapter) if adapter else None,
        adapter_weights={p.name: sha256_file(p) for p in adapter_files},
        dropped=accounting.dropped,
    )


def import_checkpoint(
    source: Path,
    out_dir: Path,
    *,
    adapter: Path | None = None,
    profile: OutputProfile = PROJECT_PROFILE,
    name: str | None = None,
) -> ModelManifest:
    """Convert ``source`` (and ``adapter``, merged) and write a native model at ``out_dir``."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointImportError(f"{out_dir} exists and is not empty; import into a new path")
    model, processor, accounting = convert_directory(source, adapter)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        manifest = new_manifest(
            staging,
            name=name or source.name + (f"+{adapter.name}" if adapter else ""),
            base_model=str(source),
            adapter=adapter.name if adapter else None,
            prompt=profile.prompt or DEFAULT_PROMPT,
            image_size=int(processor.image_processor.size["height"]),
            dtype=str(model.dtype).removeprefix("torch."),
            profile=profile,
            imported=_record(source, adapter, accounting),
        )
        manifest.write(staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
