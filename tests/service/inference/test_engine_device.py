"""The engine on its device and host: the demo-model cache, device and dtype choice,
CUDA-only paths, out-of-memory and sticky errors, CPU threads."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from fashion_florence_client.schema import FashionAttributes
from model_store.manifest import MANIFEST_NAME, sha256_file
from service.backend import DeviceFatalError, DeviceOutOfMemoryError
from service.inference.decoding.decoders import Decoded, Decoder
from service.inference.engine import (
    FlorenceEngine,
    cpu_threads_for_model,
    load_engine,
    resolve_device,
    resolve_dtype,
)
from service.settings import Settings
from tests.conftest import TRAINED_CLASSES, garment_image

PLAIN_MAX_NEW_TOKENS = 48  # a full target is ~30 tokens; keeps the random model's runs short


def demo_cache_settings(directory: Path) -> Settings:
    return Settings(
        model_path=None,
        demo_model_dir=directory,
        demo_model="random",  # the cache logic; the trained recipe: tests/model_store/test_demo.py
        device="cpu",
        max_new_tokens=8,
        constrained_decoding=False,
    )


def test_demo_model_is_built_once_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "cache" / "demo-model"
    settings = demo_cache_settings(directory)
    first = load_engine(settings)
    assert first.info.name == "fashion-florence-demo"
    weights = directory / "model.safetensors"
    stamps = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    inode = weights.stat().st_ino
    assert MANIFEST_NAME in stamps

    second = load_engine(settings)
    assert second.info == first.info
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == stamps
    assert weights.stat().st_ino == inode


def test_corrupt_demo_model_is_rebuilt(tmp_path: Path) -> None:
    directory = tmp_path / "demo-model"
    settings = demo_cache_settings(directory)
    load_engine(settings)
    weights = directory / "model.safetensors"
    good = sha256_file(weights)
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    assert load_engine(settings).info.revision == good[:12]
    assert sha256_file(weights) == good


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cuda_is_refused_without_a_device() -> None:
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


def test_device_and_dtype_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", cpu) is torch.float32
    assert resolve_dtype("float32", cpu) is torch.float32
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16  # allowed, with a warning
    assert resolve_dtype("float16", torch.device("cuda")) is torch.float16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_engine_bf16_on_cuda(trained_model_dir: Path) -> None:
    engine = load_engine(
        Settings(
            model_path=str(trained_model_dir),
            device="cuda",
            dtype="bfloat16",
        )
    )
    assert engine.info.device.startswith("cuda")
    assert engine.info.dtype == "bfloat16"
    assert resolve_dtype("auto", torch.device("cuda")) in (torch.bfloat16, torch.float16)
    rng = random.Random(7)
    cases = list(TRAINED_CLASSES.items())
    batch = [engine.preprocess(garment_image(color, rng)) for color, _ in cases]
    # Staged by the pool threads: uint8 pixels already on the GPU, normalized per batch.
    assert all(item.dtype == torch.uint8 and item.device.type == "cuda" for item in batch)
    outcomes = engine.run_batch(batch)
    assert len(outcomes) == len(cases)
    assert all(o.generated_tokens >= 1 for o in outcomes)
    # bf16 may flip a close call, but the trained model should still mostly be right.
    correct = sum(
        o.attributes == FashionAttributes.model_validate(target)
        for o, (_, target) in zip(outcomes, cases, strict=True)
    )
    assert correct >= len(cases) - 1, [o.text for o in outcomes]
    engine.warmup()
    engine.close()


def test_sticky_cuda_errors_are_recognised() -> None:
    from service.inference.engine import is_sticky_cuda_error

    assert is_sticky_cuda_error(
        RuntimeError("CUDA error: an illegal memory access was encountered")
    )
    assert is_sticky_cuda_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_sticky_cuda_error(RuntimeError("shape mismatch in matmul"))


def test_torch_threads_leave_cores_for_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(8)))
    assert cpu_threads_for_model(0, cpu) == 4  # half: the rest decode and serve HTTP
    assert cpu_threads_for_model(3, cpu) == 3  # FF_TORCH_THREADS wins
    assert cpu_threads_for_model(0, cuda) is None  # the GPU does the model's work
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0})
    assert cpu_threads_for_model(0, cpu) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert cpu_threads_for_model(0, cpu) is None  # the operator already chose


def test_load_engine_applies_the_thread_setting(demo_model_dir: Path) -> None:
    torch.set_num_threads(2)  # so the assertion below can fail on a one-core machine too
    load_engine(Settings(model_path=str(demo_model_dir), device="cpu", torch_threads=1))
    assert torch.get_num_threads() == 1  # the autouse fixture restores it afterwards


class RaisingDecoder:
    """Stands in for the engine's decoder and raises what a CUDA library would."""

    def __init__(self, inner: Decoder, error: Exception) -> None:
        self.mode = inner.mode
        self.grammar = inner.grammar
        self.error = error

    def decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[Decoded]:
        raise self.error


def demo_engine(demo_model_dir: Path) -> FlorenceEngine:
    return load_engine(
        Settings(
            model_path=str(demo_model_dir),
            device="cpu",
            constrained_decoding=False,
            max_new_tokens=8,
        )
    )


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
        "CUDA error: out of memory",
    ],
)
def test_library_allocation_failures_are_device_oom(demo_model_dir: Path, message: str) -> None:
    engine = demo_engine(demo_model_dir)
    image = engine.preprocess(garment_image((200, 30, 30), random.Random(1)))
    engine._decoder = RaisingDecoder(engine._decoder, RuntimeError(message))
    with pytest.raises(DeviceOutOfMemoryError):
        engine.run_batch([image, image])


def test_other_runtime_errors_still_fail_the_batch(demo_model_dir: Path) -> None:
    engine = demo_engine(demo_model_dir)
    image = engine.preprocess(garment_image((200, 30, 30), random.Random(1)))
    engine._decoder = RaisingDecoder(engine._decoder, RuntimeError("shape mismatch in matmul"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        engine.run_batch([image])


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB"), False),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED"), False),
    ],
)
def test_device_check_is_fatal_only_for_sticky_errors(
    demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, fatal: bool
) -> None:
    engine = demo_engine(demo_model_dir)
    # The check only touches CUDA devices: pretend, and make the touch itself fail.
    monkeypatch.setattr(engine, "_device", torch.device("cuda"))

    def failing_ones(*_: object, **__: object) -> torch.Tensor:
        raise error

    monkeypatch.setattr(torch, "ones", failing_ones)
    expected: type[Exception] = DeviceFatalError if fatal else type(error)
    with pytest.raises(expected) as caught:
        engine.check_device()
    assert isinstance(caught.value, DeviceFatalError) is fatal
