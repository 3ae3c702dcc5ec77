"""Start each server of the comparison on 127.0.0.1, the same way, and count its model work.

Every server answers ``POST /v1/extract`` with the multipart field ``image``. A peer runs
in its own venv (:mod:`bench.peers.install`) and its own process group (its workers go
with it); it appends each batch its model ran to a counter file
(:mod:`bench.peers.model`), and ours is counted from its ``/metrics``. A server's
``snapshot()`` is therefore the same figure for all: images the model has run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.baselines import spawn_paper_demo
from bench.peers.install import ROOT, Venv
from bench.peers.model import COUNT_FILE_ENV, MODEL_DIR_ENV, read_counts
from bench.servers import (
    ServerHandle,
    engine_counters,
    free_port,
    peak_rss_bytes,
    spawn,
    spawn_service,
)

#: Peers that serve our engine (the same-engine comparison), in their run order.
SAME_ENGINE_PEERS: Final = ("litserve", "rayserve", "bentoml")
#: What an environment needs to find this project from a peer's venv, and to stay quiet.
QUIET: Final = {
    "PYTHONPATH": f"{ROOT}:{ROOT / 'clients' / 'python'}",
    "RAY_USAGE_STATS_ENABLED": "0",
    "BENTOML_DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
START_TIMEOUT_S: Final = 180.0


class PeerUnavailableError(RuntimeError):
    """The peer is not installed or does not import: skipped, with this reason."""


@dataclass(frozen=True)
class Snapshot:
    images: int
    valid: int
    batches: int
    seconds: float

    def minus(self, earlier: Snapshot) -> Snapshot:
        return Snapshot(self.images - earlier.images, self.valid - earlier.valid,
                        self.batches - earlier.batches, self.seconds - earlier.seconds)  # fmt: skip


@dataclass
class Served:
    """A running server: its handle, where its metrics are, how to count its model work."""

    name: str
    handle: ServerHandle
    metrics_url: str | None
    count_file: Path | None = None
    #: A 200 is a schema-valid answer (ours: constrained; the paper demo answers 422
    #: otherwise). A peer answers 200 with whatever text came out: its count file says.
    ok_means_valid: bool = False

    @property
    def base_url(self) -> str:
        return self.handle.base_url

    def snapshot(self) -> Snapshot:
        """What the model has done so far (ours: from /metrics; a peer: its count file)."""
        if self.metrics_url is None:
            return Snapshot(0, 0, 0, 0.0)  # the paper demo counts nothing
        if self.count_file is None:
            counters = engine_counters(self.base_url)
            images = int(counters["ff_batch_size_sum"])
            # Constrained decoding: every answer our engine gives is schema-valid.
            return Snapshot(images, images, int(counters["ff_batch_size_count"]),
                            counters["ff_inference_duration_seconds_sum"])  # fmt: skip
        rows = read_counts(self.count_file)
        return Snapshot(sum(r.images for r in rows), sum(r.valid for r in rows), len(rows),
                        sum(r.seconds for r in rows))  # fmt: skip

    def peak_rss_bytes(self) -> int:
        """Sum of the peak RSS of the server's process and all its descendants (its
        workers; an upper bound, since the peaks need not coincide). Read before stopping."""
        total = 0
        for pid in descendants(self.handle.pid):
            try:
                total += peak_rss_bytes(pid)
            except (OSError, RuntimeError):
                continue  # the process ended meanwhile
        return total

    def stop(self) -> None:
        self.handle.stop()
        if self.count_file is not None:
            self.count_file.unlink(missing_ok=True)


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _venv(peer: str) -> Venv:
    venv = Venv(peer)
    problem = venv.problem()
    if problem is not None:
        raise PeerUnavailableError(problem)
    return venv


def _count_file(name: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f"ff-peer-{name}-", suffix=".count")
    os.close(fd)
    return Path(path)


#: The ablation's name: ours with another number of API servers than the default.
ABLATION: Final = "ours-2-api-servers"


def start_ours(model_dir: Path, *, api_servers: int | None = None) -> Served:
    """Our service as shipped (``FF_API_SERVERS`` derived from the CPUs), or with
    ``api_servers`` API servers (the ablation, named ``ours-N-api-servers``)."""
    env = {} if api_servers is None else {"FF_API_SERVERS": str(api_servers)}
    handle = spawn_service(model_dir, env, timeout_s=START_TIMEOUT_S)
    name = "ours" if api_servers is None else f"ours-{api_servers}-api-servers"
    return Served(name, handle, f"{handle.base_url}/metrics", ok_means_valid=True)


def start_litserve(model_dir: Path, style: str = "same") -> Served:
    venv, port, counts = _venv("litserve"), free_port(), _count_file("litserve")
    argv = [str(venv.python), "-m", "bench.peers.litserve_peer", "--model-dir", str(model_dir)]
    argv += ["--port", str(port), "--style", style]
    env = {**QUIET, COUNT_FILE_ENV: str(counts)}
    handle = spawn(argv, env, port, ready_path="/health", timeout_s=START_TIMEOUT_S,
                   cwd=ROOT, group=True)  # fmt: skip
    return Served("litserve", handle, f"{handle.base_url}/metrics", counts)


def start_rayserve(model_dir: Path, style: str = "same") -> Served:
    venv, port, counts = _venv("rayserve"), free_port(), _count_file("rayserve")
    metrics_port = free_port()
    argv = [str(venv.python), "-m", "bench.peers.rayserve_peer", "--model-dir", str(model_dir)]
    argv += ["--port", str(port), "--style", style, "--metrics-port", str(metrics_port)]
    env = {**QUIET, COUNT_FILE_ENV: str(counts)}
    handle = spawn(argv, env, port, ready_path="/v1/extract", timeout_s=START_TIMEOUT_S,
                   cwd=ROOT, group=True)  # fmt: skip
    return Served("rayserve", handle, f"http://127.0.0.1:{metrics_port}/metrics", counts)


def start_bentoml(model_dir: Path, style: str = "same") -> Served:
    venv, port, counts = _venv("bentoml"), free_port(), _count_file("bentoml")
    argv = [str(venv.path / "bin" / "bentoml"), "serve", "bench.peers.bentoml_peer:Extractor"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = {**QUIET, COUNT_FILE_ENV: str(counts), MODEL_DIR_ENV: str(model_dir),
           "BENCH_PEER_STYLE": style}  # fmt: skip
    handle = spawn(argv, env, port, ready_path="/readyz", timeout_s=START_TIMEOUT_S,
                   cwd=ROOT, group=True)  # fmt: skip
    return Served("bentoml", handle, f"{handle.base_url}/metrics", counts)


def start_paper_demo(model_dir: Path) -> Served:
    """The floor: the paper's Space style, one request at a time, 3 beams."""
    handle = spawn_paper_demo(model_dir, 3, device="cpu", timeout_s=START_TIMEOUT_S)
    return Served("paper-demo", handle, None, ok_means_valid=True)


STARTERS: Final[dict[str, Callable[..., Served]]] = {
    "litserve": start_litserve,
    "rayserve": start_rayserve,
    "bentoml": start_bentoml,
}

#: Why PyTriton is not in the comparison (checked on this machine, see docs/BENCHMARKS.md).
PYTRITON_REASON: Final = (
    "nvidia-pytriton 0.7.0: the Triton server starts on loopback, but binding a Python "
    "model fails: the backend stub runs this interpreter's multiprocessing.resource_tracker "
    "(pyenv CPython 3.11.7), which calls _thread.RLock._recursion_count, absent from the "
    "stub's own libpython, so the model stays UNAVAILABLE; it also speaks only the KServe "
    "v2 tensor protocol, not a multipart upload"
)
