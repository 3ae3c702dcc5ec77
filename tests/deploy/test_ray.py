"""deploy/ray: the KubeRay RayJob built by kustomize and validated offline.

No package ships KubeRay's CRD schema (the RayJob CRD is over a megabyte of generated
OpenAPI, mostly the Kubernetes pod template, twice), so the RayJob is validated in two
parts: its pod templates, strictly, as the core ``PodTemplate`` kind against the
Kubernetes JSON schemas (kubernetes-validate, the oldest and newest version we support);
and its own fields against :data:`RAYJOB_FIELDS`, KubeRay's ``ray.io/v1`` RayJob and
RayCluster API (rayjob_types.go, raycluster_types.go) restated as a JSON schema that
refuses unknown fields. Then what a schema cannot see: the entrypoint parses with the real
command, the actors fit the GPUs, the settings are valid service settings, the volumes and
the ConfigMap it names exist, the Ray version is the one the tests ran."""

from __future__ import annotations

import copy
import os
import shlex
from importlib import metadata
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from service.cli import build_parser
from service.settings import Settings
from tests.deploy.tools import DEPLOY, load_yaml_docs, run, tool

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
NAMESPACE = "fashion-florence"

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT = {"type": "integer"}
_POD_TEMPLATE = {"type": "object"}  # validated on its own, as a core PodTemplate
_WORKER_GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groupName", "rayStartParams", "template"],
    "properties": {
        "suspend": {"type": "boolean"},
        "groupName": {"type": "string"},
        "replicas": _INT,
        "minReplicas": _INT,
        "maxReplicas": _INT,
        "idleTimeoutSeconds": _INT,
        "rayStartParams": _STRING_MAP,
        "template": _POD_TEMPLATE,
        "scaleStrategy": {"type": "object"},
        "numOfHosts": _INT,
    },
}
_CLUSTER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["headGroupSpec"],
    "properties": {
        "suspend": {"type": "boolean"},
        "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
        "autoscalerOptions": {"type": "object"},
        "headServiceAnnotations": _STRING_MAP,
        "enableInTreeAutoscaling": {"type": "boolean"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "headGroupSpec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rayStartParams", "template"],
            "properties": {
                "template": _POD_TEMPLATE,
                "headService": {"type": "object"},
                "enableIngress": {"type": "boolean"},
                "rayStartParams": _STRING_MAP,
                "serviceType": {"type": "string"},
            },
        },
        "rayVersion": {"type": "string"},
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
    },
}
#: KubeRay's RayJob (ray.io/v1), fields and types, unknown fields refused.
RAYJOB_FIELDS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "rayClusterSpec": _CLUSTER,
                "submitterPodTemplate": _POD_TEMPLATE,
                "metadata": _STRING_MAP,
                "clusterSelector": _STRING_MAP,
                "submitterConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"backoffLimit": _INT},
                },
                "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
                "deletionPolicy": {
                    "enum": ["DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"]
                },
                "entrypoint": {"type": "string"},
                "runtimeEnvYAML": {"type": "string"},
                "jobId": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                "entrypointResources": {"type": "string"},
                "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"},
                "ttlSecondsAfterFinished": _INT,
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "suspend": {"type": "boolean"},
            },
        },
    },
}


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    result = run([tool("kubectl"), "kustomize", str(DEPLOY / "ray")])
    assert result.returncode == 0, result.stderr
    return load_yaml_docs(result.stdout)


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


def _templates(job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    groups = cluster.get("workerGroupSpecs", [])
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in groups)]


def _validate_rayjob(job: dict[str, Any], version: str) -> None:
    jsonschema.validate(job, RAYJOB_FIELDS)
    for template in _templates(job):
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "check"},
            "template": template,
        }
        kubernetes_validate.validate(pod_template, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates(built: list[dict[str, Any]], version: str) -> None:
    assert {doc["kind"] for doc in built} == {"ConfigMap", "PersistentVolumeClaim", "RayJob"}
    for doc in built:
        assert doc["metadata"]["namespace"] == NAMESPACE
        if doc["kind"] == "RayJob":
            _validate_rayjob(doc, version)
        else:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_validators_reject_mistakes(built: list[dict[str, Any]]) -> None:
    job = _one(built, "RayJob")
    typo = copy.deepcopy(job)
    typo["spec"]["entrypint"] = typo["spec"].pop("entrypoint")
    with pytest.raises(jsonschema.ValidationError):
        _validate_rayjob(typo, KUBERNETES_VERSIONS[-1])
    mode = copy.deepcopy(job)
    mode["spec"]["submissionMode"] = "K8sMode"
    with pytest.raises(jsonschema.ValidationError):
        _validate_rayjob(mode, KUBERNETES_VERSIONS[-1])
    pod = copy.deepcopy(job)
    pod["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resource"
    ] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_rayjob(pod, KUBERNETES_VERSIONS[-1])


def test_the_entrypoint_is_the_ray_job_and_fits_the_gpus(built: list[dict[str, Any]]) -> None:
    spec = _one(built, "RayJob")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "fashion-florence"
    args = build_parser().parse_args(argv[1:])
    assert args.engine == "ray"
    assert args.address is None  # a submitted job's driver joins through RAY_ADDRESS
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(
        g["replicas"] * c["resources"]["limits"].get("nvidia.com/gpu", 0)
        for g in workers
        for c in g["template"]["spec"]["containers"]
    )
    assert args.actors * args.gpus_per_actor == gpus
    cpus = min(
        int(c["resources"]["requests"]["cpu"])
        for g in workers
        for c in g["template"]["spec"]["containers"]
    )
    assert args.cpus_per_actor < cpus  # CPUs left on each worker for intake tasks
    head = spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0"  # no work on the head
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"]["rayVersion"] == metadata.version("ray")


def test_every_pod_runs_the_ray_image_with_valid_settings(
    built: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _one(built, "ConfigMap")
    claims = {doc["metadata"]["name"] for doc in built if doc["kind"] == "PersistentVolumeClaim"}
    claims.add("fashion-florence-models")  # the gpu overlay's model volume
    for template in _templates(_one(built, "RayJob")):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["image"].endswith("-ray")  # built with EXTRAS=ray
        refs = [ref["configMapRef"]["name"] for ref in container["envFrom"]]
        assert refs == [config["metadata"]["name"]]  # the generated, hashed name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert {"/tmp", "/dev/shm", "/data", "/models"} <= set(mounts)
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    for key in list(os.environ):
        if key.startswith("FF_"):
            monkeypatch.delenv(key)
    for key, value in config["data"].items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.device == "cuda"
    assert settings.model_path == "/models/fashion-florence"
    assert settings.url_allow_loopback_for_tests is False


def test_no_pod_reports_usage_statistics(built: list[dict[str, Any]]) -> None:
    for template in _templates(_one(built, "RayJob")):
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_USAGE_STATS_ENABLED"] == "0"
