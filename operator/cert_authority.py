"""The cluster CA kept in a Secret, and the operator's own serving certificate.

The first replica to start creates the CA (key and certificate) in the Secret named by
`--tls-ca-secret` (a create that loses the race to another replica reads the winner's back);
every replica signs with it. The CA certificate, public, is also published in a ConfigMap of
the same name, where agents that bootstrap by CSR read what to trust. The operator's serving
certificate names OPERATOR_NAME and is renewed at 2/3 of its lifetime by the first handshake
after that moment (dynamic credentials ask at every handshake): no restart, no dropped stream.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
import time
from typing import Any

from membrane.operator.kube_client import KubeClient, KubeError
from membrane.operator.resources import CONFIG_MAPS, SECRETS
from membrane.tls.certificates import OPERATOR_NAME, Authority, CertificateError
from membrane.tls.material import Material
from membrane.tls.renewal import due

log = logging.getLogger(__name__)

CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"


def split_ref(ref: str) -> tuple[str, str]:
    """`namespace/name` -> (namespace, name)."""
    namespace, _, name = ref.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"expected namespace/name, got {ref!r}")
    return namespace, name


def load_or_create_ca(kube: KubeClient, ref: str) -> Authority:
    namespace, name = split_ref(ref)
    try:
        secret = kube.get(SECRETS, name, namespace)
    except KubeError as exc:
        if not exc.not_found:
            raise
        authority = Authority.create()
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/part-of": "membrane"}},
                "data": {CA_CERT_KEY: base64.b64encode(authority.cert_pem).decode(),
                         CA_KEY_KEY: base64.b64encode(authority.key_pem).decode()}}
        try:
            kube.create(SECRETS, body, namespace)
            log.info("created the cluster CA in secret %s", ref)
        except KubeError as exc2:
            if not exc2.conflict:
                raise
            secret = kube.get(SECRETS, name, namespace)  # another replica was first: use its CA
        else:
            publish_ca(kube, ref, authority.cert_pem)
            return authority
    data = secret.get("data") or {}
    try:
        authority = Authority(base64.b64decode(data[CA_KEY_KEY]), base64.b64decode(data[CA_CERT_KEY]))
    except (KeyError, ValueError, CertificateError) as exc:
        raise SystemExit(f"membrane-operator: secret {ref} does not hold a usable CA "
                         f"({CA_CERT_KEY}, {CA_KEY_KEY}): {exc}") from None
    publish_ca(kube, ref, authority.cert_pem)
    return authority


def publish_ca(kube: KubeClient, ref: str, cert_pem: bytes) -> None:
    """The CA certificate in the ConfigMap of the same name (created or brought up to date)."""
    namespace, name = split_ref(ref)
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "membrane"}},
            "data": {CA_CERT_KEY: cert_pem.decode()}}
    try:
        current = kube.get(CONFIG_MAPS, name, namespace)
    except KubeError as exc:
        if not exc.not_found:
            raise
        try:
            kube.create(CONFIG_MAPS, body, namespace)
        except KubeError as exc2:
            if not exc2.conflict:
                raise
        return
    if (current.get("data") or {}).get(CA_CERT_KEY) != body["data"][CA_CERT_KEY]:
        kube.merge_patch(CONFIG_MAPS, name, {"data": body["data"]}, namespace)


class ServingCertificate:
    """The operator's own key and certificate, renewed when due (any thread may ask)."""

    def __init__(self, authority: Authority, lifetime: float) -> None:
        self.authority = authority
        self.lifetime = dt.timedelta(seconds=lifetime)
        self._lock = threading.Lock()
        self._material = self._issue(0)

    def _issue(self, generation: int) -> Material:
        pair = self.authority.issue(OPERATOR_NAME, self.lifetime)
        return Material(self.authority.cert_pem, pair.key_pem, pair.cert_pem, generation)

    def current(self) -> Material:
        with self._lock:
            facts = self._material.facts
            if due(facts.issued, facts.not_after, time.time()):
                self._material = self._issue(self._material.generation + 1)
                log.info("operator serving certificate renewed (generation %d)",
                         self._material.generation)
            return self._material
