"""Run a model over dataset records and keep its raw output text, for scoring.

Greedy decoding, like the service: the paper evaluates the model's own output, and raw
text (not parsed attributes) is what :mod:`model_store.evaluation.metrics` scores, so
our model and external systems go through the same code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from peft import PeftModel
from PIL import Image
from transformers import Florence2ForConditionalGeneration, Florence2Processor

from model_store.data.dataset import DataError, Record

#: A plain model, or one with a (not yet merged) LoRA adapter: both generate the same way.
Generator = Florence2ForConditionalGeneration | PeftModel


def open_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _chunks(items: Sequence[Record], size: int) -> Iterator[Sequence[Record]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.inference_mode()
def generate_texts(
    model: Generator,
    processor: Florence2Processor,
    prompt: str,
    images: Sequence[Image.Image],
    *,
    max_new_tokens: int = 96,
) -> list[str]:
    """Greedy outputs for one batch, decoded up to the first ``</s>``."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = processor(text=[prompt] * len(images), images=list(images), return_tensors="pt")
    sequences = model.generate(
        input_ids=inputs["input_ids"].to(device),
        pixel_values=inputs["pixel_values"].to(device=device, dtype=dtype),
        max_new_tokens=max_new_tokens,
        num_beams=1,
        do_sample=False,
        no_repeat_ngram_size=0,  # JSON repeats `","` and `":"` legitimately
    )
    tokenizer = processor.tokenizer
    texts = []
    for row in sequences.tolist():
        if tokenizer.eos_token_id in row[1:]:  # row[0] is the decoder start (also </s>)
            row = row[: row.index(tokenizer.eos_token_id, 1) + 1]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


def predict_records(
    model: Generator,
    processor: Florence2Processor,
    prompt: str,
    records: Sequence[Record],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 96,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """id -> raw output text for every record."""
    outputs: dict[str, str] = {}
    for chunk in _chunks(records, batch_size):
        images = [open_rgb(record.image) for record in chunk]
        texts = generate_texts(model, processor, prompt, images, max_new_tokens=max_new_tokens)
        outputs.update(zip((record.id for record in chunk), texts, strict=True))
        if on_batch is not None:
            on_batch(len(chunk))
    return outputs


def write_predictions(path: Path, outputs: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for item, text in sorted(outputs.items()):
            handle.write(json.dumps({"id": item, "output": text}, ensure_ascii=False) + "\n")


def read_predictions(path: Path) -> dict[str, str | None]:
    """``{"id", "output"}`` lines; a null output is kept (and scored as invalid)."""
    if not path.is_file():
        raise DataError(f"predictions file {path} does not exist")
    outputs: dict[str, str | None] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                item, text = str(row["id"]), row["output"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{number}: expected {{'id', 'output'}}") from exc
            if item in outputs:
                raise DataError(f"{path}:{number}: id {item!r} predicted twice")
            outputs[item] = text if isinstance(text, str) else None
    return outputs
