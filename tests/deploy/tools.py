"""Shared helpers for tests/deploy: where the real tools are, and what the service exports.

PyPI tools (kubectl, hadolint, check-jsonschema, shellcheck) are dev dependencies and live
next to the interpreter; prometheus/promtool come from Debian's `prometheus` package, which
.ci/run installs (scripts/ci-tools.sh). A missing tool fails under CI and skips elsewhere
(with the command that installs it): a developer without root may not be able to install it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fashion-florence.json"
RULES = DEPLOY / "prometheus" / "rules" / "fashion-florence.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "fashion-florence.test.yml"
OVERLAYS = ("cpu", "gpu")

#: Metrics the dashboard reads from NVIDIA's dcgm-exporter (compose gpu profile), because the
#: service itself exports no GPU memory metric.
DCGM_METRICS = frozenset({"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"})
_METRIC_TOKEN = re.compile(r"\b(?:ff_[a-z0-9_]+|DCGM_[A-Z0-9_]+)\b")

_INSTALL_HINT = {
    "prometheus": "apt-get install prometheus (scripts/ci-tools.sh)",
    "promtool": "apt-get install prometheus (scripts/ci-tools.sh)",
}


def tool(name: str) -> str:
    """Absolute path of a tool: the venv's bin first (PyPI tools), then PATH (Debian)."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    hint = _INSTALL_HINT.get(name, "pip install -e '.[dev]' (make install)")
    message = f"{name} is not installed: {hint}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(
    argv: Sequence[str], *, cwd: Path = REPO, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def load_yaml_docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def metric_names(promql: str) -> set[str]:
    """The service's (ff_*) and dcgm-exporter's (DCGM_*) metric names a query reads."""
    return set(_METRIC_TOKEN.findall(promql))


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics page exports, including those of declared families that
    have no labelled child yet (a counter ``x`` exports ``x_total``, a histogram ``_bucket``...)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.update({f"{family.name}_total", f"{family.name}_created"})
        elif family.type == "histogram":
            names.update(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count", "_created"))
        else:
            names.add(family.name)
    return names


def offline_exposition() -> str:
    """The service's /metrics text from a fresh registry (every family declared)."""
    from service.telemetry.metrics import ServiceMetrics

    return ServiceMetrics().render().decode()


def dashboard_queries(dashboard: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows included."""
    panels: list[dict[str, Any]] = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]
