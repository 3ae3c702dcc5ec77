"""Manifest verification refuses untrusted model directories; loading fails fast and clearly."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch

from model_store.loading import ModelLoadError, load_model
from model_store.manifest import (
    MANIFEST_NAME,
    ManifestError,
    ModelManifest,
    read_manifest,
    sha256_file,
    verify_directory,
)


@pytest.fixture
def model_copy(demo_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the demo model that a test may damage."""
    return Path(shutil.copytree(demo_model_dir, tmp_path / "model"))


def edit_manifest(directory: Path, **changes: Any) -> None:
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_pristine_copy_verifies_and_loads(model_copy: Path) -> None:
    manifest = verify_directory(model_copy)
    assert manifest.weights == {"model.safetensors": sha256_file(model_copy / "model.safetensors")}
    loaded = load_model(str(model_copy))
    assert loaded.manifest == manifest
    assert loaded.source == str(model_copy)
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert not loaded.model.training


def test_tampered_weights_are_refused(model_copy: Path) -> None:
    flip_byte(model_copy / "model.safetensors")
    with pytest.raises(ManifestError, match=r"checksum mismatch .*model\.safetensors"):
        verify_directory(model_copy)
    with pytest.raises(ModelLoadError, match=r"checksum mismatch .*model\.safetensors"):
        load_model(str(model_copy))
    # Opting out of checksums (e.g. a trusted read-only mount) still loads the file.
    load_model(str(model_copy), verify_checksums=False)


def test_extra_weight_file_is_refused(model_copy: Path) -> None:
    shutil.copy(model_copy / "model.safetensors", model_copy / "extra.safetensors")
    with pytest.raises(ManifestError, match=r"checksum mismatch .*extra\.safetensors"):
        verify_directory(model_copy)


def test_missing_weights_are_refused(model_copy: Path) -> None:
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ManifestError, match=r"no \.safetensors"):
        verify_directory(model_copy)
    with pytest.raises(ModelLoadError, match=r"no \.safetensors"):
        load_model(str(model_copy))


def test_schema_version_mismatch_names_both_versions(model_copy: Path) -> None:
    edit_manifest(model_copy, schema_version=2)
    with pytest.raises(ManifestError) as caught:
        verify_directory(model_copy)
    message = str(caught.value)
    assert "schema v2" in message
    assert "v1" in message.replace("schema v2", "")
    with pytest.raises(ModelLoadError, match=r"v2.*v1"):
        load_model(str(model_copy))
    # The version is checked even when checksums are skipped.
    with pytest.raises(ModelLoadError, match=r"v2.*v1"):
        load_model(str(model_copy), verify_checksums=False)


def test_missing_manifest_is_refused(model_copy: Path) -> None:
    (model_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError, match=f"has no {MANIFEST_NAME}"):
        verify_directory(model_copy)
    # Deleting the manifest must not be a way around checksum verification.
    with pytest.raises(ModelLoadError, match=MANIFEST_NAME):
        load_model(str(model_copy))


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "adapter.pt", "weights.ckpt"])
def test_stray_pickle_file_is_refused(model_copy: Path, pickle_name: str) -> None:
    (model_copy / pickle_name).write_bytes(b"\x80\x04\x95not really a pickle")
    with pytest.raises(ManifestError, match=rf"pickle-based weights \['{pickle_name}'\]"):
        verify_directory(model_copy)
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load_model(str(model_copy))
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load_model(str(model_copy), verify_checksums=False)


@pytest.mark.parametrize(
    "content",
    ["not json", "{}", '{"name": "x"}'],
)
def test_invalid_manifest_is_refused(model_copy: Path, content: str) -> None:
    (model_copy / MANIFEST_NAME).write_text(content, encoding="utf-8")
    with pytest.raises(ManifestError, match="not a valid manifest"):
        verify_directory(model_copy)
    with pytest.raises(ModelLoadError, match="not a valid manifest"):
        load_model(str(model_copy))


def test_manifest_with_unknown_key_is_refused(model_copy: Path) -> None:
    edit_manifest(model_copy, unexpected="value")
    with pytest.raises(ManifestError, match="not a valid manifest"):
        read_manifest(model_copy)


def test_manifest_file_round_trips(model_copy: Path) -> None:
    manifest = read_manifest(model_copy)
    manifest.write(model_copy)
    assert ModelManifest.model_validate_json((model_copy / MANIFEST_NAME).read_text()) == manifest
    verify_directory(model_copy)


@pytest.mark.parametrize("relative", [False, True])
def test_nonexistent_local_path_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    source = "./no-such-model" if relative else str(tmp_path / "no-such-model")
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"no-such-model") as caught:
        load_model(source)
    assert time.monotonic() - started < 2.0
    assert "directory" in str(caught.value)


def test_regular_file_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_model(str(path))


def test_home_relative_path_is_expanded(
    model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = load_model("~/model")
    assert loaded.manifest == verify_directory(model_copy)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and block) every attempt to resolve or connect a socket."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_hub_id_offline_fails_fast_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_network: list[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import: patch the cached flag too.
    pass
    # An empty cache, so the result does not depend on what this machine downloaded.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)  # so the hub id cannot resolve to a local directory
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        load_model("florence-community/Florence-2-base")
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert elapsed < 10.0
    assert "florence-community/Florence-2-base" in message
    assert "offline" in message.lower()
    assert "HF_HUB_OFFLINE" in message
    assert no_network == []


def test_missing_manifest_loads_unverified_only_when_opted_out(model_copy: Path) -> None:
    (model_copy / MANIFEST_NAME).unlink()
    loaded = load_model(str(model_copy), verify_checksums=False)
    assert loaded.manifest.weights == {}  # nothing was verified, and the manifest says so
    assert loaded.manifest.schema_version == 1
    assert loaded.manifest.image_size == 128
