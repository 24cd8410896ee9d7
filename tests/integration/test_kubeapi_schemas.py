"""The stand-in refuses what a real API server of its version refuses: writes are checked
against that version's OpenAPI schemas (kubernetes-validate's data) with fieldValidation
Strict / Warn / Ignore semantics; NetworkPolicy `status` exists up to 1.27 only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import kubernetes_validate
import pytest

from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.kubeapi.validating import supported_versions

POLICIES = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies"


def policy(name: str = "p", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}, **extra}


STATUS = {"conditions": [{"type": "Accepted", "status": "False", "reason": "Invalid", "message": "m",
                          "lastTransitionTime": "2026-01-01T00:00:00Z"}]}


def call(api: KubeApiServer, method: str, path: str, body: Any = None,
         content_type: str = "application/json") -> tuple[int, dict[str, Any], str]:
    """(code, JSON body, Warning header) of one raw request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(api.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers.get("Warning", "")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers.get("Warning", "")


@pytest.mark.parametrize("version", ["1.28", "1.31", "1.37"])
def test_networkpolicy_status_refused_from_1_28(version: str) -> None:
    with KubeApiServer(kubernetes_version=version) as api:
        code, body, _ = call(api, "POST", POLICIES + "?fieldValidation=Strict", policy(status=STATUS))
        assert code == 400 and body["reason"] == "BadRequest"
        assert 'strict decoding error: unknown field "status"' in body["message"]
        # The default (Warn) keeps the object, drops the field and says so.
        code, body, warning = call(api, "POST", POLICIES, policy(status=STATUS))
        assert code == 201 and "status" not in body
        assert warning == '299 - "unknown field \\"status\\""'
        # No status subresource to write a condition to, and a merge patch of the object
        # under Strict is refused like a create.
        code, body, _ = call(api, "PATCH", POLICIES + "/p/status", {"status": STATUS},
                             "application/merge-patch+json")
        assert code == 404
        code, body, _ = call(api, "PATCH", POLICIES + "/p?fieldValidation=Strict", {"status": STATUS},
                             "application/merge-patch+json")
        assert code == 400 and 'unknown field "status"' in body["message"]
        code, body, warning = call(api, "PATCH", POLICIES + "/p?fieldValidation=Ignore", {"status": STATUS},
                                   "application/merge-patch+json")
        assert code == 200 and "status" not in body and warning == ""
        code, doc, _ = call(api, "GET", "/apis/networking.k8s.io/v1")
        assert "networkpolicies/status" not in {r["name"] for r in doc["resources"]}
        assert call(api, "GET", "/version")[1]["minor"] == version.split(".")[1]


def test_networkpolicy_status_accepted_on_1_27() -> None:
    with KubeApiServer(kubernetes_version="1.27") as api:
        code, body, warning = call(api, "POST", POLICIES + "?fieldValidation=Strict", policy())
        assert code == 201 and warning == ""
        code, body, warning = call(api, "PATCH", POLICIES + "/p/status?fieldValidation=Strict",
                                   {"status": STATUS}, "application/merge-patch+json")
        assert code == 200 and body["status"] == STATUS and warning == ""
        code, doc, _ = call(api, "GET", "/apis/networking.k8s.io/v1")
        assert "networkpolicies/status" in {r["name"] for r in doc["resources"]}


def test_unknown_nested_field_wrong_type_and_missing_required() -> None:
    with KubeApiServer() as api:
        bad = policy()
        bad["spec"]["podSelecter"] = {}
        code, body, _ = call(api, "POST", POLICIES + "?fieldValidation=Strict", bad)
        assert code == 400 and 'unknown field "spec.podSelecter"' in body["message"]
        code, body, warning = call(api, "POST", POLICIES, bad)
        assert code == 201 and "podSelecter" not in body["spec"] and "spec.podSelecter" in warning

        wrong = policy("q")
        wrong["spec"]["ingress"] = [{"ports": [{"port": 80, "endPort": "90"}]}]
        code, body, _ = call(api, "POST", POLICIES, wrong)
        assert code == 400 and "spec.ingress[0].ports[0].endPort" in body["message"]

        code, body, _ = call(api, "POST", "/api/v1/namespaces/default/pods",
                             {"metadata": {"name": "no-containers"}, "spec": {}})
        assert code == 422 and body["reason"] == "Invalid"
        assert body["details"]["causes"][0]["field"] == "spec.containers"
        assert call(api, "GET", "/api/v1/namespaces/default/pods/no-containers")[0] == 404

        code, body, _ = call(api, "POST", POLICIES + "?fieldValidation=Loose", policy("r"))
        assert code == 400 and "fieldValidation" in body["message"]


def test_agrees_with_kubernetes_validate() -> None:
    """Whatever the stand-in refuses under Strict, kubernetes-validate (strict) refuses too, and
    the other way round, for every bundled version from 1.26."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
           "spec": {"containers": [{"name": "c", "image": "i"}]}}
    cases = [policy(), policy(status=STATUS), pod, {**pod, "spec": {}},
             {**pod, "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}]}},
             {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod"},
              "reason": "R", "type": "Warning"},
             {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e2"}, "reason": "R"}]
    versions = [v for v in supported_versions() if tuple(map(int, v.split("."))) >= (1, 26)]
    assert versions[0] == "1.26" and "1.37" in versions
    for version in versions:
        with KubeApiServer(kubernetes_version=version) as api:
            for index, case in enumerate(cases):
                try:
                    kubernetes_validate.validate(case, version, strict=True)
                    expected_ok = True
                except kubernetes_validate.ValidationError:
                    expected_ok = False
                obj = json.loads(json.dumps(case))
                obj["metadata"]["name"] = f"case-{index}"
                plural = {"Pod": "pods", "Event": "events", "NetworkPolicy": "networkpolicies"}[case["kind"]]
                group = "/apis/networking.k8s.io/v1" if case["kind"] == "NetworkPolicy" else "/api/v1"
                code, body, _ = call(api, "POST", f"{group}/namespaces/default/{plural}?fieldValidation=Strict",
                                     obj)
                assert (code == 201) == expected_ok, (version, case, code, body.get("message"))


def test_unsupported_version_is_refused() -> None:
    with pytest.raises(ValueError, match="no schemas for Kubernetes 1.12"):
        KubeApiServer(kubernetes_version="1.12")
