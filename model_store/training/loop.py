"""``fashion-florence train``: fine-tuning on a built dataset, best-by-val, resumable.

Layout of ``out_dir``:

* the best weights so far (by validation loss), replaced in place during training, so
  ``out_dir`` is always usable: a LoRA adapter (``adapter_config.json``,
  ``adapter_model.safetensors``) for ``model merge``, or with ``--preset full`` a
  complete servable model (weights, processor, ``model_manifest.json``);
* ``training_manifest.json``, written at the end: data and rules version,
  hyperparameters, metrics, time;
* ``checkpoint/``: the latest resumable state; ``--resume`` continues from it, and it is
  removed when the run completes.

Loss: teacher forcing on ``<s>{target JSON}</s>``. Florence-2 is an encoder-decoder: the
prompt is the encoder's input and never part of the labels, and padding is set to -100,
so the loss covers exactly the target tokens (``training.encoding.encode_batch``).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file

from fashion_florence_client.schema import SCHEMA_VERSION
from model_store.data.dataset import DataError, Record, read_report, read_split
from model_store.evaluation.metrics import HEADLINE_METRICS, evaluate
from model_store.evaluation.predict import Generator, predict_records
from model_store.loading import LoadedModel, load_model, save_model
from model_store.lora import ADAPTER_WEIGHTS, LORA_PRESETS, lora_config, peft_wrapping
from model_store.manifest import TrainingManifest, created_at_now, sha256_file
from model_store.training.batches import (
    Examples,
    augmented,
    autocast,
    learning_rate_at,
    micro_batches,
    to_device,
    validation_loss,
)
from model_store.training.checkpoint import (
    TrainerState,
    checkpoint_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from model_store.training.config import TrainConfig
from model_store.training.encoding import encode_batch

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"
FULL_WEIGHTS = "model.safetensors"
#: Scores the best weights written to ``out_dir`` on validation records; returns metrics
#: entries (``val``: what the service would answer). The service's CLI provides it.
Validator = Callable[[Path, Sequence[Record]], dict[str, object]]
__all__ = ["HEADLINE_METRICS", "TrainingError", "Validator", "train"]


class TrainingError(Exception):
    """A run that cannot start or continue; the message says why."""


def _device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda, but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def _trainable_model(loaded: LoadedModel, config: TrainConfig) -> torch.nn.Module:
    if config.preset == "full":
        return loaded.model
    torch.manual_seed(config.seed)  # the LoRA A matrices are initialised at random
    lora = lora_config(config.preset, rank=config.rank, alpha=config.alpha, dropout=config.dropout)
    with peft_wrapping():
        return get_peft_model(loaded.model, lora)


def _save_best(model: torch.nn.Module, loaded: LoadedModel, out_dir: Path, base: str) -> None:
    """Replace the best weights in ``out_dir`` (written aside, then moved into place)."""
    staging = out_dir / ".best.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if isinstance(model, PeftModel):
        model.save_pretrained(str(staging), safe_serialization=True)
    else:  # --preset full trains loaded.model itself
        save_model(loaded, staging, name=out_dir.name, base_model=base, adapter=None)
    for path in staging.iterdir():
        path.replace(out_dir / path.name)
    staging.rmdir()


def train(
    data_dir: Path,
    base: str,
    out_dir: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
    validate: Validator | None = None,
) -> TrainingManifest | None:
    """Train into ``out_dir``; returns the run's manifest (None if stopped early).

    ``stop_after_steps`` ends the run cleanly after that many optimizer steps in this
    process, with a checkpoint to ``--resume`` from (time-sliced or preemptible jobs).
    ``validate`` scores the best weights at the end on up to ``val_generate`` validation
    items; without it they are scored on plain ``generate``'s text, recorded as
    ``val_unconstrained`` (it is not what the service answers).
    """
    train_records, val_records = read_split(data_dir, "train"), read_split(data_dir, "val")
    if not train_records or not val_records:
        raise DataError(f"{data_dir}: train and val must both be non-empty")
    report = read_report(data_dir)
    fingerprint = config.fingerprint(str(report.get("data_version", "unknown")), base)
    checkpoint = out_dir / CHECKPOINT_DIR
    if resume and checkpoint.is_dir():
        if checkpoint_fingerprint(checkpoint) != fingerprint:
            raise TrainingError(f"{checkpoint} belongs to another run (config, data or base differ)")  # fmt: skip
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise TrainingError(f"{out_dir} already holds a run; use --resume or a new --out")

    device = _device(config.device)
    loaded = load_model(base, device="cpu")
    processor, prompt = loaded.processor, loaded.manifest.prompt
    model = _trainable_model(loaded, config)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)  # fmt: skip
    examples, val_examples = Examples(train_records), Examples(val_records)
    per_epoch = math.ceil(math.ceil(len(examples) / config.batch_size) / config.grad_accum)
    total = config.max_steps or math.ceil(config.epochs * per_epoch)
    eval_every = config.eval_every or per_epoch

    out_dir.mkdir(parents=True, exist_ok=True)
    state = TrainerState(fingerprint=fingerprint)
    if resume and checkpoint.is_dir():
        state = load_checkpoint(checkpoint, model, optimizer)
        log.info("resuming at step %d of %d", state.step, total)

    from tqdm import tqdm

    bar = tqdm(total=total, initial=state.step, disable=not progress, unit="step")
    batches = micro_batches(len(examples), config, state.micro_step)
    started, steps_this_process = time.perf_counter(), 0
    model.train(True)
    while state.step < total:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(state.step, total, config)
        for _ in range(config.grad_accum):
            _, indices = next(batches)
            state.micro_step += 1
            encoded = encode_batch(processor, prompt, examples.batch(indices))
            if config.augment:  # on the host, where the generator is
                encoded["pixel_values"] = augmented(
                    encoded["pixel_values"], config, state.micro_step
                )
            batch = to_device(encoded, device)
            with autocast(device, config):
                loss = model(**batch).loss / config.grad_accum
            loss.backward()
            state.window.append(float(loss.detach()) * config.grad_accum)
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        steps_this_process += 1
        bar.update(1)
        recent = state.window[-20:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        evaluating = state.step % eval_every == 0 or state.step == total
        if evaluating:
            val = validation_loss(model, processor, prompt, val_examples, config, device)
            train_loss = sum(state.window) / len(state.window)
            entry = {"step": float(state.step), "train_loss": train_loss, "val_loss": val}
            state.history.append(entry)
            state.window = []
            if state.best_val_loss is None or val < state.best_val_loss:
                state.best_val_loss, state.best_step = val, state.step
                _save_best(model, loaded, out_dir, base)
            if on_log is not None:
                on_log(entry)
            bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val:.4f}")
        stopping = stop_after_steps is not None and steps_this_process >= stop_after_steps
        if (stopping or evaluating) and state.step < total:
            state.seconds += time.perf_counter() - started
            started = time.perf_counter()
            save_checkpoint(checkpoint, state, model, optimizer)
        if stopping and state.step < total:
            bar.close()
            return None
    bar.close()
    state.seconds += time.perf_counter() - started
    manifest = _finish(
        model, loaded, out_dir, config, state, val_records, report, base, device, validate
    )
    shutil.rmtree(checkpoint, ignore_errors=True)
    return manifest


def _best_model(
    model: torch.nn.Module, out_dir: Path, weights: str, device: torch.device
) -> Generator:
    """The best weights written so far, in ``model`` (an adapter) or loaded (full)."""
    best: Generator
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_file(str(out_dir / weights)))
        best = model
    else:
        best = load_model(str(out_dir), device=device).model
    best.train(False)
    return best


def _finish(
    model: torch.nn.Module,
    loaded: LoadedModel,
    out_dir: Path,
    config: TrainConfig,
    state: TrainerState,
    val_records: Sequence[Record],
    report: dict[str, Any],
    base: str,
    device: torch.device,
    validate: Validator | None,
) -> TrainingManifest:
    """Score the best weights on (part of) val, and write the manifest."""
    weights = FULL_WEIGHTS if config.preset == "full" else ADAPTER_WEIGHTS
    metrics: dict[str, object] = {
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "steps": state.step,
        "history": state.history,
    }
    subset = list(val_records[: config.val_generate])
    if subset and validate is not None:
        metrics.update(validate(out_dir, subset))
    elif subset:
        best = _best_model(model, out_dir, weights, device)
        outputs = predict_records(best, loaded.processor, loaded.manifest.prompt, subset)
        scores = evaluate(
            {r.id: r.target for r in subset}, outputs, {r.id: r.unknown for r in subset}
        )
        keys = (*HEADLINE_METRICS, "denominators")
        metrics["val_unconstrained"] = {key: scores[key] for key in keys}
    kept = report.get("kept")
    manifest = TrainingManifest(
        name=out_dir.name,
        base_model=base,
        base_weights=loaded.manifest.weights,
        schema_version=SCHEMA_VERSION,
        prompt=loaded.manifest.prompt,
        image_size=loaded.manifest.image_size,
        preset=config.preset,
        target_modules="all" if config.preset == "full" else LORA_PRESETS[config.preset],
        hyperparameters=config.model_dump(mode="json"),
        data={
            "data_version": report.get("data_version", "unknown"),
            "rules_version": report.get("rules_version", "unknown"),
            "source": report.get("source", {}),
            "n_train": kept.get("train") if isinstance(kept, dict) else None,
            "n_val": len(val_records),
        },
        metrics=metrics,
        training_seconds=round(state.seconds, 1),
        device=str(device),
        weights={weights: sha256_file(out_dir / weights)},
        created_at=created_at_now(),
    )
    manifest.write(out_dir)
    return manifest
