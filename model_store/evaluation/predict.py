"""Run a model over dataset records and keep the output text, for scoring.

Text (not parsed attributes) is what :mod:`model_store.evaluation.metrics` scores, so our
model and external systems go through the same code. A :data:`Predictor` turns a batch of
images into that text. What the service answers comes from predictors the service's CLI
hands in (:class:`ServedDecoding`: the serving engine, its schema grammar and the model's
output profile; model_store never imports the service). :func:`generate_texts` is plain
``generate`` without a grammar: the model's own unconstrained text, as the paper scores
it, for code here that has no service (the demo build, tests).
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
from model_store.predictors import Predictor, PredictorFactory

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


def predict_with(
    predictor: Predictor, records: Sequence[Record], *, batch_size: int = 32
) -> dict[str, str | None]:
    """id -> the predictor's text for every record."""
    outputs: dict[str, str | None] = {}
    for chunk in _chunks(records, batch_size):
        texts = predictor([open_rgb(record.image) for record in chunk])
        outputs.update(zip((record.id for record in chunk), texts, strict=True))
    return outputs


def generate_predictor(
    model_path: str, *, device: str = "cpu", max_new_tokens: int = 96
) -> PredictorFactory:
    """Plain ``generate`` (no grammar) on a model loaded by model_store."""

    def load() -> Predictor:
        from model_store.loading import load_model

        loaded = load_model(model_path, device=device)

        def predict(images: Sequence[Image.Image]) -> list[str | None]:
            prompt = loaded.manifest.prompt
            texts = generate_texts(loaded.model, loaded.processor, prompt, images, max_new_tokens=max_new_tokens)  # fmt: skip
            return list(texts)

        return predict

    return load


def write_predictions(path: Path, outputs: dict[str, str | None]) -> None:
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
