"""Resumable training state, in safetensors and JSON only (no pickles anywhere).

A checkpoint holds the trainable weights, the AdamW moments, the RNG states and the
trainer's counters. The data order is a function of (seed, epoch), so restoring these
is enough for a resumed run to continue exactly where the interrupted one stopped.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
from safetensors.torch import load_file, save_file

STATE_FILE: Final = "trainer_state.json"
TENSORS_FILE: Final = "state.safetensors"


@dataclass(slots=True)
class TrainerState:
    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches consumed
    best_val_loss: float | None = None
    best_step: int | None = None
    seconds: float = 0.0  # training time so far, over all resumed runs
    fingerprint: str = ""  # config + data version: a resume must not mix runs
    history: list[dict[str, float]] = field(default_factory=list)
    window: list[float] = field(default_factory=list)  # micro-batch losses since last eval


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def save_checkpoint(
    directory: Path,
    state: TrainerState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Write the checkpoint beside the old one, then swap: a crash keeps the old one."""
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()}
    optimizer_state = optimizer.state_dict()
    for index, slots in optimizer_state["state"].items():
        for slot, value in slots.items():
            tensors[f"optim.{index}.{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(staging / TENSORS_FILE))
    groups = [
        {k: v for k, v in g.items() if k != "params"} for g in optimizer_state["param_groups"]
    ]
    payload = {"trainer": asdict(state), "param_groups": groups}
    (staging / STATE_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)


def checkpoint_fingerprint(directory: Path) -> str:
    """The run a checkpoint belongs to (read before touching any tensor)."""
    payload: dict[str, Any] = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    return str(payload["trainer"]["fingerprint"])


def load_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> TrainerState:
    """Restore what :func:`save_checkpoint` wrote into ``model`` and ``optimizer``."""
    payload: dict[str, Any] = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    tensors = load_file(str(directory / TENSORS_FILE))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("model."):
                params[key.removeprefix("model.")].copy_(value)
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, slot = key.split(".", 2)
            moments.setdefault(int(index), {})[slot] = value
    template = optimizer.state_dict()
    groups = [
        {**saved, "params": current["params"]}
        for saved, current in zip(payload["param_groups"], template["param_groups"], strict=True)
    ]
    optimizer.load_state_dict({"state": moments, "param_groups": groups})
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return TrainerState(**payload["trainer"])
