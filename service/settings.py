"""Service configuration, read from the environment with the ``FF_`` prefix.

Every number carries its unit in its name; ranges are validated so a bad value fails at
start with a message naming the variable instead of misbehaving under load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]


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
        description="Where the demo model is built (once) when no model_path is set.",
    )
    device: DeviceName = "auto"
    dtype: DtypeName = Field(
        default="auto",
        description="auto = bfloat16 on CUDA (float16 if bf16 unsupported), float32 on CPU.",
    )
    max_new_tokens: int = Field(default=96, ge=8, le=1024)
    verify_checksums: bool = True

    # Batching
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    max_wait_ms: float = Field(default=5.0, ge=0.0, le=10_000.0)
    queue_size: int = Field(default=256, ge=1, le=1_000_000)
    preprocess_threads: int = Field(default=4, ge=1, le=256)

    # Intake limits
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=64 * 64)
    max_batch_items: int = Field(default=32, ge=1, le=1024)
    fetch_connect_timeout_ms: float = Field(default=2_000.0, gt=0.0, le=60_000.0)
    fetch_read_timeout_ms: float = Field(default=5_000.0, gt=0.0, le=120_000.0)
    fetch_total_timeout_ms: float = Field(default=10_000.0, gt=0.0, le=300_000.0)

    # Server
    host: str = "0.0.0.0"  # a container service listens on all interfaces
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _limits_consistent(self) -> Settings:
        if self.max_image_bytes > self.max_body_bytes:
            raise ValueError("FF_MAX_IMAGE_BYTES must not exceed FF_MAX_BODY_BYTES")
        if self.fetch_total_timeout_ms < self.fetch_connect_timeout_ms:
            raise ValueError(
                "FF_FETCH_TOTAL_TIMEOUT_MS must be at least FF_FETCH_CONNECT_TIMEOUT_MS"
            )
        return self
