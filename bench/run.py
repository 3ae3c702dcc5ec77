"""Offline engine vs. service over loopback, on the demo model.

    python -m bench.run [--requests N] [--concurrency C] [--batch-size B] [--model-dir DIR]

Builds the demo model and fine-tunes it on the synthetic colour classes (so every image
decodes a full ~30-token JSON, as a real model would), then measures:
  1. offline engine throughput at batch 1 and at the service's max batch size;
  2. cold start of ``fashion-florence serve`` to a 200 from /readyz;
  3. the service under C concurrent closed-loop clients over 127.0.0.1 (bounded run);
and prints a Markdown table, the line ``service/offline: <ratio>``, and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.load import Tally, closed_loop, percentile_ms
from bench.load import run as load_run
from model_store.synthetic import COLOR_CLASSES, block_garment

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Figures:
    machine: str
    torch_threads: int
    images: int
    offline_batch1_img_s: float
    offline_batched_img_s: float
    batch_size: int
    tokens_per_image: float
    cold_start_s: float
    concurrency: int
    requests: int
    ok: int
    errors: int
    service_img_s: float
    service_mean_batch: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def ratio(self) -> float:
        return self.service_img_s / self.offline_batched_img_s


def _jpegs(count: int) -> list[bytes]:
    rng = random.Random(42)
    colors = list(COLOR_CLASSES)
    payloads = []
    for index in range(count):
        buffer = io.BytesIO()
        block_garment(colors[index % len(colors)], rng, size=256).save(buffer, "JPEG", quality=90)
        payloads.append(buffer.getvalue())
    return payloads


def prepare_model(work: Path) -> Path:
    from model_store.build import build_model
    from model_store.train import train_color_demo

    build_model("demo", work / "demo")
    train_color_demo(work / "demo", work / "trained", steps=150)
    return work / "trained"


def offline(model_dir: Path, payloads: list[bytes], batch_size: int) -> tuple[float, float, float]:
    from PIL import Image

    from service.engine import load_engine
    from service.settings import Settings

    engine = load_engine(Settings(model_path=str(model_dir)))
    engine.warmup()
    prepared = [engine.preprocess(Image.open(io.BytesIO(p)).convert("RGB")) for p in payloads]

    def throughput(size: int) -> tuple[float, float]:
        started = time.perf_counter()
        tokens = 0
        for start in range(0, len(prepared), size):
            tokens += sum(
                o.generated_tokens for o in engine.run_batch(prepared[start : start + size])
            )
        return len(prepared) / (time.perf_counter() - started), tokens / len(prepared)

    single, _ = throughput(1)
    batched, tokens = throughput(batch_size)
    engine.close()
    return single, batched, tokens


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model_dir: Path, batch_size: int) -> tuple[subprocess.Popen[bytes], str, float]:
    port = _free_port()
    env = {
        **os.environ,
        "FF_MODEL_PATH": str(model_dir),
        "FF_HOST": "127.0.0.1",
        "FF_PORT": str(port),
        "FF_MAX_BATCH_SIZE": str(batch_size),
        "FF_LOG_LEVEL": "warning",
    }
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=2) as client:
        while time.perf_counter() - started < 120:
            try:
                if client.get("/readyz").status_code == 200:
                    return process, base, time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("server did not become ready within 120 s")


async def service_load(base: str, payloads: list[bytes], args: argparse.Namespace) -> Tally:
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        return await closed_loop(
            client, payloads, args.concurrency, args.requests, args.time_limit_s
        )


def scrape_mean_batch(base: str) -> float:
    """Mean engine batch size the service formed, from its own /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=10).text
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in {"ff_batch_size_sum", "ff_batch_size_count"}
    }
    return values["ff_batch_size_sum"] / max(values["ff_batch_size_count"], 1.0)


def report(fig: Figures) -> str:
    rows = [
        ("offline engine, batch 1", f"{fig.offline_batch1_img_s:.1f} img/s", ""),
        (
            f"offline engine, batch {fig.batch_size}",
            f"{fig.offline_batched_img_s:.1f} img/s",
            f"{fig.tokens_per_image:.1f} tokens/img",
        ),
        (
            f"service, {fig.concurrency} clients",
            f"{fig.service_img_s:.1f} img/s",
            f"{fig.ok} ok / {fig.errors} errors of {fig.requests}; mean batch {fig.service_mean_batch:.1f}",
        ),
        (
            "service latency p50 / p90 / p99",
            f"{fig.p50_ms:.0f} / {fig.p90_ms:.0f} / {fig.p99_ms:.0f} ms",
            "",
        ),
        ("cold start to /readyz 200", f"{fig.cold_start_s:.2f} s", "process spawn to ready"),
    ]
    lines = [
        f"machine: {fig.machine}, torch threads {fig.torch_threads}",
        "",
        "| measurement | value | note |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"service/offline: {fig.ratio:.3f}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--time-limit-s", type=float, default=180.0)
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="skip building; use this model"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cpu-demo.json")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="ff-bench-") as work:
        model_dir = args.model_dir or prepare_model(Path(work))
        payloads = _jpegs(args.images)
        single, batched, tokens = offline(model_dir, payloads, args.batch_size)
        process, base, cold = start_server(model_dir, args.batch_size)
        try:
            tally = asyncio.run(service_load(base, payloads, args))
            mean_batch = scrape_mean_batch(base)
            # Overload: an open-loop arrival rate at 3x what the service just sustained.
            overload_rate = 3 * tally.by_status.get(200, 0) / max(tally.wall_s, 1e-9)
            overload = asyncio.run(
                load_run(
                    base, "open", args.concurrency, overload_rate, int(overload_rate * 10), 20.0
                )
            )
        finally:
            process.terminate()
            process.wait(timeout=60)
    latencies = tally.latencies_ok
    figures = Figures(
        machine=f"{platform.machine()} {os.cpu_count()} cpu, {platform.python_implementation()} {platform.python_version()}, torch {torch.__version__}",
        torch_threads=torch.get_num_threads(),
        images=len(payloads),
        offline_batch1_img_s=single,
        offline_batched_img_s=batched,
        batch_size=args.batch_size,
        tokens_per_image=tokens,
        cold_start_s=cold,
        concurrency=args.concurrency,
        requests=tally.sent,
        ok=len(latencies),
        errors=tally.sent - len(latencies),
        service_img_s=len(latencies) / tally.wall_s,
        service_mean_batch=mean_batch,
        p50_ms=percentile_ms(latencies, 0.50),
        p90_ms=percentile_ms(latencies, 0.90),
        p99_ms=percentile_ms(latencies, 0.99),
    )
    print(report(figures))
    print(f"\noverload at {overload_rate:.0f} req/s (3x sustained), open loop:")
    print(json.dumps(overload, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {**asdict(figures), "service_over_offline": figures.ratio, "overload": overload}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
