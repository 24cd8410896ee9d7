"""`membranectl apply` is strict (kubectl apply --validate=strict): unknown fields, wrong JSON
types and duplicate keys are refused with the field's path, malformed YAML is one line naming
line and column, an oversized value is named but not echoed. The pure parts and the agent's
object store; tests/integration/test_strict_apply_cli.py runs the installed membranectl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.api_serving import RequestError
from agent.object_store import ObjectStore
from membrane.ctl.manifests import ManifestError, parse_manifests
from membrane.strict_fields import kubernetes_version, strict_errors
from membrane_testkit import strict_schema_gen


def netpol(rule: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [rule]}, **extra}


FULL_POD = {  # what `kubectl get pod -o yaml` shows, trimmed: fields membrane never reads included
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}, "uid": "u-1",
                 "resourceVersion": "12", "creationTimestamp": "2026-01-01T00:00:00Z",
                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u-2",
                                      "controller": True}],
                 "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1",
                                    "fieldsV1": {"f:metadata": {"f:labels": {}}}}]},
    "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "ports": [{"containerPort": 80, "name": "http"}],
                             "resources": {"limits": {"cpu": "500m", "memory": 128}},
                             "env": [{"name": "A", "value": "1"}],
                             "readinessProbe": {"httpGet": {"path": "/", "port": "http"}}}],
             "volumes": [{"name": "v", "emptyDir": {}}], "nodeName": "n1", "restartPolicy": "Always"},
    "status": {"phase": "Running", "podIP": "10.200.1.5", "podIPs": [{"ip": "10.200.1.5"}],
               "conditions": [{"type": "Ready", "status": "True"}]},
}


def paths(errors: list[Any]) -> list[str]:
    return [str(e) for e in errors]


def test_a_misspelled_from_is_an_unknown_field_not_an_allow_all_rule() -> None:
    bad = netpol({"form": [{"podSelector": {"matchLabels": {"app": "web"}}}]})
    assert paths(strict_errors(bad)) == ["spec.ingress[0].form: unknown field"]


@pytest.mark.parametrize("obj,expected", [
    ({**netpol({}), "extra": 1}, "extra: unknown field"),
    (netpol({}, metadata={"name": "db", "label": {"a": "b"}}), "metadata.label: unknown field"),
    ({**netpol({}), "spec": {"podSelecter": {}}}, "spec.podSelecter: unknown field"),
    (netpol({"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "exept": ["10.1.0.0/16"]}}]}),
     "spec.ingress[0].from[0].ipBlock.exept: unknown field"),
    (netpol({"ports": [{"port": 80, "protocl": "UDP"}]}), "spec.ingress[0].ports[0].protocl: unknown field"),
    ({**netpol({}), "spec": {"ingress": {"from": []}}}, "spec.ingress: expected array, got object"),
    (netpol({"ports": [{"port": [80]}]}), "spec.ingress[0].ports[0].port: expected string or integer, got array"),
    (netpol({"from": [{"ipBlock": {}}]}), "spec.ingress[0].from[0].ipBlock.cidr: required field missing"),
    ({**FULL_POD, "spec": {"containers": [{"name": "c", "imagePullPolicy": "Always", "imag": "x"}]}},
     "spec.containers[0].imag: unknown field"),
    ({"kind": "Namespace", "metadata": {"name": "x", "lables": {}}}, "metadata.lables: unknown field"),  # no apiVersion
    ({**netpol({}), "status": {}}, "status: unknown field"),  # NetworkPolicy has had no status since 1.28
    (netpol({}, metadata={"name": "db", "labels": {"a": 1}}), "metadata.labels.a: expected string, got integer"),
])
def test_unknown_fields_and_wrong_types_are_named_by_path(obj: dict[str, Any], expected: str) -> None:
    assert expected in paths(strict_errors(obj))


def test_what_kubernetes_accepts_is_accepted() -> None:
    assert strict_errors(FULL_POD) == []
    assert strict_errors(netpol({"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["web"]}]}}], "ports": [{"port": "http", "endPort": None}]})) == []
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"},
            "spec": {"podCIDR": "10.200.2.0/24", "podCIDRs": ["10.200.2.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}
    assert strict_errors(node) == []
    assert strict_errors({"apiVersion": "v1", "kind": "Secret"}) == []  # not ours: parse_object names it


def test_the_vendored_schema_is_what_the_generator_makes_from_kubernetes_own() -> None:
    assert strict_schema_gen.TARGET.read_text() == strict_schema_gen.render()
    assert kubernetes_version() == strict_schema_gen.KUBERNETES_VERSION


def test_the_store_refuses_and_keeps_nothing(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    with pytest.raises(RequestError) as caught:
        store.apply([netpol({"form": [{"podSelector": {}}]})])
    assert caught.value.code == 422
    assert caught.value.details == ["NetworkPolicy db: spec.ingress[0].form: unknown field"]
    assert store.list("NetworkPolicy") == []
    # What the store wrote earlier is read back leniently (strictness is for what users hand in).
    assert store.apply([netpol({"from": [{"podSelector": {}}]})])[0]["action"] == "created"


def test_a_1mb_label_is_named_not_echoed(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    huge = "x" * (1 << 20)
    with pytest.raises(RequestError) as caught:
        store.apply([netpol({}, metadata={"name": "db", "namespace": "shop", "labels": {"app": huge}})])
    text = json.dumps({"msg": caught.value.msg, "details": caught.value.details})
    assert len(text) < 1000, text[:300]
    assert "(1048576 characters)" in text and "no more than 63 characters" in text


# --- reading manifests ------------------------------------------------------------------------

DUPLICATED = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db
spec:
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    from:
    - podSelector: {}
"""


def test_a_duplicate_key_is_refused_with_its_path_and_position() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifests(DUPLICATED, "p.yaml")
    assert str(caught.value) == 'p.yaml:9:5: duplicate field "spec.ingress[0].from"'
    with pytest.raises(ManifestError, match=r'^p.json:1:23: duplicate field "kind"$'):
        parse_manifests('{"kind": "Namespace", "kind": "Pod"}', "p.json")


@pytest.mark.parametrize("text,expected", [
    ("kind: Namespace\nmetadata:\n  name: [a\n", r"^m.yaml:4:1: expected ',' or ']', but got '<stream end>'$"),
    ("kind: Namespace\n  metadata: x\n", r"^m.yaml:2:11: mapping values are not allowed here$"),
    ("a: 1\n\tb: 2\n", r"^m.yaml:2:1: found character '\\t' that cannot start any token$"),
])
def test_malformed_yaml_is_one_line_with_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(ManifestError, match=expected):
        parse_manifests(text, "m.yaml")


def test_documents_and_lists() -> None:
    text = "---\nkind: Namespace\nmetadata: {name: a}\n---\n---\nkind: List\nitems:\n- {kind: Namespace}\n"
    assert parse_manifests(text, "x") == [{"kind": "Namespace", "metadata": {"name": "a"}}, {"kind": "Namespace"}]
