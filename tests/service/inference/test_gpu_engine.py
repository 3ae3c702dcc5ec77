"""The engine on a real CUDA device: half precision, the on-device and pinned pixel paths,
the grammar mask on device logits, a real OOM split, the liveness check's classification.

Every test here is ``gpu``-marked and skips without CUDA; ``bench/gpu.sh`` runs them
(``pytest -m gpu``) before the benchmark. The CPU side of the same logic is tested with
fakes in ``test_engine_device.py`` and ``tests/service/serving``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fashion_florence_client.schema import FashionAttributes
from model_store.loading import load_model
from service.backend import DeviceFatalError, DeviceOutOfMemoryError, ItemFailure
from service.engine_core.local import InProcessEngine
from service.inference.engine import FlorenceEngine, load_engine
from service.settings import DtypeName, Settings
from service.telemetry.metrics import ServiceMetrics
from tests.conftest import TRAINED_CLASSES, garment_image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def cuda_engine(model_dir: Path, dtype: DtypeName = "float32", **settings: Any) -> FlorenceEngine:
    return load_engine(Settings(model_path=str(model_dir), device="cuda", dtype=dtype, **settings))


@pytest.fixture
def memory_cap() -> Iterator[None]:
    """Whatever a test caps, the next one gets the whole device back."""
    yield
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_engine_answers_mostly_right(
    trained_model_dir: Path, dtype: DtypeName
) -> None:
    engine = cuda_engine(trained_model_dir, dtype)
    assert engine.info.dtype == dtype
    rng = random.Random(7)
    cases = list(TRAINED_CLASSES.items())
    batch = [engine.preprocess(garment_image(color, rng)) for color, _ in cases]
    assert all(item.dtype == torch.uint8 and item.device.type == "cuda" for item in batch)
    outcomes = engine.run_batch(batch)
    correct = sum(
        o.attributes == FashionAttributes.model_validate(target)
        for o, (_, target) in zip(outcomes, cases, strict=True)
    )
    # Half precision may flip a close call, but the trained model should mostly be right.
    assert correct >= len(cases) - 1, [o.text for o in outcomes]
    engine.close()


def test_on_device_normalization_matches_the_host_path(demo_model_dir: Path) -> None:
    loaded = load_model(str(demo_model_dir), device="cuda", verify_checksums=False)
    staged = FlorenceEngine(loaded, max_new_tokens=256, normalize_on_device=True)
    pinned = FlorenceEngine(loaded, max_new_tokens=256, normalize_on_device=False)
    rng = random.Random(3)
    images = [garment_image((200, 40, 40), rng), garment_image((40, 40, 200), rng)]
    # Staged: uint8 on the GPU from the pool thread; pinned: float32 on the host.
    staged_items = [staged.preprocess(image) for image in images]
    pinned_items = [pinned.preprocess(image) for image in images]
    assert all(t.device.type == "cuda" and t.dtype == torch.uint8 for t in staged_items)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in pinned_items)
    on_gpu = staged.pixel_values(staged_items)
    from_host = pinned.pixel_values(pinned_items)  # through pinned memory, non-blocking
    torch.cuda.synchronize()
    assert on_gpu.device.type == from_host.device.type == "cuda"
    assert on_gpu.shape == from_host.shape
    torch.testing.assert_close(on_gpu, from_host, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("jump_forward", [False, True])
def test_the_grammar_mask_holds_on_cuda_logits(demo_model_dir: Path, jump_forward: bool) -> None:
    # Random weights: without the mask on the device's logits, no output would validate.
    engine = cuda_engine(demo_model_dir, "bfloat16", jump_forward=jump_forward)
    rng = random.Random(5)
    batch = [engine.preprocess(garment_image((rng.randrange(256),) * 3, rng)) for _ in range(6)]
    outcomes = engine.run_batch(batch)
    assert all(o.ok for o in outcomes), [o.text for o in outcomes]
    assert all(o.confidence is not None for o in outcomes)


def _cap_to(extra_bytes: int) -> None:
    """Let the process allocate only ``extra_bytes`` beyond what it holds now."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    held = torch.cuda.memory_reserved()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (held + extra_bytes) / total))


def test_a_real_oom_splits_the_batch_down_to_what_fits(
    demo_model_dir: Path, memory_cap: None
) -> None:
    engine = cuda_engine(demo_model_dir, constrained_decoding=False, max_new_tokens=16)
    rng = random.Random(11)
    one = engine.preprocess(garment_image((90, 90, 90), rng))
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    engine.run_batch([one])
    per_image = max(torch.cuda.max_memory_allocated() - before, 1 << 20)
    big = [one] * 512
    _cap_to(8 * per_image)  # batch 1 fits, 512 cannot
    with pytest.raises(DeviceOutOfMemoryError):
        engine.run_batch(big)
    settings = Settings(max_batch_size=512, preprocess_threads=1)
    metrics = ServiceMetrics()
    scheduler = InProcessEngine(engine, settings, metrics)
    outcomes = scheduler._run_batch(big[:64])
    assert len(outcomes) == 64
    assert all(o.failure is not ItemFailure.OUT_OF_MEMORY for o in outcomes)
    assert (metrics.registry.get_sample_value("ff_oom_splits_total") or 0) >= 1  # it split
    engine.check_device()  # the device is fine after all of that


def test_liveness_check_passes_and_a_full_device_is_not_fatal(
    demo_model_dir: Path, memory_cap: None
) -> None:
    engine = cuda_engine(demo_model_dir, constrained_decoding=False, max_new_tokens=16)
    engine.check_device()
    _cap_to(0)
    hog = []
    try:
        while True:  # fill what the cap leaves, in ever smaller pieces
            size = 1 << 20
            while size >= 512:
                try:
                    hog.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
                    break
                except torch.OutOfMemoryError:
                    size //= 2
            else:
                break
        error: Exception | None = None
        try:
            engine.check_device()
        except Exception as exc:
            error = exc
        assert not isinstance(error, DeviceFatalError), "an OOM in the check was taken as fatal"
        # Either the probe's one element still fit, or it was refused as out of memory:
        # transient, so the lifecycle keeps the engine alive.
        assert error is None or "out of memory" in str(error).lower(), error
    finally:
        hog.clear()
