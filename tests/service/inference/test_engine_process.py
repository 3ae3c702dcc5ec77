"""The engine in its own process (``FF_ENGINE_PROCESS``): the real tiny Florence-2 in a
spawned child, fed through shared memory; the same answers as in process, failures with
their meaning kept, torch only in the child, and the served path end to end."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import httpx
import pytest

from service.backend import DeviceFatalError
from service.inference.engine import load_engine
from service.inference.engine_process import (
    EngineProcess,
    EngineProcessError,
    start_engine_process,
)
from service.settings import Settings
from tests.conftest import TRAINED_CLASSES, garment_image, jpeg_bytes
from tests.served import spawn_serve, wait_ready

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def separate(trained_model_dir: Path) -> Iterator[EngineProcess]:
    # A capacity of 4 images, so a batch of 6 crosses the shared memory twice.
    engine = start_engine_process(
        Settings(model_path=str(trained_model_dir), device="cpu", max_batch_size=4)
    )
    yield engine
    engine.close()


def test_the_separate_engine_answers_what_the_engine_in_process_does(
    separate: EngineProcess, trained_model_dir: Path
) -> None:
    rng = random.Random(3)
    images = [garment_image(rgb, rng) for rgb in list(TRAINED_CLASSES) * 2]
    in_process = load_engine(Settings(model_path=str(trained_model_dir), device="cpu"))

    apart = separate.run_batch([separate.preprocess(image) for image in images])
    here = in_process.run_batch([in_process.preprocess(image) for image in images])

    assert len(apart) == 6
    assert [o.text for o in apart] == [o.text for o in here]
    assert all(o.ok for o in apart)
    for a, b in zip(apart, here, strict=True):
        assert a.confidence is not None
        assert b.confidence is not None
        assert a.confidence.category == pytest.approx(b.confidence.category, abs=1e-5)
    assert separate.info == in_process.info


def test_a_killed_engine_process_is_a_fatal_device_error(demo_model_dir: Path) -> None:
    engine = start_engine_process(Settings(model_path=str(demo_model_dir), device="cpu"))
    memory_name = engine._memory.name
    gray = engine.preprocess(garment_image((128, 128, 128), random.Random(0)))
    engine.check_device()  # alive

    assert engine.pid is not None
    os.kill(engine.pid, signal.SIGKILL)
    engine._process.join(timeout=10)

    with pytest.raises(DeviceFatalError, match="exit code -9"):
        engine.check_device()
    with pytest.raises(DeviceFatalError, match="engine process ended"):
        engine.run_batch([gray])
    engine.close()  # does not hang on a dead process, and frees the shared memory
    with pytest.raises(FileNotFoundError):
        SharedMemory(name=memory_name)


def test_a_model_that_does_not_load_fails_the_start_with_the_loader_s_reason(
    tmp_path: Path,
) -> None:
    with pytest.raises(EngineProcessError, match=r"failed to load: .*missing"):
        start_engine_process(Settings(model_path=str(tmp_path / "missing"), device="cpu"))


def _mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _spawned_children(pid: int) -> list[int]:
    """multiprocessing's spawned children (not its resource tracker, also a child)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
def test_served_with_the_engine_apart_torch_stays_out_of_the_server(
    trained_model_dir: Path,
) -> None:
    server, base_url = spawn_serve(
        {
            "FF_MODEL_PATH": str(trained_model_dir),
            "FF_LOG_LEVEL": "warning",
            "FF_ENGINE_PROCESS": "true",
        }
    )
    try:
        with httpx.Client(base_url=base_url, timeout=5.0) as client:
            wait_ready(server, client, timeout_s=90)
            rgb, expected = next(iter(TRAINED_CLASSES.items()))
            upload = jpeg_bytes(garment_image(rgb, random.Random(123)))
            answer = client.post("/v1/extract", files={"image": ("g.jpg", upload, "image/jpeg")})
            assert answer.status_code == 200, answer.text
            assert answer.json()["attributes"] == expected

        (child,) = _spawned_children(server.pid)
        assert "libtorch" not in _mapped_libraries(server.pid)
        assert "libtorch" in _mapped_libraries(child)

        server.send_signal(signal.SIGTERM)  # a graceful stop ends the engine process too
        assert server.wait(timeout=30) == 0
        assert (
            not Path(f"/proc/{child}").exists()
            or "zombie" in Path(f"/proc/{child}/status").read_text()
        )
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
