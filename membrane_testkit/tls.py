"""Test helpers for the control plane's TLS: the cluster CA the operator keeps in its Secret,
read back through the API stand-in, and node certificates issued from it (what `--tls-dir`
would hold on a node)."""

from __future__ import annotations

import base64
import datetime as dt

from kubernetes import client

from membrane.tls.certificates import Authority
from membrane.tls.material import Material
from membrane_testkit.kubeapi import KubeApiServer

CA_SECRET = ("kube-system", "membrane-ca")


def cluster_ca(api: KubeApiServer) -> Authority:
    with api.api_client() as admin:
        secret = client.CoreV1Api(admin).read_namespaced_secret(CA_SECRET[1], CA_SECRET[0])
    return Authority(base64.b64decode(secret.data["ca.key"]), base64.b64decode(secret.data["ca.crt"]))


def node_material(api: KubeApiServer, node: str, lifetime: float = 3600.0) -> Material:
    authority = cluster_ca(api)
    pair = authority.issue(node, dt.timedelta(seconds=lifetime))
    return Material(authority.cert_pem, pair.key_pem, pair.cert_pem)
