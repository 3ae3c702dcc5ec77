"""``model_manifest.json``: what a model directory holds and how to trust it.

Every model the project writes carries a manifest with the sha256 of each weight file, the
schema version its outputs follow and the task prompt it was trained with. Loading verifies
both, so a corrupted copy or a model trained for another schema is refused up front rather
than producing wrong answers in production.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from fashion_florence_client.schema import SCHEMA_VERSION
from model_store.profiles import PROJECT_PROFILE, OutputProfile

MANIFEST_NAME: Final = "model_manifest.json"
WEIGHT_SUFFIXES: Final = (".safetensors",)
FORBIDDEN_SUFFIXES: Final = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
DEFAULT_PROMPT: Final = "Extract the garment attributes as JSON."


class ManifestError(Exception):
    """A model directory cannot be trusted: missing, tampered with or for another schema."""


class ImportRecord(BaseModel):
    """Where an imported model came from, and what of it was not carried over (and why)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    layout: str = "florence2-original"
    weights: dict[str, str] = Field(description="source weight file -> sha256")
    adapter: str | None = None
    adapter_weights: dict[str, str] = Field(default_factory=dict)
    dropped: dict[str, str] = Field(description="source key -> why it has no native tensor")


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    base_model: str
    adapter: str | None = None
    schema_version: int
    prompt: str
    image_size: int = Field(gt=0)
    dtype: str
    weights: dict[str, str] = Field(description="file name -> sha256 hex digest")
    created_at: str
    #: The text the model writes (manifests from before profiles mean this project's).
    profile: OutputProfile = PROJECT_PROFILE
    imported: ImportRecord | None = None

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def weight_checksums(directory: Path) -> dict[str, str]:
    files = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ManifestError(f"{directory} holds no .safetensors weight file")
    return {p.name: sha256_file(p) for p in files}


def created_at_now() -> str:
    """ISO time; honours SOURCE_DATE_EPOCH so reproducible builds stay byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return moment.replace(microsecond=0).isoformat()


def read_manifest(directory: Path) -> ModelManifest:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{directory} has no {MANIFEST_NAME}")
    try:
        return ModelManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ManifestError(f"{path} is not a valid manifest: {exc}") from exc


def verify_directory(directory: Path, *, check_checksums: bool = True) -> ModelManifest:
    """Read the manifest and refuse the directory if anything does not match it."""
    manifest = read_manifest(directory)
    if manifest.schema_version != SCHEMA_VERSION:
        raise ManifestError(
            f"{directory} was built for output schema v{manifest.schema_version}, "
            f"this service speaks v{SCHEMA_VERSION}; retrain or use a matching release"
        )
    pickles = [p.name for p in directory.iterdir() if p.suffix in FORBIDDEN_SUFFIXES]
    if pickles:
        raise ManifestError(f"{directory} holds pickle-based weights {pickles}; safetensors only")
    if check_checksums:
        actual = weight_checksums(directory)
        if actual != manifest.weights:
            changed = sorted(set(actual.items()) ^ set(manifest.weights.items()))
            names = sorted({name for name, _ in changed})
            raise ManifestError(f"checksum mismatch in {directory} for {names}")
    return manifest


def new_manifest(
    directory: Path,
    *,
    name: str,
    base_model: str,
    adapter: str | None,
    prompt: str,
    image_size: int,
    dtype: str,
    created_at: str | None = None,
    profile: OutputProfile = PROJECT_PROFILE,
    imported: ImportRecord | None = None,
) -> ModelManifest:
    return ModelManifest(
        name=name,
        base_model=base_model,
        adapter=adapter,
        schema_version=SCHEMA_VERSION,
        prompt=prompt,
        image_size=image_size,
        dtype=dtype,
        weights=weight_checksums(directory),
        created_at=created_at or created_at_now(),
        profile=profile,
        imported=imported,
    )


TRAINING_MANIFEST_NAME: Final = "training_manifest.json"


class TrainingManifest(BaseModel):
    """What a training run (``fashion-florence train``) started from and how well it did.

    Written next to the adapter (or the fully fine-tuned model); ``model merge`` copies it
    next to the merged weights, so a served model can always be traced back to its data
    version, rules version and hyperparameters.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    base_model: str
    base_weights: dict[str, str] = Field(description="the base model's weight checksums")
    schema_version: int
    prompt: str
    image_size: int = Field(gt=0)
    preset: str
    target_modules: list[str] | str
    hyperparameters: dict[str, object]
    data: dict[str, object] = Field(description="data dir, data_version, rules_version, sizes")
    metrics: dict[str, object]
    training_seconds: float
    device: str
    weights: dict[str, str] = Field(description="adapter (or model) file name -> sha256")
    created_at: str

    def write(self, directory: Path) -> Path:
        path = directory / TRAINING_MANIFEST_NAME
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path


def read_training_manifest(directory: Path) -> TrainingManifest | None:
    """The run's manifest, or None for adapters and models trained elsewhere."""
    path = directory / TRAINING_MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return TrainingManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ManifestError(f"{path} is not a valid training manifest: {exc}") from exc
