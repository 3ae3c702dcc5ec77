"""The colour-demo fine-tune: the minimal loop behind the service tests' fixture model.

Three colour classes of synthetic block garments, seconds on a CPU; the demo model comes
out emitting valid, image-dependent JSON. The benchmarks serve the same model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Florence2ForConditionalGeneration, Florence2Processor

from model_store.loading import load_model, save_model
from model_store.manifest import ModelManifest
from model_store.synthetic import COLOR_CLASSES, block_garment
from model_store.training.encoding import TrainingExample, encode_batch


def fine_tune(
    model: Florence2ForConditionalGeneration,
    processor: Florence2Processor,
    prompt: str,
    examples: Sequence[TrainingExample],
    *,
    steps: int,
    learning_rate: float = 3e-3,
    batch_size: int = 8,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` in place (all parameters that require grad); returns the loss curve."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    for _ in range(steps):
        batch = encode_batch(
            processor, prompt, rng.sample(list(examples), min(batch_size, len(examples)))
        )
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    model.train(False)  # = .eval(), which transformers leaves unannotated
    return losses


def train_color_demo(
    base_dir: Path, out_dir: Path, *, steps: int = 150, examples_per_class: int = 4, seed: int = 0
) -> ModelManifest:
    """Fine-tune a (demo) model on the synthetic colour classes and write it with a manifest.

    About ten seconds on two CPU cores for the demo model; afterwards the model emits
    valid, image-dependent JSON for :data:`model_store.synthetic.COLOR_CLASSES`.
    """
    loaded = load_model(str(base_dir))
    rng = random.Random(seed)
    examples = [
        TrainingExample(block_garment(color, rng), attributes)
        for color, attributes in COLOR_CLASSES.items()
        for _ in range(examples_per_class)
    ]
    fine_tune(
        loaded.model, loaded.processor, loaded.manifest.prompt, examples, steps=steps, seed=seed
    )
    return save_model(
        loaded,
        out_dir,
        name=f"{loaded.manifest.name}-colors",
        base_model=loaded.manifest.name,
        adapter=None,
    )
