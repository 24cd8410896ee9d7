"""Asking the Kubernetes API for this node's certificate (the agent's only use of the API).

`--tls-bootstrap`: the agent makes a fresh key, sends a CertificateSigningRequest for signer
`membrane.io/agent` naming its node, and waits for the operator to approve and sign it (the
API server records who asked; the operator checks that it is this node). What to trust is
read from the ConfigMap the operator publishes the CA certificate in.
"""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

SIGNER = "membrane.io/agent"
USAGES = ["digital signature", "client auth", "server auth"]


class CertificateRequestError(RuntimeError):
    """The certificate could not be had (denied, timed out, no CA published), with why."""


def api_client(api_server: str | None, kubeconfig: str | None, token_file: Path | None) -> k8s_client.ApiClient:
    configuration = k8s_client.Configuration()
    if api_server:
        configuration.host = api_server
        configuration.verify_ssl = False if api_server.startswith("http:") else configuration.verify_ssl
    elif kubeconfig:
        k8s_config.load_kube_config(kubeconfig, client_configuration=configuration)
    else:
        k8s_config.load_incluster_config(client_configuration=configuration)
    if token_file is not None:
        configuration.api_key = {"authorization": token_file.read_text().strip()}
        configuration.api_key_prefix = {"authorization": "Bearer"}
    return k8s_client.ApiClient(configuration)


def read_ca(api: k8s_client.ApiClient, ref: str) -> bytes:
    namespace, _, name = ref.partition("/")
    try:
        found = k8s_client.CoreV1Api(api).read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        raise CertificateRequestError(f"cannot read the CA from ConfigMap {ref}: {exc.status} {exc.reason}") from None
    pem = (found.data or {}).get("ca.crt")
    if not pem:
        raise CertificateRequestError(f"ConfigMap {ref} has no ca.crt")
    return str(pem).encode()


def request_certificate(api: k8s_client.ApiClient, node: str, csr_pem: bytes, lifetime: int | None = None,
                        timeout: float = 60.0) -> bytes:
    """Create a CSR for `csr_pem` and wait for its certificate (PEM)."""
    certificates = k8s_client.CertificatesV1Api(api)
    name = f"membrane-agent-{node}-{secrets.token_hex(4)}"[:253]
    spec: dict[str, Any] = {"request": base64.b64encode(csr_pem).decode(), "signerName": SIGNER, "usages": USAGES}
    if lifetime:
        spec["expirationSeconds"] = max(600, int(lifetime))
    try:
        certificates.create_certificate_signing_request({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "membrane"}}, "spec": spec})
    except ApiException as exc:
        raise CertificateRequestError(f"creating CSR {name} failed: {exc.status} {exc.reason}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            csr = certificates.read_certificate_signing_request(name)
        except ApiException as exc:
            raise CertificateRequestError(f"reading CSR {name} failed: {exc.status} {exc.reason}") from None
        status = csr.status
        for condition in (status.conditions or []) if status else []:
            if condition.type in ("Denied", "Failed"):
                raise CertificateRequestError(f"CSR {name} {condition.type.lower()}: {condition.message}")
        if status is not None and status.certificate:
            cert = status.certificate
            return base64.b64decode(cert) if isinstance(cert, str) else bytes(cert)
        time.sleep(0.2)
    raise CertificateRequestError(f"CSR {name} was not signed within {timeout:.0f}s "
                                  "(is the operator running with TLS?)")
