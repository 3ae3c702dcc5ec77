"""Service configuration, read from the environment with the ``FF_`` prefix.

Every number carries its unit in its name; ranges are validated so a bad value fails at
start with a message naming the variable instead of misbehaving under load.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
_HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*$")  # FF_URL_ALLOWED_HOSTS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FF_", extra="forbid", frozen=True)

    # Model
    model_path: str | None = Field(
        default=None,
        description="Local directory (native Florence-2 format) or hub id; unset = demo model.",
    )
    adapter_path: Path | None = Field(
        default=None, description="Optional LoRA adapter directory merged into the model at load."
    )
    demo_model_dir: Path = Field(
        default=Path.home() / ".cache" / "fashion-florence" / "demo-model",
        description="Where the random-weight demo model is built (once) when no model_path "
        "is set and demo_model=random (the trained demo is served from the package).",
    )
    # --- model pipeline: which demo model FF_DEMO_MODEL_DIR holds ---------------
    demo_model: Literal["trained", "random"] = Field(
        default="trained",
        description="trained = the tiny Florence-2 trained by the model pipeline on real "
        "photos and synthetic garments, shipped in the package (verified, never trained at "
        "start); random = random weights (about a second; for plumbing checks only).",
    )
    # --- end model pipeline ---------------------------------------------------------------
    device: DeviceName = "auto"
    torch_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="torch intra-op threads for the model on CPU; 0 = half of the CPUs this "
        "process may use (the rest decode images and serve HTTP), unless OMP_NUM_THREADS is set.",
    )
    dtype: DtypeName = Field(
        default="auto",
        description="auto = bfloat16 on CUDA (float16 if bf16 unsupported), float32 on CPU.",
    )
    max_new_tokens: int = Field(
        default=256, ge=8, le=1024,
        description="Generation bound; constrained decoding needs the schema's longest output "
        "in tokens (216 for schema v1: a token per byte, plus <s> and </s>).",
    )  # fmt: skip
    verify_checksums: bool = True

    # Processes: the engine core (one, owns the device) and the API servers in front of it
    api_servers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="API-server processes (HTTP, auth, URL fetch, image decode and resize) "
        "sharing the listening socket in front of the one engine core; unset = derived from "
        "the CPUs this process may use (service.supervisor.default_api_servers).",
    )
    engine_restarts_max: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Engine-core deaths within engine_restart_window_s that are restarted; "
        "one more and liveness fails, so the pod restarts.",
    )
    engine_restart_window_s: float = Field(default=300.0, gt=0.0, le=86_400.0)

    # Decoding
    constrained_decoding: bool = Field(
        default=True,
        description="Mask every step to the schema-v1 grammar, so every output validates and "
        "carries confidence; false = plain greedy decoding, for diagnosis only.",
    )
    jump_forward: bool = Field(
        default=True,
        description="With constrained decoding: feed grammar-forced text in one decoder pass "
        "per step (same tokens as without, fewer passes).",
    )

    # Batching
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    batch_dispatch: Literal["idle", "wait"] = Field(
        default="idle",
        description="idle: the engine takes whatever is queued the moment it is free (under "
        "load batches still fill, because work queues while a batch runs); wait: a batch "
        "also waits up to max_wait_ms after its first image to fill.",
    )
    max_wait_ms: float = Field(default=5.0, ge=0.0, le=10_000.0)
    queue_size: int = Field(default=256, ge=1, le=1_000_000)
    scheduler: Literal["static", "iteration"] = Field(
        default="static",
        description="static: whole batches run to completion; iteration: images join and "
        "leave the running decode at every step (needs jump-forward decoding).",
    )
    max_running_rows: int = Field(
        default=64, ge=1, le=1024,
        description="Iteration scheduler: the most rows decoding at once.",
    )  # fmt: skip
    encoder_budget: int = Field(
        default=16, ge=1, le=1024,
        description="Iteration scheduler: the most arrivals encoded (and joined) per iteration.",
    )  # fmt: skip
    join_below_rows: int = Field(
        default=8, ge=0, le=1024,
        description="Iteration scheduler: while more rows than this are running, arrivals "
        "wait to join until a full encoder budget waits, join_max_wait_ms passes, or an "
        "interactive image waits with no interactive row running (fewer, fuller encoder calls).",
    )  # fmt: skip
    join_max_wait_ms: float = Field(
        default=200.0, ge=0.0, le=10_000.0,
        description="Iteration scheduler: the longest an arrival waits for the join gate.",
    )  # fmt: skip
    # Scheduling classes (X-Priority: interactive first, batch with a guaranteed share)
    batch_min_share: float = Field(
        default=0.25, ge=0.05, le=1.0,
        description="While interactive images wait, the least share of each batch's images "
        "that goes to waiting batch-class images, so a backfill is slowed, never starved.",
    )  # fmt: skip
    batch_admission_share: float = Field(
        default=0.75, ge=0.05, le=1.0,
        description="The most of the capacity (queue_size + max_batch_size) that batch-class "
        "images may hold; the rest stays free for interactive requests.",
    )  # fmt: skip
    preprocess_threads: int = Field(default=4, ge=1, le=256)
    gc_freeze: bool = Field(
        default=True,
        description="Once the model is loaded, exempt everything alive from the cyclic "
        "garbage collector (gc.freeze): full collections stop walking the model.",
    )

    # Intake limits
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=64 * 64)
    max_batch_items: int = Field(default=32, ge=1, le=1024)
    fetch_connect_timeout_ms: float = Field(default=2_000.0, gt=0.0, le=60_000.0)
    fetch_read_timeout_ms: float = Field(default=5_000.0, gt=0.0, le=120_000.0)
    fetch_total_timeout_ms: float = Field(default=10_000.0, gt=0.0, le=300_000.0)

    # Intake hardening: decoder and URL-fetch limits beyond the basic ones above.
    max_image_side_px: int = Field(default=16_384, ge=64, le=65_535)
    max_image_frames: int = Field(default=1_000, ge=1, le=100_000)
    decode_budget_ms: float = Field(default=5_000.0, gt=0.0, le=120_000.0)
    fetch_max_redirects: int = Field(default=3, ge=0, le=10)
    # Comma-separated exact hosts and "*.suffix" patterns (ASCII/punycode); empty = any host.
    url_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # Lets the fetcher dial 127.0.0.0/8 and ::1 so tests can use local servers. Never in
    # production: it is exactly the hole the address checks close.
    url_allow_loopback_for_tests: bool = False

    @field_validator("url_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            hosts = tuple(str(part).strip().lower().removesuffix(".") for part in value)
            bad = [host for host in hosts if not _HOST_PATTERN.match(host)]
            if bad:
                raise ValueError(f"not a host or *.suffix pattern: {bad}")
            return hosts
        return value

    # Lifecycle and protection
    request_timeout_ms: float = Field(
        default=30_000.0, ge=100.0, le=600_000.0,
        description="Default per-request deadline; X-Request-Timeout-Ms may only shorten it.",
    )  # fmt: skip
    drain_timeout_s: float = Field(
        default=30.0, ge=0.0, le=3_600.0,
        description="On SIGTERM, how long queued and in-flight work may take to finish.",
    )  # fmt: skip
    engine_stall_timeout_s: float = Field(
        default=120.0, ge=1.0, le=3_600.0,
        description="A batch running longer than this marks the engine dead (liveness 503).",
    )  # fmt: skip
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer keys for /v1/*; hashed at start, never logged.",
    )
    api_key_sha256: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated sha256 hex digests of accepted keys (for secret stores).",
    )

    @field_validator("api_keys", "api_key_sha256", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key_sha256")
    @classmethod
    def _hex_digests(cls, digests: list[str]) -> list[str]:
        for digest in digests:
            if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                raise ValueError("FF_API_KEY_SHA256 entries must be 64 hex characters")
        return [d.lower() for d in digests]

    # Server
    host: str = "0.0.0.0"  # a container service listens on all interfaces
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    ui_enabled: bool = Field(
        default=True,
        description="Serve the playground page at / (static files that call the public API "
        "with the same API keys, so it opens no new capability); false answers 404 there.",
    )

    # --- Result cache, logs and tracing ---
    cache_enabled: bool = Field(
        default=True,
        description="Answer repeated images (same bytes, same model revision) from memory.",
    )
    cache_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    cache_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024,
        description="Approximate memory the cached answers may take (they are ~1-2 KiB each).",
    )  # fmt: skip
    log_format: Literal["json", "plain"] = Field(
        default="json", description="json = one JSON object per line; plain = for humans."
    )
    tracing_enabled: bool = Field(
        default=False,
        description="OpenTelemetry spans (fetch, decode, queue, inference) if the optional "
        "opentelemetry packages are installed; exporting is the deployment's SDK's job.",
    )

    @model_validator(mode="after")
    def _limits_consistent(self) -> Settings:
        if self.max_image_bytes > self.max_body_bytes:
            raise ValueError("FF_MAX_IMAGE_BYTES must not exceed FF_MAX_BODY_BYTES")
        if self.fetch_total_timeout_ms < self.fetch_connect_timeout_ms:
            raise ValueError(
                "FF_FETCH_TOTAL_TIMEOUT_MS must be at least FF_FETCH_CONNECT_TIMEOUT_MS"
            )
        return self


def describe_invalid(exc: ValidationError) -> list[str]:
    """One line per invalid setting, named as the user set it (``FF_MAX_BATCH_SIZE``, not
    ``max_batch_size``), with what is wrong and the value given."""
    lines = []
    for error in exc.errors():
        fields = [str(part) for part in error["loc"] if isinstance(part, str)]
        name = f"FF_{fields[0].upper()}" if fields else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        given = error.get("input")
        shown = "" if not fields or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"invalid {name}: {message}{shown}")
    return lines
