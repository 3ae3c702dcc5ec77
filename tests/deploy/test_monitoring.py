"""Prometheus and Grafana config, statically: `promtool check config`, `promtool check rules`
and `promtool test rules` (Debian's prometheus package), every alert proven to fire by a unit
test, every metric a rule or panel reads exported by the service. The live checks against a
running service and Prometheus server are in test_live_prometheus.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import (
    DASHBOARD,
    DCGM_METRICS,
    DEPLOY,
    RULE_TESTS,
    RULES,
    alert_rules,
    dashboard_queries,
    exported_names,
    metric_names,
    offline_exposition,
    run,
    tool,
)

PROMETHEUS_DIR = DEPLOY / "prometheus"
#: What the issue asks alerts for, and the rule that covers each.
REQUIRED_ALERTS = {
    "queue saturated": "FashionFlorenceQueueSaturated",
    "error rate": "FashionFlorenceHighErrorRate",
    "p99 latency": "FashionFlorenceHighP99Latency",
    "pods not ready": "FashionFlorencePodNotReady",
    "engine dead": "FashionFlorenceEngineDead",
}


def test_promtool_checks_the_compose_prometheus_config(tmp_path: Path) -> None:
    # The config names its rules by their path in the container (/etc/prometheus is
    # deploy/prometheus mounted read-only): point it at the repository's copy to check both.
    config = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules/*.rules.yml" in config
    local = tmp_path / "prometheus.yml"
    local.write_text(config.replace("/etc/prometheus/", f"{PROMETHEUS_DIR}/"))
    result = run([tool("promtool"), "check", "config", str(local)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(RULES.read_text().replace("> 204", "> > 204", 1))
    result = run([tool("promtool"), "check", "rules", str(broken)])
    assert result.returncode != 0


def test_promtool_checks_the_rules() -> None:
    result = run([tool("promtool"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = run([tool("promtool"), "test", "rules", str(RULE_TESTS)], cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    names = {rule["alert"] for rule in alert_rules()}
    assert names == fires, f"alerts never shown to fire: {names - fires}"
    assert names == silent, f"alerts never shown to stay silent: {names - silent}"


def test_the_issue_alerts_exist_and_read_real_metrics() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(REQUIRED_ALERTS.values()) <= set(rules)
    exported = exported_names(offline_exposition())
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["runbook"].startswith("docs/operations.md#"), name
        used = metric_names(rule["expr"])
        assert used or re.search(r"\bup\{", rule["expr"]), name
        assert used <= exported, f"{name} reads {used - exported}, which the service never exports"
    assert 'ff_engine_state{state="dead"}' in rules["FashionFlorenceEngineDead"]["expr"]


def test_runbook_anchors_exist_in_the_operations_guide() -> None:
    guide = (DEPLOY.parent / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).strip().replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", guide, re.MULTILINE)
    }
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor}"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_dashboard_covers_what_operators_need(dashboard: dict[str, Any]) -> None:
    queries = list(dashboard_queries(dashboard))
    used = set().union(*(metric_names(expr) for _, expr in queries))
    # requests/s by status, queue depth, queue wait and inference p50/p99, batch sizes,
    # images/s, errors by code, GPU memory.
    for needed in (
        "ff_requests_total", "ff_queue_depth", "ff_queue_wait_seconds_bucket",
        "ff_inference_duration_seconds_bucket", "ff_batch_size_bucket", "ff_images_total",
        "ff_errors_total", "DCGM_FI_DEV_FB_USED",
    ):  # fmt: skip
        assert needed in used, needed
    exprs = [expr for _, expr in queries]
    assert any("sum by (status)" in e and "ff_requests_total" in e for e in exprs)
    assert any("sum by (code)" in e and "ff_errors_total" in e for e in exprs)
    for histogram in ("ff_queue_wait_seconds_bucket", "ff_inference_duration_seconds_bucket"):
        quantiles = {e.split(",")[0] for e in exprs if histogram in e}
        assert quantiles == {"histogram_quantile(0.5", "histogram_quantile(0.99"}, histogram
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for title, expr in queries:
        assert metric_names(expr), f"{title}: reads no metric"
        assert metric_names(expr) <= exported_names(offline_exposition()) | DCGM_METRICS, title


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    grafana = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((grafana / "dashboards" / "fashion-florence.yml").read_text())[
        "providers"
    ]
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
