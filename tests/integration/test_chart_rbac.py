"""The chart's RBAC against the API calls the code really makes.

A whole operator runs against the API stand-in through a scenario that exercises every write
path (leader election, PodCIDR assignment, identity allocation and garbage collection, an
invalid NetworkPolicy's Event, CRD installation); every request the stand-in records is turned
into Kubernetes authorization attributes (verb, group, resource/subresource, namespace) the way
the API server's RequestInfo does. Each call must be allowed by the rendered roles, and each
rule must be used by some call (or be listed below with the reason it is not exercised here).
The agent makes no API calls in Kubernetes mode: its ServiceAccount has no role and no token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from membrane.operator.config import OperatorConfig
from membrane.operator.crds import CRDS
from membrane.operator.running import Operator
from membrane_testkit import chart
from membrane_testkit.kubeapi import KubeApiServer, RequestRecord
from membrane_testkit.waiting import wait_for

NS = chart.NAMESPACE
# Granted but not exercised against the stand-in, with the reason.
UNEXERCISED = {
    ("networking.k8s.io", "networkpolicies/status", "patch"): "the API serves NetworkPolicy status on 1.26-1.27 only",
    ("membrane.io", "membraneidentities", "get"): "read back only after a create answered 409",
    ("", "configmaps", "patch"): "repairs the CA ConfigMap only when it differs from the Secret",
    # Checked by the API server when approving/signing (no request of their own).
    ("certificates.k8s.io", "signers", "approve"): "an authorization check on /approval, not a request",
    ("certificates.k8s.io", "signers", "sign"): "an authorization check on /status, not a request",
    ("networking.k8s.io", "networkpolicies", "patch"):
        "enforcement annotations of valid policies (tests/e2e/test_policy_enforced_annotation.py)",
}
AGENT_USER = f"system:serviceaccount:{NS}:membrane-agent"

Grant = tuple[str, str, str]  # (group, resource, verb)
Call = tuple[str, str, str, str | None]  # (group, resource, verb, namespace)


def request_attributes(record: RequestRecord) -> Call | None:
    """Authorization attributes of a resource request; None for discovery (non-resource) paths."""
    parts = [p for p in record.path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    if sub:
        resource = f"{resource}/{sub}"
    method = record.method
    if method == "GET":
        verb = "get" if name else ("watch" if record.query.get("watch") in ("true", "1") else "list")
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        raise AssertionError(f"unexpected method {method}")
    return group, resource, verb, namespace


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


@pytest.fixture(scope="module")
def helm() -> str:
    try:
        return chart.helm_binary()
    except chart.HelmUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def calls() -> Iterator[dict[bool, set[Call]]]:
    """The operator's calls, with and without installing CRDs itself."""
    out: dict[bool, set[Call]] = {}
    for install_crds in (False, True):
        out[install_crds] = _scenario(install_crds)
    yield out


def _scenario(install_crds: bool) -> set[Call]:
    """The operator's calls (requests without a token: the stand-in's admin) and, under the key
    of the agent's user, the agent's TLS bootstrap calls, mixed in one set by a marker."""
    with KubeApiServer(port=0) as api:
        api_client = api.api_client()
        try:
            ext = client.ApiextensionsV1Api(api_client)
            if not install_crds:  # the chart installed them
                for crd in CRDS:
                    ext.create_custom_resource_definition(crd)
                # One identity from before labels were mirrored: the operator relabels it.
                client.CustomObjectsApi(api_client).create_cluster_custom_object(
                    "membrane.io", "v1alpha1", "membraneidentities", {
                        "apiVersion": "membrane.io/v1alpha1", "kind": "MembraneIdentity",
                        "metadata": {"name": "300"}, "securityLabels": {"k8s:app": "old", "meta:namespace": "x"}})
            core = client.CoreV1Api(api_client)
            # The operator's own pod (host network, as the chart runs it: no identity of its own):
            # the leader labels it (the Service selects the label).
            core.create_namespaced_pod(NS, {"metadata": {"name": "op-1"}, "spec": {
                "hostNetwork": True, "containers": [{"name": "c", "image": "i"}]}})
            api.reset_requests()
            config = OperatorConfig.model_validate(dict(
                api_server=api.url, identity="op-1", http_addr="127.0.0.1:0", grpc_addr="127.0.0.1:0",
                install_crds=install_crds, lease_namespace=NS, lease_duration_seconds=2.0,
                renew_deadline_seconds=1.5, retry_period_seconds=0.2, resync_seconds=0.2,
                identity_gc_seconds=0.3, cluster_cidr="10.200.0.0/16",
                leader_label=True, pod_namespace=NS))  # with TLS, as the chart runs it
            operator = Operator(config).start()
            try:
                assert wait_for(lambda: operator.is_leader and operator.ready())
                # (Not read back here: this client's reads would count as the operator's calls.)
                assert wait_for(lambda: operator.labeller is not None and operator.labeller.written)
                core.create_node({"metadata": {"name": "n1"}})
                core.create_namespace({"metadata": {"name": "shop", "labels": {"team": "a"}}})
                core.create_namespaced_pod("shop", {"metadata": {"name": "web", "labels": {"app": "web"}},
                                                    "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}})
                core.patch_namespaced_pod_status("web", "shop", [
                    {"op": "add", "path": "/status/podIP", "value": "10.200.0.5"},
                    {"op": "add", "path": "/status/phase", "value": "Running"}])
                custom = client.CustomObjectsApi(api_client)

                def identities() -> list[dict[str, Any]]:
                    return custom.list_cluster_custom_object("membrane.io", "v1alpha1", "membraneidentities")["items"]

                assert wait_for(lambda: len(identities()) == 1)
                assert wait_for(lambda: bool((core.read_node("n1").metadata.annotations or {}).get("membrane.io/pod-cidr")))
                client.NetworkingV1Api(api_client).create_namespaced_network_policy("shop", {
                    "metadata": {"name": "bad"}, "spec": {"podSelector": {}, "ingress": [
                        {"ports": [{"port": 80, "endPort": 10}]}]}})
                assert wait_for(lambda: bool(core.list_namespaced_event("shop").items))
                # The prefilter's objects: their status is written (accepted, 0/1 nodes enforce).
                for plural, kind, spec in (("packetfilters", "PacketFilter", {"sanityChecks": "Drop"}),
                                           ("cidrdenylists", "CIDRDenyList", {"cidrs": ["192.0.2.0/24"]})):
                    custom.create_cluster_custom_object("membrane.io", "v1alpha1", plural, {
                        "apiVersion": "membrane.io/v1alpha1", "kind": kind, "metadata": {"name": "f"}, "spec": spec})
                    assert wait_for(lambda p=plural: (custom.get_cluster_custom_object(  # type: ignore[misc]
                        "membrane.io", "v1alpha1", p, "f").get("status") or {}).get("enforced") == "0/1")
                core.delete_namespaced_pod("web", "shop")
                assert wait_for(lambda: not identities())  # garbage-collected
                _agent_bootstrap(api, "n1")
            finally:
                operator.stop(release=True)
            calls: set[Call] = set()
            for record in api.requests:
                attrs = request_attributes(record)
                if attrs is not None and record.user in (None, AGENT_USER):
                    group, resource, verb, namespace = attrs
                    calls.add((group, resource, verb, namespace) if record.user is None
                              else ("agent:" + group, resource, verb, namespace))
            return calls
        finally:
            api_client.close()


def _agent_bootstrap(api: KubeApiServer, node: str) -> None:
    """What the agent does with --tls-bootstrap, with a token bound to its pod and node."""
    import tempfile
    from pathlib import Path

    from membrane.agent import cert_requesting
    from membrane.tls.certificates import new_key_pem, new_request
    from membrane_testkit.kubeapi.messages import User

    api.add_token("agent-token", User(AGENT_USER, ("system:serviceaccounts", f"system:serviceaccounts:{NS}"),
                                      extra={"authentication.kubernetes.io/node-name": [node]}))
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token"
        token.write_text("agent-token")
        agent_api = cert_requesting.api_client(api.url, None, token)
        try:
            assert cert_requesting.read_ca(agent_api, f"{NS}/membrane-ca")
            cert = cert_requesting.request_certificate(agent_api, node, new_request(new_key_pem(), node), timeout=15)
            assert b"BEGIN CERTIFICATE" in cert
        finally:
            agent_api.close()


def _operator_roles(docs: list[dict[str, Any]]) -> tuple[set[Grant], set[Grant]]:
    cluster = grants(chart.one(docs, "ClusterRole", "membrane-operator")["rules"])
    local = grants(chart.one(docs, "Role", "membrane-operator-leader-election")["rules"])
    return cluster, local


@pytest.mark.parametrize("install_crds", [False, True], ids=["chart-crds", "operator-crds"])
def test_operator_rules_are_exactly_its_calls(helm: str, calls: dict[bool, set[Call]], install_crds: bool) -> None:
    docs = chart.render(helm, {"operator.installCRDs": install_crds})
    cluster, local = _operator_roles(docs)
    made = {c for c in calls[install_crds] if not c[0].startswith("agent:")}
    # The scenario's own requests (as a user or kubelet would make them; the stand-in cannot
    # tell clients apart) are set aside: the operator makes none of these.
    user_side = {("", "nodes", "create"), ("", "namespaces", "create"), ("", "pods", "create"),
                 ("", "pods/status", "patch"), ("", "pods", "delete"), ("", "nodes", "get"),
                 ("networking.k8s.io", "networkpolicies", "create"), ("", "events", "list"),
                 ("membrane.io", "packetfilters", "create"), ("membrane.io", "cidrdenylists", "create"),
                 ("membrane.io", "packetfilters", "get"), ("membrane.io", "cidrdenylists", "get"),
                 ("apiextensions.k8s.io", "customresourcedefinitions", "create") if not install_crds else ()}
    operator_calls = {c for c in made if c[:3] not in user_side}
    for group, resource, verb, namespace in sorted(operator_calls, key=str):
        allowed = (group, resource, verb) in cluster or \
            (namespace == NS and (group, resource, verb) in local)
        assert allowed, f"the operator calls {verb} {group or 'core'}/{resource} (ns {namespace}) without a rule"
    # Used by the operator in either scenario (the relabel path needs an identity older than
    # the operator, which only the scenario with chart-installed CRDs can create).
    used = {c[:3] for c in operator_calls} | {c[:3] for c in calls[not install_crds] if c[:3] not in user_side
                                              and not c[0].startswith("agent:")
                                              and c[:3] != ("apiextensions.k8s.io", "customresourcedefinitions", "create")}
    for grant in sorted(cluster | local):
        assert grant in used or grant in UNEXERCISED, f"rule {grant} is never used by the operator"
    for grant in UNEXERCISED:
        assert grant in cluster | local, f"{grant} is listed as unexercised but not granted"
    assert not any(v in ("*", "deletecollection") or r == "*" for _g, r, v in cluster | local)
    assert (("apiextensions.k8s.io", "customresourcedefinitions", "create") in cluster) == install_crds
    deployment = chart.one(docs, "Deployment", "membrane-operator")
    assert chart.pod_spec(deployment)["automountServiceAccountToken"] is True  # it talks to the API


def test_the_scenario_covers_the_write_paths(calls: dict[bool, set[Call]]) -> None:
    made = {c[:3] for c in calls[True]} | {c[:3] for c in calls[False]}
    for expected in [("", "secrets", "create"), ("", "configmaps", "create"),
                     ("certificates.k8s.io", "certificatesigningrequests/approval", "update"),
                     ("certificates.k8s.io", "certificatesigningrequests/status", "update"),
                     ("agent:certificates.k8s.io", "certificatesigningrequests", "create"),
                     ("", "nodes", "patch"), ("membrane.io", "membraneidentities", "patch"), ("membrane.io", "membraneidentities", "create"),
                     ("membrane.io", "membraneidentities", "delete"), ("", "events", "create"),
                     ("membrane.io", "packetfilters/status", "patch"), ("membrane.io", "cidrdenylists/status", "patch"),
                     ("coordination.k8s.io", "leases", "update"),
                     ("apiextensions.k8s.io", "customresourcedefinitions", "create")]:
        assert expected in made, expected


def test_agent_rules_are_exactly_its_tls_bootstrap_calls(helm: str, calls: dict[bool, set[Call]]) -> None:
    """With the operator the agent reads nothing from the API but its TLS bootstrap: the CA
    ConfigMap and its own CSR. Its rules are exactly those calls."""
    docs = chart.render(helm)
    cluster = grants(chart.one(docs, "ClusterRole", "membrane-agent-tls")["rules"])
    local_role = chart.one(docs, "Role", "membrane-agent-tls")
    local = grants(local_role["rules"])
    assert local_role["rules"][0]["resourceNames"] == ["membrane-ca"]
    made = {(c[0].removeprefix("agent:"), *c[1:]) for c in calls[False] if c[0].startswith("agent:")}
    assert made, "the scenario made no agent calls"
    for group, resource, verb, namespace in made:
        assert (group, resource, verb) in cluster or (namespace == NS and (group, resource, verb) in local), \
            f"the agent calls {verb} {group or 'core'}/{resource} (ns {namespace}) without a rule"
    assert cluster | local == {c[:3] for c in made}, "a rule the agent never uses"
    assert not chart.find(docs, "ClusterRole", "membrane-agent"), "nothing else"
    spec = chart.pod_spec(chart.one(docs, "DaemonSet", "membrane-agent"))
    assert spec["automountServiceAccountToken"] is False
    token_mounts = {c["name"] for c in spec["initContainers"] + spec["containers"]
                    for m in c.get("volumeMounts") or [] if m["name"] == "kube-api-access"}
    assert token_mounts == {"agent"}


def test_agent_reads_nothing_without_tls(helm: str) -> None:
    docs = chart.render(helm, {"tls.enabled": False})
    account = chart.one(docs, "ServiceAccount", "membrane-agent")
    assert account["automountServiceAccountToken"] is False
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "Role") and "agent" in d["metadata"]["name"]]
    spec = chart.pod_spec(chart.one(docs, "DaemonSet", "membrane-agent"))
    assert spec["automountServiceAccountToken"] is False
    assert not [v for v in spec["volumes"] if "projected" in v]


def test_standalone_node_config_reads_only_its_node(helm: str) -> None:
    """node-config's one call is GET /api/v1/nodes/NAME (test_helm_chart runs the script)."""
    docs = chart.render(helm, {"operator.enabled": False})
    role = chart.one(docs, "ClusterRole", "membrane-agent")
    assert grants(role["rules"]) == {("", "nodes", "get")}
    spec = chart.pod_spec(chart.one(docs, "DaemonSet", "membrane-agent"))
    assert spec["automountServiceAccountToken"] is False
    token_mounts = {c["name"] for c in spec["initContainers"] + spec["containers"]
                    for m in c.get("volumeMounts") or [] if m["name"] == "kube-api-access"}
    assert token_mounts == {"node-config"}, "only node-config gets a token"
