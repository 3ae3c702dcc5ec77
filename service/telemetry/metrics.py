"""Prometheus metrics, one registry per app (no global state, so tests and apps don't clash).

Labels stay low-cardinality: route templates (never raw paths), status codes, error codes.

Under ``fashion-florence serve`` the service is several processes, and the supervisor
sets ``PROMETHEUS_MULTIPROC_DIR`` for all of them: each process writes what it observes
(the API servers their requests, the engine core its queue and batches) and any API
server's ``/metrics`` reads them all, so every family is counted once for the whole
service. Each gauge says how the processes' values combine (``multiprocess_mode``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from fashion_florence_client.problems import ErrorCode
from fashion_florence_client.protocol import Priority
from service.backend import ModelInfo
from service.telemetry.process_metrics import ServiceProcessCollector
from service.telemetry.record import RequestRecord

#: Set by the supervisor for every process of a served service (prometheus_client's name).
MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
LATENCY_BUCKETS_S: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
QUEUE_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
TOKEN_BUCKETS: Final = (1, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)
#: Admission's refusals (service.serving.admission) and where an expired image is dropped
#: (service.serving.extraction: "intake"; service.engine_core.batching: the other two).
REJECTION_REASONS: Final = (ErrorCode.QUEUE_FULL.value, ErrorCode.DRAINING.value)
DEADLINE_STAGES: Final = ("intake", "queued", "waiting for the engine", "decoding")


@dataclass(frozen=True, slots=True)
class CacheMetrics:
    hits: Counter
    misses: Counter
    evictions: Counter
    entries: Gauge
    size_bytes: Gauge


class ServiceMetrics:
    """All metric families of the service; also the batcher's observer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # ``*_created`` series would double the series count and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        self.service_pid = os.getpid()  # an API server is told its supervisor's
        r = self.registry
        self.requests = Counter(
            "ff_requests",
            "HTTP requests by route template and status",
            ["route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "ff_request_duration_seconds", "HTTP request latency", ["route"],
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.queue_depth_gauge = Gauge(
            "ff_queue_depth", "Images waiting for a batch", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        # Per scheduling class (fashion_florence_client.protocol.Priority): two series each.
        self.images_waiting = Gauge(
            "ff_images_waiting", "Images waiting in the engine core, by scheduling class",
            ["class"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.images_running = Gauge(
            "ff_images_running", "Images in the engine's running batch, by scheduling class",
            ["class"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        # The iteration-level scheduler (service.engine_core.iteration)
        self.rows_running = Gauge(
            "ff_rows_running", "Rows in the running decode (iteration scheduler)",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.iteration_seconds = Histogram(
            "ff_iteration_duration_seconds",
            "Engine wall time per scheduler iteration (a join, then up to 16 decoder steps)",
            buckets=QUEUE_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.encoder_batch = Histogram(
            "ff_encoder_batch_size", "Images encoded (rows joined) per iteration that encoded",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait_seconds = Histogram(
            "ff_queue_wait_seconds",
            "Time from enqueue to batch start",
            buckets=QUEUE_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "ff_batch_size", "Images per engine batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "ff_inference_duration_seconds",
            "Engine wall time per batch",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.images = Counter("ff_images", "Images processed by the engine", registry=r)
        # Tokens, not decoder passes: jump-forward decoding writes several tokens per pass.
        self.generated_tokens = Histogram(
            "ff_generated_tokens", "Tokens generated per image (the answer's length)",
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "ff_errors", "Errors returned, by stable error code", ["code"], registry=r
        )
        self.model_info = Gauge(
            "ff_model_info", "The loaded model (value is always 1)",
            ["name", "revision", "device", "dtype"], registry=r,
            multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.ready = Gauge(
            "ff_ready", "1 when the model is loaded and warmed up", registry=r,
            multiprocess_mode="livemax",
        )  # fmt: skip
        # Reasons are a fixed set (service.intake.fetch.FetchFailure): low cardinality.
        self.url_fetch_failures = Counter(
            "ff_url_fetch_failures", "URL fetches refused or failed, by internal reason",
            ["reason"], registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "ff_rejections", "Work refused at admission, by reason", ["reason"], registry=r
        )
        self.deadline_drops = Counter(
            "ff_deadline_drops", "Images dropped unrun because their deadline passed", ["stage"],
            registry=r,
        )  # fmt: skip
        self.cancellations = Counter(
            "ff_cancellations", "Images skipped because the client went away", registry=r
        )
        self.oom_splits = Counter(
            "ff_oom_splits", "Batches split in half after device out-of-memory", registry=r
        )
        self.engine_state = Gauge(
            "ff_engine_state", "1 for the engine's current state", ["state"], registry=r,
            multiprocess_mode="livemostrecent",
        )  # fmt: skip
        # Named for requests (kept: dashboards use it), but it counts images: a batch request
        # holds one per item.
        self.in_flight = Gauge(
            "ff_in_flight_requests",
            "Images (not requests: a batch counts each item) admitted and not yet answered",
            registry=r,
            multiprocess_mode="livesum",
        )
        # Result cache (service.engine_core.cache)
        self.cache = CacheMetrics(
            hits=Counter("ff_cache_hits", "Images answered from the result cache", registry=r),
            misses=Counter("ff_cache_misses", "Result cache lookups that missed", registry=r),
            evictions=Counter(
                "ff_cache_evictions", "Entries evicted by the cache's bounds", registry=r
            ),
            entries=Gauge(
                "ff_cache_entries",
                "Entries in the result cache",
                registry=r,
                multiprocess_mode="livesum",
            ),
            size_bytes=Gauge(
                "ff_cache_size_bytes",
                "Estimated memory of the result cache",
                registry=r,
                multiprocess_mode="livesum",
            ),
        )

        # Every known series exists from the start, so rate() reads 0, not "no data" (in
        # multiprocess mode a family with no series is not exported at all).
        for code in ErrorCode:
            self.errors.labels(code.value)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for stage in DEADLINE_STAGES:
            self.deadline_drops.labels(stage)
        for priority in Priority:
            self.images_waiting.labels(priority.value)
            self.images_running.labels(priority.value)

    # BatchObserver protocol (service.engine_core.batching)
    def queue_depth(self, depth: int) -> None:
        self.queue_depth_gauge.set(depth)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def batch_run(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)
        self.images.inc(size)

    def deadline_drop(self, stage: str) -> None:
        self.deadline_drops.labels(stage).inc()

    def cancelled_skip(self) -> None:
        self.cancellations.inc()

    def iteration(self, seconds: float, encoded: int, running: int) -> None:
        self.iteration_seconds.observe(seconds)
        self.rows_running.set(running)
        if encoded:
            self.encoder_batch.observe(encoded)
            self.images.inc(encoded)

    def scheduled(self, waiting: Mapping[Priority, int], running: Mapping[Priority, int]) -> None:
        for priority, count in waiting.items():
            self.images_waiting.labels(priority.value).set(count)
        for priority, count in running.items():
            self.images_running.labels(priority.value).set(count)

    def set_engine_state(self, state: str, all_states: tuple[str, ...]) -> None:
        for name in all_states:
            self.engine_state.labels(name).set(1 if name == state else 0)

    def url_fetch_failed(self, reason: str) -> None:
        self.url_fetch_failures.labels(reason).inc()

    def observe_request(self, record: RequestRecord) -> None:
        """Count one answered request: the one place requests, latency and errors are
        counted (the batch items' codes too: each is an error returned, inside a 200)."""
        self.requests.labels(record.route, str(record.status)).inc()
        if record.latency_s is not None:
            self.request_latency.labels(record.route).observe(record.latency_s)
        for code in ([record.error_code] if record.error_code else []) + record.item_errors:
            self.errors.labels(code).inc()

    def set_model(self, info: ModelInfo) -> None:
        self.model_info.labels(info.name, info.revision, info.device, info.dtype).set(1)

    def render(self) -> bytes:
        """The exposition: every process's metrics when the service runs as several
        (multiprocess mode), else this registry's; ``process_*`` for all of them."""
        directory = os.environ.get(MULTIPROC_DIR_ENV)
        if directory:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        else:
            registry = CollectorRegistry()
            registry.register(_Registered(self.registry))
        registry.register(ServiceProcessCollector(self.service_pid))
        return generate_latest(registry)


class _Registered(Collector):
    """Another registry's metrics, as one collector (so the process figures can join it
    without registering them in the app's own registry for good)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()
