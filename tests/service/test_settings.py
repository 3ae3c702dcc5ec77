"""Settings from ``FF_*`` environment variables, their validation, and the CLI's answer to it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.cli import main
from service.settings import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FF_"):
            monkeypatch.delenv(name)


def test_defaults_without_environment() -> None:
    settings = Settings()
    assert settings.max_batch_size == 16
    assert settings.port == 8000
    assert settings.device == "auto"
    assert settings.model_path is None


def test_reads_ff_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("FF_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("FF_QUEUE_SIZE", "9")
    monkeypatch.setenv("FF_PORT", "9123")
    monkeypatch.setenv("FF_DEVICE", "cuda")
    monkeypatch.setenv("FF_DTYPE", "bfloat16")
    monkeypatch.setenv("FF_MODEL_PATH", "/models/florence")
    monkeypatch.setenv("FF_ADAPTER_PATH", "/models/adapter")
    monkeypatch.setenv("FF_VERIFY_CHECKSUMS", "false")
    monkeypatch.setenv("FF_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("FF_MAX_IMAGE_BYTES", "2048")
    monkeypatch.setenv("MAX_BATCH_SIZE", "99")  # no prefix: not ours
    settings = Settings()
    assert settings.max_batch_size == 7
    assert settings.max_wait_ms == 2.5
    assert settings.queue_size == 9
    assert settings.port == 9123
    assert settings.device == "cuda"
    assert settings.dtype == "bfloat16"
    assert settings.model_path == "/models/florence"
    assert settings.adapter_path == Path("/models/adapter")
    assert settings.verify_checksums is False
    assert (settings.max_body_bytes, settings.max_image_bytes) == (4096, 2048)


def test_constructor_arguments_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_PORT", "9123")
    assert Settings(port=9000).port == 9000


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"FF_MAX_BATCH_SIZE": "0"}, "max_batch_size"),
        ({"FF_MAX_WAIT_MS": "-1"}, "max_wait_ms"),
        ({"FF_PORT": "70000"}, "port"),
        ({"FF_DEVICE": "tpu"}, "device"),
        ({"FF_QUEUE_SIZE": "many"}, "queue_size"),
    ],
)
def test_invalid_value_names_the_field(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str
) -> None:
    for name, raw in env.items():
        monkeypatch.setenv(name, raw)
    with pytest.raises(ValidationError) as info:
        Settings()
    locations = [error["loc"] for error in info.value.errors()]
    assert any(field in loc for loc in locations), locations
    assert field in str(info.value)


def test_image_limit_above_body_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("FF_MAX_IMAGE_BYTES", "8192")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "FF_MAX_IMAGE_BYTES" in str(info.value)
    assert "FF_MAX_BODY_BYTES" in str(info.value)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.port = 1


def _no_server(settings: Settings) -> int:
    raise AssertionError("serve() must not start a server with an invalid configuration")


@pytest.mark.parametrize(
    ("env", "argv", "mentions"),
    [
        ({"FF_MAX_BATCH_SIZE": "0"}, ["serve"], "invalid FF_MAX_BATCH_SIZE"),
        ({"FF_DEVICE": "tpu"}, ["serve"], "invalid FF_DEVICE"),
        ({"FF_API_SERVERS": "0"}, ["serve"], "invalid FF_API_SERVERS"),
        (
            {"FF_MAX_BODY_BYTES": "4096", "FF_MAX_IMAGE_BYTES": "8192"},
            ["serve"],
            "FF_MAX_IMAGE_BYTES",
        ),
        ({}, ["serve", "--port", "70000"], "invalid FF_PORT"),
    ],
)
def test_cli_serve_with_invalid_configuration_exits_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    argv: list[str],
    mentions: str,
) -> None:
    import service.supervisor

    monkeypatch.setattr(service.supervisor, "serve", _no_server)
    for name, raw in env.items():
        monkeypatch.setenv(name, raw)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert mentions in captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_cli_serve_with_valid_configuration_starts_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The counterpart of the exit-2 tests: the same path does reach serve() when valid.
    import service.supervisor

    started: list[Settings] = []

    def serve(settings: Settings) -> int:
        started.append(settings)
        return 0

    monkeypatch.setattr(service.supervisor, "serve", serve)
    monkeypatch.setenv("FF_MAX_BATCH_SIZE", "3")
    assert main(["serve", "--port", "8123"]) == 0
    assert [(s.max_batch_size, s.port) for s in started] == [(3, 8123)]


def test_the_api_servers_follow_the_cpus_and_a_cgroup_quota(tmp_path: Path) -> None:
    from service.supervisor import cpus_available, default_api_servers

    assert [default_api_servers(n) for n in (1, 2, 3, 4, 16, 64)] == [1, 1, 1, 2, 8, 8]
    affinity = cpus_available(tmp_path)  # no cgroup file: the affinity alone
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus_available(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a limit of 1.5 CPUs
    assert cpus_available(tmp_path) == min(affinity, 1)


def test_run_dirs_of_dead_supervisors_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    from service.supervisor import OWNER_FILE, RUN_DIR_PREFIX, remove_orphaned_run_dirs

    dead, alive, foreign = (tmp_path / f"{RUN_DIR_PREFIX}{n}" for n in ("dead", "alive", "x"))
    for run_dir in (dead, alive, foreign):
        (run_dir / "metrics").mkdir(parents=True)
    (dead / OWNER_FILE).write_text("999999999")  # above any pid_max: no such process
    (alive / OWNER_FILE).write_text(str(os.getppid()))  # pytest's parent: running
    assert remove_orphaned_run_dirs(tmp_path) == [dead]
    assert not dead.exists()
    assert alive.is_dir()
    assert foreign.is_dir()  # no owner file: not ours to judge
