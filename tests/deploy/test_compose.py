"""docker-compose.yml against the Compose specification's JSON schema (the copy that the
check-jsonschema package ships: `--builtin-schema vendor.compose-spec`), plus what the schema
cannot know: profiles, the GPU reservation, the drain-aligned stop, mounts that exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import REPO, run, tool

COMPOSE = REPO / "docker-compose.yml"


def _check(path: Path) -> tuple[int, str]:
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the << merges
    return data


def test_compose_file_matches_the_compose_spec_schema() -> None:
    code, output = _check(COMPOSE)
    assert code == 0, output


def test_the_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    profiles: [gpu]\n", "    profile: gpu\n", 1))
    code, output = _check(broken)
    assert code != 0, output
    assert "profile" in output


def test_cpu_is_the_default_profile_and_gpu_reserves_one_device(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["florence"]["profiles"] == ["cpu"]
    assert services["florence-gpu"]["profiles"] == ["gpu"]
    assert services["florence"]["environment"]["FF_DEVICE"] == "cpu"
    assert services["florence-gpu"]["environment"]["FF_DEVICE"] == "cuda"
    assert "FF_MODEL_PATH" not in {k for k, v in services["florence"]["environment"].items() if v}
    assert services["florence"]["build"]["args"]["VARIANT"] == "cpu"
    assert services["florence-gpu"]["build"]["args"]["VARIANT"] == "gpu"
    (device,) = services["florence-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert "deploy" not in services["florence"]
    # `docker compose up` with no flags runs the cpu profile (compose reads .env).
    dotenv = (REPO / ".env").read_text()
    assert re.search(r"^COMPOSE_PROFILES=cpu$", dotenv, re.MULTILINE)
    # Monitoring runs in every profile.
    assert "profiles" not in services["prometheus"]
    assert "profiles" not in services["grafana"]


def test_service_containers_are_hardened_and_stop_after_the_drain(compose: dict[str, Any]) -> None:
    for name in ("florence", "florence-gpu"):
        service = compose["services"][name]
        assert service["read_only"] is True
        assert service["user"].split(":")[0] == "10001"
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert any(m.startswith("/tmp") for m in service["tmpfs"])
        # The demo model's directory (the image's FF_DEMO_MODEL_DIR) is a writable volume.
        assert "ff-cache:/var/cache/fashion-florence" in service["volumes"]
        assert service["stop_signal"] == "SIGTERM"
        drain_s = float(service["environment"]["FF_DRAIN_TIMEOUT_S"])
        grace_s = float(service["stop_grace_period"].removesuffix("s"))
        # The drain, then uvicorn's close of what is left (bounded by the same setting).
        assert grace_s >= 2 * drain_s + 5
        assert "/healthz" not in str(service["healthcheck"]["test"])  # via healthcheck.py
        assert service["healthcheck"]["test"][-1] == "/opt/fashion-florence/healthcheck.py"


def test_prometheus_scrapes_the_service_in_both_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs["fashion-florence"]["static_configs"][0]["targets"]
    assert targets == ["florence:8000"]
    assert "florence" in services["florence-gpu"]["networks"]["default"]["aliases"]
    assert jobs["dcgm"]["static_configs"][0]["targets"] == ["dcgm-exporter:9400"]
    assert services["dcgm-exporter"]["profiles"] == ["gpu"]


def test_bind_mounts_exist_in_the_repository(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name}: {source}"
    grafana = compose["services"]["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/var/lib/grafana/dashboards/fashion-florence.json"
    assert (REPO / "deploy" / "grafana" / "dashboards" / "fashion-florence.json").is_file()
