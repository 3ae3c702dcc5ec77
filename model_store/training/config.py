"""Hyperparameters of ``fashion-florence train`` (the paper's defaults) and their fingerprint."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: ``decoder`` / ``all-linear``: LoRA (see model_store.lora.LORA_PRESETS). ``full``: every
#: weight trained, no adapter: for small bases trained from scratch (the demo model).
Preset = Literal["decoder", "all-linear", "full"]
DeviceName = Literal["auto", "cpu", "cuda"]


class TrainConfig(BaseModel):
    """LoRA fine-tuning settings; defaults are the paper's (effective batch 16 = 4 x 4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Preset = "decoder"
    rank: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    epochs: float = Field(default=3.0, gt=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=4, ge=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="caps epochs when set")
    eval_every: int | None = Field(default=None, ge=1, description="steps; None = per epoch")
    val_generate: int = Field(
        default=256, ge=0, description="val items decoded at the end for field accuracies"
    )
    augment: bool = Field(
        default=False, description="flip, zoom and shift each training image at random"
    )
    seed: int = 0
    device: DeviceName = "auto"
    bf16: bool = Field(default=True, description="bf16 autocast on CUDA (fp32 on CPU)")

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def fingerprint(self, data_version: str, base: str) -> str:
        """Identifies a run; ``--resume`` refuses a checkpoint of a different one."""
        text = self.model_dump_json(exclude={"device", "val_generate"}) + data_version + base
        return hashlib.sha256(text.encode()).hexdigest()[:16]
