"""The embedded demo model: the tiny Florence-2 trained on the synthetic set by the pipeline.

``make run`` serves it when no ``FF_MODEL_PATH`` is set (``demo_cache.ensure_demo_model``).
The recipe is the pipeline a user runs on real data, with one extra first stage:

1. ``model build-demo``: the tiny Florence-2 with random weights;
2. ``data synth`` + ``data build --format table``: rendered garments through the same
   collapse rules, split and report as iMaterialist;
3. a stand-in for pretraining (there is no pretrained tiny Florence-2 offline): the
   vision tower learns the attributes with linear heads, then the whole model learns the
   target JSON (``train --preset full``). A random-weight model cannot be taught by LoRA
   alone: its frozen embeddings and layer norms cap every logit near 1.3, so the loss
   cannot fall below about 5 nats per token (see docs/model_pipeline.md);
4. ``train --preset all-linear``: LoRA with the paper's rank and alpha, best by
   validation loss, with a training manifest (data and rules version, metrics);
5. ``model merge``: the servable demo model.

Everything is seeded, single-threaded where it matters, and cached: the first build
takes a few CPU minutes (the report in docs/model_pipeline.md says how many), later
starts verify the checksums and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
from transformers import Florence2ForConditionalGeneration, Florence2Processor

from fashion_florence_client.schema import CATEGORIES, COLORS, MATERIALS, Category, Color
from model_store.build import build_model
from model_store.data.build import SplitConfig, build_dataset
from model_store.data.dataset import read_split
from model_store.data.rules import load_rules
from model_store.data.sources import read_table
from model_store.data.synthesize import write_synthetic_source
from model_store.evaluation.predict import open_rgb
from model_store.loading import load_model, save_model
from model_store.manifest import ModelManifest
from model_store.merge import write_merged
from model_store.training.config import TrainConfig
from model_store.training.loop import train

log = logging.getLogger(__name__)
DEMO_NAME: Final = "fashion-florence-demo"
RECIPE_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class DemoRecipe:
    """Everything that determines the demo model; its hash names the build."""

    images: int = 3000
    seed: int = 0
    text_init_std: float = 0.125
    categories: tuple[Category, ...] | None = None
    colors: tuple[Color, ...] | None = None
    textured: bool = True
    vision_steps: int = 600
    vision_lr: float = 3e-3
    vision_batch: int = 32
    pretrain: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            preset="full", learning_rate=1e-3, max_steps=2500, eval_every=250, batch_size=16,
            grad_accum=1, val_generate=0, device="cpu",
        )
    )  # fmt: skip
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            preset="all-linear", learning_rate=1e-3, epochs=1, batch_size=16, grad_accum=1,
            val_generate=256, device="cpu",
        )
    )  # fmt: skip

    @property
    def tag(self) -> str:
        """Recorded as the demo manifest's ``adapter``: a cache built by another recipe
        (or the old random-weight demo) is rebuilt rather than served."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return f"synthetic-v{RECIPE_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _attribute_heads(width: int, tokens: int) -> torch.nn.ModuleDict:
    sizes = {"category": len(CATEGORIES), "color": len(COLORS), "material": len(MATERIALS) + 1}
    heads: dict[str, torch.nn.Module] = {}
    for name, size in sizes.items():
        heads[f"{name}_flat"] = torch.nn.Linear(width * tokens, size)
        heads[f"{name}_mean"] = torch.nn.Linear(width, size)
    return torch.nn.ModuleDict(heads)


def warm_up_vision(
    model: Florence2ForConditionalGeneration,
    processor: Florence2Processor,
    data_dir: Path,
    recipe: DemoRecipe,
) -> float:
    """Teach the vision tower and projector the attributes with throw-away linear heads.

    A random vision tower gives the decoder almost nothing to read, and learning vision
    through a sequence loss alone is very slow; a classification loss straight on the
    image tokens (all of them, and their mean, which uniform cross-attention sees first)
    is fast. Returns the final loss.
    """
    records = read_split(data_dir, "train")
    images = [open_rgb(r.image) for r in records]
    labels = torch.tensor(
        [
            (
                CATEGORIES.index(r.target.category),
                COLORS.index(r.target.primary_color),
                MATERIALS.index(r.target.material) + 1 if r.target.material else 0,
            )
            for r in records
        ]
    )
    tower = [model.model.vision_tower, model.model.multi_modal_projector]
    width = model.model.multi_modal_projector.image_projection.out_features
    tokens = processor.image_processor.image_seq_length
    heads = _attribute_heads(width, tokens)
    params = [p for module in tower for p in module.parameters()] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.vision_lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train(True)
    loss = torch.zeros(())
    for step in range(recipe.vision_steps):
        warm = min(1.0, (step + 1) / 20) * (1 - step / recipe.vision_steps)
        for group in optimizer.param_groups:
            group["lr"] = recipe.vision_lr * warm
        batch = torch.randint(0, len(images), (recipe.vision_batch,), generator=generator)
        pixels = processor.image_processor(
            [images[i] for i in batch.tolist()], return_tensors="pt"
        )["pixel_values"]
        features = model.model.get_image_features(pixels).pooler_output
        loss = torch.zeros(())
        for index, name in enumerate(("category", "color", "material")):
            target = labels[batch, index]
            loss = loss + torch.nn.functional.cross_entropy(heads[f"{name}_flat"](features.flatten(1)), target)  # fmt: skip
            loss = loss + torch.nn.functional.cross_entropy(heads[f"{name}_mean"](features.mean(1)), target)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
    model.train(False)
    return float(loss.detach())


@dataclass(slots=True)
class DemoBuild:
    manifest: ModelManifest
    seconds: dict[str, float]
    report: dict[str, Any]
    metrics: dict[str, object]


def build_trained_demo(
    out_dir: Path,
    recipe: DemoRecipe | None = None,
    *,
    work_dir: Path | None = None,
    progress: bool = False,
) -> DemoBuild:
    """Run the demo recipe; writes the merged model to ``out_dir`` (atomically)."""
    recipe = recipe or DemoRecipe()
    threads = torch.get_num_threads()
    # One thread: a 64-wide model gains little from more, the arithmetic order is the same
    # everywhere, and a busy or CPU-quota'd machine does not thrash (two spinning OpenMP
    # threads on one free core ran 20x slower than one thread in our measurements).
    torch.set_num_threads(1)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    scratch = Path(tempfile.mkdtemp(prefix="ff-demo-")) if work_dir is None else work_dir
    seconds: dict[str, float] = {}
    log.info("building the trained demo model into %s (once; a few CPU minutes)", out_dir)
    try:
        clock = time.perf_counter()
        build_model("demo", scratch / "random", seed=recipe.seed, text_init_std=recipe.text_init_std)  # fmt: skip
        table = write_synthetic_source(
            scratch / "source",
            n=recipe.images,
            seed=recipe.seed,
            categories=recipe.categories,
            colors=recipe.colors,
            textured=recipe.textured,
        )
        data = scratch / "data"
        report = build_dataset(
            read_table(table, scratch / "source" / "images", load_rules()),
            data,
            source={"format": "table", "synthetic": True, "rows": recipe.images},
            split=SplitConfig(0.1, 0.1, seed=recipe.seed),
        )
        seconds["data"] = time.perf_counter() - clock
        log.info("demo model: %d synthetic rows built; vision warm-up", recipe.images)

        clock = time.perf_counter()
        loaded = load_model(str(scratch / "random"))
        torch.manual_seed(recipe.seed)
        warm_up_vision(loaded.model, loaded.processor, data, recipe)
        save_model(loaded, scratch / "warm", name="demo-warm", base_model="random:demo", adapter=None)  # fmt: skip
        seconds["vision"] = time.perf_counter() - clock
        log.info("demo model: full fine-tuning (%s steps)", recipe.pretrain.max_steps)

        clock = time.perf_counter()
        train(data, str(scratch / "warm"), scratch / "pretrained", recipe.pretrain, progress=progress)  # fmt: skip
        seconds["pretrain"] = time.perf_counter() - clock
        log.info("demo model: LoRA fine-tuning, then merge")

        clock = time.perf_counter()
        tuned = train(data, str(scratch / "pretrained"), scratch / "adapter", recipe.finetune, progress=progress)  # fmt: skip
        assert tuned is not None
        seconds["lora"] = time.perf_counter() - clock

        staging = out_dir.with_name(f".{out_dir.name}-{recipe.tag}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        manifest = write_merged(str(scratch / "pretrained"), scratch / "adapter", staging, name=DEMO_NAME)  # fmt: skip
        manifest = manifest.model_copy(update={"adapter": recipe.tag, "base_model": "random:demo"})
        manifest.write(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:  # the serving process that called us keeps its own settings
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return DemoBuild(manifest, seconds, report, tuned.metrics)
