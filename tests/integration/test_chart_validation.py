"""The rendered chart against the real Kubernetes API schemas of every supported minor version.

`helm template --kube-version 1.N` renders the chart in several value sets; every object is
validated with kubernetes-validate (the OpenAPI schemas of Kubernetes itself, strict: unknown
fields are errors) for that version. Custom resources the API has no schema for are checked
against their own CRDs: MembraneIdentity against the chart's CRD; ServiceMonitor and
PrometheusRule are only known by name here (their content is tested in test_chart_monitoring).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from membrane_testkit import chart

SUPPORTED = [f"1.{minor}" for minor in range(26, 38)]  # Chart.yaml kubeVersion >=1.26; 1.37 the newest tested
# Kinds that come from CRDs (no schema in Kubernetes' own OpenAPI document).
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "standalone": {"operator.enabled": False},
    "static-unprivileged": {"operator.enabled": False, "ipam.mode": "static", "agent.privileged": False,
                            "agent.mtu": 1450, "agent.tunnel": "disabled"},
    "everything": {
        "prometheus.serviceMonitor.enabled": True, "operator.installCRDs": True, "dashboards.enabled": True,
        "prometheus.prometheusRule.enabled": True,
        "agent.operatorAddress": "operator.example:4250", "k8sServiceHost": "10.0.0.1",
        "k8sServicePort": "6443", "image.digest": "sha256:" + "a" * 64, "imagePullSecrets[0].name": "regcred",
        "cni.exclusive": True, "cni.chainedPlugins[0].type": "portmap",
        "cni.chainedPlugins[0].capabilities.portMappings": True, "agent.extraArgs[0]": "--no-flow-events",
        "agent.extraEnv[0].name": "EXTRA", "agent.extraEnv[0].value": "on", "commonLabels.team": "net",
        "agent.resources.limits.memory": "1Gi", "operator.replicas": 3, "agent.hostPID": True,
        "kubeProxyReplacement": True,
    },
}


@pytest.fixture(scope="module")
def helm() -> str:
    try:
        return chart.helm_binary()
    except chart.HelmUnavailable as exc:
        pytest.skip(str(exc))


def _crd_schema(docs: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    for doc in docs:
        if doc["kind"] == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == kind:
            return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
    return None


def test_every_supported_version_has_schemas() -> None:
    known = {kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()}
    assert set(SUPPORTED) <= known, f"kubernetes-validate lacks {sorted(set(SUPPORTED) - known)}"


@pytest.mark.parametrize("version", SUPPORTED)
def test_rendered_objects_validate(helm: str, version: str) -> None:
    checked = 0
    for label, sets in VALUE_SETS.items():
        docs = chart.render(helm, sets, kube_version=f"{version}.0")
        kinds = {d["kind"] for d in docs}
        assert {"DaemonSet", "ConfigMap", "ServiceAccount"} <= kinds, label
        for doc in docs:
            where = f"{label}: {doc['kind']}/{doc['metadata']['name']} on {version}"
            if doc["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{where}: {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{where}: {exc.message}")
            checked += 1
    assert checked >= 4 * 8


def test_membrane_identities_match_the_crd(helm: str) -> None:
    """An identity object as the operator writes it is valid for the CRD the chart installs."""
    from membrane.identities import LabelSet
    from membrane.operator.identity_syncing import identity_object

    docs = chart.render(helm)
    schema = _crd_schema(docs, "MembraneIdentity")
    assert schema is not None, "the chart does not install the MembraneIdentity CRD"
    obj = identity_object(300, LabelSet.of({"k8s:app": "web", "meta:namespace": "shop"}))
    jsonschema.validate(obj, _structural(schema))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**obj, "securityLabels": {"k8s:app": 7}}, _structural(schema))


def _structural(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 structural schema as JSON Schema (drop the x-kubernetes-* extensions)."""
    text = yaml.safe_dump(schema)
    data = yaml.safe_load(text)

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(data)  # type: ignore[no-any-return]


def test_a_broken_object_is_caught() -> None:
    """The validator is not a no-op: a field the API does not have fails on every version."""
    bad = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
           "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
               "metadata": {"labels": {"a": "b"}},
               "spec": {"containers": [{"name": "c", "image": "i", "privilegd": True}]}}}}
    for version in (SUPPORTED[0], SUPPORTED[-1]):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, version, strict=True)
