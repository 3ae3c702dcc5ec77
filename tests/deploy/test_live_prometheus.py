"""A real Prometheus server (Debian's package) scraping the real service, both on 127.0.0.1.

The service is `fashion-florence serve` with the tiny demo model; Prometheus scrapes it every
second with the repository's alert rules loaded. The tests then ask Prometheus's HTTP API:
every metric family the service exports was ingested, the request counter moved with the
requests sent, the rules evaluate cleanly, and every Grafana panel's query runs and reads
metrics the live /metrics exports. Nothing here leaves the loopback interface.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.conftest import garment_image, jpeg_bytes
from tests.deploy.tools import (
    DASHBOARD,
    DCGM_METRICS,
    REPO,
    RULES,
    alert_rules,
    dashboard_queries,
    exported_names,
    metric_names,
    tool,
)
from tests.served import free_port

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 90.0
T = TypeVar("T")


def _eventually(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def service(demo_model_dir: Path) -> Iterator[str]:
    """`fashion-florence serve` on 127.0.0.1 with the demo model; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FF_")}
    env.update(
        FF_MODEL_PATH=str(demo_model_dir),
        FF_HOST="127.0.0.1",
        FF_PORT=str(port),
        FF_LOG_LEVEL="warning",
        FF_MAX_WAIT_MS="5",
        FF_CACHE_ENABLED="false",  # repeated images must reach the engine to be counted
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        _eventually(ready, START_TIMEOUT_S, "the service to become ready")
        yield base
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def prometheus(service: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """Prometheus on 127.0.0.1 scraping only the service, with the alert rules loaded."""
    binary = tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    target = service.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "fashion-florence", "static_configs": [{"targets": [target]}]}
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        cwd=work, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def ready() -> bool:
        assert process.poll() is None, (work / "prometheus.log").read_text()
        try:
            return client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    try:
        _eventually(ready, 30, "Prometheus to start")
        yield client
    finally:
        client.close()
        _stop(process)
        log.close()


def _query(client: httpx.Client, promql: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/query", params={"query": promql})
    body = response.json()
    assert response.status_code == 200, (promql, body)
    assert body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _scalar(client: httpx.Client, promql: str) -> float:
    result = _query(client, promql)
    return float(result[0]["value"][1]) if result else 0.0


def _extract(service: str, count: int) -> None:
    image = jpeg_bytes(garment_image((200, 30, 30), random.Random(3)))
    with httpx.Client(base_url=service, timeout=30) as client:
        for _ in range(count):
            response = client.post("/v1/extract", files={"image": ("g.jpg", image, "image/jpeg")})
            # The demo model has random weights: a valid answer or invalid_model_output.
            assert response.status_code in (200, 502), response.text


def test_prometheus_ingests_the_service_metrics_and_counts_requests(
    service: str, prometheus: httpx.Client
) -> None:
    _eventually(
        lambda: _scalar(prometheus, 'up{job="fashion-florence"}') == 1, 20, "the first scrape"
    )
    requests = 'sum(ff_requests_total{job="fashion-florence", route="/v1/extract"})'
    images = 'sum(ff_images_total{job="fashion-florence"})'
    before, images_before = _scalar(prometheus, requests), _scalar(prometheus, images)
    _extract(service, 3)
    after = _eventually(
        lambda: (v := _scalar(prometheus, requests)) >= before + 3 and v,
        20, "Prometheus to see the 3 requests",
    )  # fmt: skip
    assert after == before + 3
    assert _scalar(prometheus, images) >= images_before + 3
    # Every series name the live /metrics exports is in Prometheus.
    exposition = httpx.get(f"{service}/metrics", timeout=5).text
    live = {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }
    assert {"ff_requests_total", "ff_queue_depth", "ff_ready", "ff_engine_state"} <= live

    def ingested() -> set[str] | None:
        names = set(prometheus.get("/api/v1/label/__name__/values").json()["data"])
        return names if live <= names else None

    _eventually(ingested, 20, f"Prometheus to ingest {sorted(live)}")
    (info,) = _query(prometheus, 'ff_model_info{job="fashion-florence"}')
    assert info["metric"]["device"] == "cpu"
    assert _scalar(prometheus, 'ff_ready{job="fashion-florence"}') == 1
    assert _scalar(prometheus, 'ff_engine_state{job="fashion-florence", state="ready"}') == 1


def test_prometheus_loads_and_evaluates_the_alert_rules(prometheus: httpx.Client) -> None:
    expected = {rule["alert"] for rule in alert_rules()}

    def evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.get("/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = rules and all(r["health"] == "ok" and r["evaluationTime"] > 0 for r in rules)
        return rules if done else None

    rules = _eventually(evaluated, 20, "the rules to be evaluated")
    assert {rule["name"] for rule in rules} == expected
    firing = {
        a["labels"]["alertname"] for a in prometheus.get("/api/v1/alerts").json()["data"]["alerts"]
    }
    # A healthy, ready service: nothing about the engine or readiness is pending or firing.
    assert not firing & {"FashionFlorenceEngineDead", "FashionFlorenceModelLoadFailed",
                         "FashionFlorenceTargetDown"}  # fmt: skip


def test_every_dashboard_query_runs_on_metrics_the_service_exports(
    service: str, prometheus: httpx.Client
) -> None:
    _extract(service, 2)
    exported = exported_names(httpx.get(f"{service}/metrics", timeout=5).text)
    # Prometheus has scraped the requests (a rate needs two scrapes) before any panel's
    # query is judged by whether it returns data; an empty result is not data yet (this
    # test may run before any other in its worker, on a Prometheus that has not scraped).
    _eventually(
        lambda: _query(
            prometheus,
            'sum by (status) (rate(ff_requests_total{route=~"/v1/.*", instance=~".*"}[1m]))',
        ) or None,
        20, "request rates by status",
    )  # fmt: skip
    dashboard = json.loads(DASHBOARD.read_text())
    with_data: set[str] = set()
    for title, expr in dashboard_queries(dashboard):
        used = metric_names(expr)
        assert used, f"{title}: names no metric"
        assert used <= exported | DCGM_METRICS, f"{title}: {used - exported} not in /metrics"
        if used & DCGM_METRICS:
            continue  # dcgm-exporter's (compose gpu profile); not scraped here
        promql = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        if _query(prometheus, promql):  # real PromQL parse and evaluation
            with_data.add(title)
    assert "Queue depth and images in flight" in with_data
    assert "Ready replicas and engine state" in with_data


def test_container_healthcheck_script_reports_liveness(service: str, tmp_path: Path) -> None:
    script = REPO / "deploy" / "docker" / "healthcheck.py"
    port = service.rsplit(":", 1)[1]
    healthy = subprocess.run(
        [sys.executable, str(script)], env={**os.environ, "FF_PORT": port},
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert healthy.returncode == 0, healthy.stderr
    closed = subprocess.run(
        [sys.executable, str(script)], env={**os.environ, "FF_PORT": str(free_port())},
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert closed.returncode == 1
