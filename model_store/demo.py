"""The embedded demo model: the tiny Florence-2 trained by the pipeline on real photos
(category known, colour weak or unknown) and synthetic garments (every field known).

The trained files ship with the package (``model_store/demo_model/``, see
:mod:`model_store.demo_cache`); this module is how they were made, run by
``fashion-florence model build-trained-demo``, never by the server. The recipe is the
pipeline a user runs on real data, with one extra first stage:

1. ``model build-demo``: the tiny Florence-2 with random weights, at 64 px (per second
   of training, the random build's 128 px tower learned the photos' category about half
   as fast);
2. ``data synth`` + ``data build --format table``: rendered garments through the same
   collapse rules, split and report as iMaterialist; ``data build --format folders``:
   the real photos, in their collection's own split, category from the class folder,
   colour from the weak pixel labeller, everything else unknown; the two combined;
3. a stand-in for pretraining (there is no pretrained tiny Florence-2 offline): the
   vision tower learns the labelled fields with linear heads (``demo_vision``: the
   photos' category alone first, rare categories drawn more often, then every field of
   both kinds), then the
   whole model learns the target JSON (``train --preset full``), with no loss on unknown
   fields. A random-weight model cannot be taught by LoRA alone: its frozen embeddings
   and layer norms cap every logit near 1.3 (see docs/model_pipeline.md);
4. ``train --preset all-linear``: LoRA with the paper's rank and alpha, best by
   validation loss (the validation split only), with a training manifest;
5. ``model merge``: the servable demo model; then the report on validation and test.

Everything is seeded and single-threaded where it matters.
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

from fashion_florence_client.schema import Category, Color
from model_store.build import build_model
from model_store.data.build import SplitConfig, build_dataset
from model_store.data.combine import combine_builds
from model_store.data.dataset import DataError, read_split
from model_store.data.folders import build_folder_dataset, read_mapping
from model_store.data.rules import load_rules
from model_store.data.sources import read_table
from model_store.data.synthesize import write_synthetic_source
from model_store.demo_vision import warm_up_vision
from model_store.loading import load_model, save_model
from model_store.manifest import ModelManifest
from model_store.merge import write_merged
from model_store.training.config import TrainConfig
from model_store.training.loop import train

log = logging.getLogger(__name__)
DEMO_NAME: Final = "fashion-florence-demo"
RECIPE_VERSION: Final = 6  # 6: the photos' colours from weak-color-v3
#: The class folders of ../shared/data/clothing-small mapped to schema categories.
CLOTHING_SMALL_MAPPING: Final = Path(__file__).parent / "data" / "clothing_small_mapping.json"


@dataclass(frozen=True, slots=True)
class DemoRecipe:
    """Everything that determines the demo model; its hash names the build."""

    images: int = 3000
    #: Real photos per split at most (None: all); 0 trains on synthetic garments only.
    photos_per_split: int | None = None
    weak_colors: bool = True
    seed: int = 0
    text_init_std: float = 0.125
    #: The input side in pixels (the random ``demo`` build has 128).
    image_size: int = 64
    categories: tuple[Category, ...] | None = None
    colors: tuple[Color, ...] | None = None
    textured: bool = True
    vision_steps: int = 9600
    vision_lr: float = 3e-3
    vision_batch: int = 32
    #: Share of each warm-up batch taken from the real photos (None: drawn uniformly).
    vision_partial_share: float | None = 0.5
    vision_zoom_and_shift: bool = True
    #: Draw the photos with weight n ** -balance for the n photos of their category.
    vision_category_balance: float = 0.5
    #: The first warm-up steps draw the photos alone and teach their category alone.
    vision_category_steps: int = 4800
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
        kind = "synthetic" if self.photos_per_split == 0 else "photos"
        return f"{kind}-v{RECIPE_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


@dataclass(slots=True)
class DemoBuild:
    manifest: ModelManifest
    seconds: dict[str, float]
    report: dict[str, Any]
    metrics: dict[str, object]


def _build_data(scratch: Path, recipe: DemoRecipe, photos: Path | None) -> dict[str, Any]:
    """Synthetic garments and (unless the recipe has none) real photos, combined."""
    table = write_synthetic_source(
        scratch / "source",
        n=recipe.images,
        seed=recipe.seed,
        categories=recipe.categories,
        colors=recipe.colors,
        textured=recipe.textured,
    )
    parts = {"syn": scratch / "data-synthetic"}
    build_dataset(
        read_table(table, scratch / "source" / "images", load_rules()),
        parts["syn"],
        source={"format": "table", "synthetic": True, "rows": recipe.images},
        split=SplitConfig(0.1, 0.1, seed=recipe.seed),
    )
    if recipe.photos_per_split != 0:
        if photos is None:
            raise DataError("this recipe trains on real photos: give their class folders")
        parts["real"] = scratch / "data-photos"
        build_folder_dataset(
            photos,
            read_mapping(CLOTHING_SMALL_MAPPING),
            parts["real"],
            weak_colors=recipe.weak_colors,
            limit_per_split=recipe.photos_per_split,
        )
    return combine_builds(parts, scratch / "data")


def build_trained_demo(
    out_dir: Path,
    recipe: DemoRecipe | None = None,
    *,
    photos: Path | None = None,
    work_dir: Path | None = None,
    progress: bool = False,
) -> DemoBuild:
    """Run the demo recipe; writes the merged model to ``out_dir`` (atomically).

    ``photos``: the real photos' class folders (``clothing-small`` with its own split).
    """
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
    log.info("building the trained demo model into %s", out_dir)
    try:
        clock = time.perf_counter()
        build_model(
            "demo",
            scratch / "random",
            seed=recipe.seed,
            text_init_std=recipe.text_init_std,
            image_size=recipe.image_size,
        )
        data = scratch / "data"
        report = _build_data(scratch, recipe, photos)
        seconds["data"] = time.perf_counter() - clock
        log.info("demo model: %s items built; vision warm-up", report["kept"])

        clock = time.perf_counter()
        loaded = load_model(str(scratch / "random"))
        torch.manual_seed(recipe.seed)
        warm_up_vision(
            loaded.model,
            loaded.processor,
            read_split(data, "train"),
            steps=recipe.vision_steps,
            learning_rate=recipe.vision_lr,
            batch_size=recipe.vision_batch,
            seed=recipe.seed,
            partial_share=recipe.vision_partial_share,
            zoom_and_shift=recipe.vision_zoom_and_shift,
            category_balance=recipe.vision_category_balance,
            category_steps=recipe.vision_category_steps,
        )
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
