"""MembraneIdentity objects carry their pods' labels, so label selectors find them
(`kubectl get membraneidentities -l app=web`), checked through the API stand-in's selectors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from membrane.identities import LabelSet
from membrane.operator.config import OperatorConfig
from membrane.operator.identity_syncing import mirrored_labels
from membrane.operator.running import Operator
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.waiting import wait_for


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(port=0) as server:
        yield server


def test_mirrored_labels() -> None:
    labels = LabelSet.of({"k8s:app": "web", "k8s:app.kubernetes.io/part-of": "shop", "ns:team": "a",
                          "meta:namespace": "shop", "k8s:app.kubernetes.io/managed-by": "helm"})
    assert mirrored_labels(labels) == {"app": "web", "app.kubernetes.io/part-of": "shop",
                                       "membrane.io/namespace": "shop",
                                       "app.kubernetes.io/managed-by": "membrane-operator"}


def test_label_selectors_find_identities(api: KubeApiServer) -> None:
    api_client = api.api_client()
    operator = None
    try:
        core = client.CoreV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        from membrane.operator.crds import CRDS

        for crd in CRDS:
            client.ApiextensionsV1Api(api_client).create_custom_resource_definition(crd)
        # An identity written before labels were mirrored (an upgrade): the operator adds them.
        custom.create_cluster_custom_object("membrane.io", "v1alpha1", "membraneidentities", {
            "apiVersion": "membrane.io/v1alpha1", "kind": "MembraneIdentity", "metadata": {"name": "300"},
            "securityLabels": {"k8s:app": "db", "meta:namespace": "shop", "ns:team": "a",
                               "ns:kubernetes.io/metadata.name": "shop"}})
        core.create_namespace({"metadata": {"name": "shop", "labels": {"team": "a"}}})
        for name, app in (("web-1", "web"), ("db-1", "db")):
            core.create_namespaced_pod("shop", {"metadata": {"name": name, "labels": {"app": app}},
                                                "spec": {"containers": [{"name": "c", "image": "i"}]}})
        operator = Operator(OperatorConfig(
            api_server=api.url, identity="op", http_addr="127.0.0.1:0", grpc_addr="127.0.0.1:0",
            leader_election=False, resync_seconds=0.1)).start()

        def select(selector: str) -> list[dict[str, Any]]:
            return custom.list_cluster_custom_object("membrane.io", "v1alpha1", "membraneidentities",
                                                     label_selector=selector)["items"]

        assert wait_for(lambda: len(select("app=web")) == 1 and len(select("app=db")) == 1)
        (web,) = select("app=web")
        assert web["securityLabels"]["k8s:app"] == "web"
        (db,) = select("app=db")
        assert db["metadata"]["name"] == "300", "the old identity is relabelled, not replaced"
        assert len(select("membrane.io/namespace=shop")) == 2
        assert len(select("app.kubernetes.io/managed-by=membrane-operator,app in (web,db)")) == 2
        assert select("app=nothing") == []
    finally:
        if operator is not None:
            operator.stop()
        api_client.close()
