"""gRPC credentials from `Material` (the grpc adapter of membrane.tls).

Servers use dynamic credentials: gRPC asks `fetch` at every new handshake, which hands over
the newest certificate once it was rotated; connections (and the streams on them) that are up
keep the session they negotiated, so a rotation neither restarts a server nor drops a stream.
Client certificates are always required and checked against the CA bundle. Clients build a
channel per material generation (channel credentials are fixed once made) and check the
server's name: the operator's is `OPERATOR_NAME`, an agent's Observer its node name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc

from .certificates import OPERATOR_NAME, facts
from .material import Material

PEM_CERT_KEY = "x509_pem_cert"


def server_credentials(current: Callable[[], Material]) -> grpc.ServerCredentials:
    """Mutual-TLS server credentials that follow `current()` across rotations."""
    lock = threading.Lock()
    served = [current()]

    def config(material: Material) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem)

    def fetch() -> Any:
        material = current()
        with lock:
            if material.generation == served[0].generation:
                return None  # unchanged: gRPC keeps the configuration it has
            served[0] = material
        return config(material)

    return grpc.dynamic_ssl_server_credentials(config(served[0]), fetch,
                                               require_client_authentication=True)


def channel_credentials(material: Material) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=material.ca_pem,
                                        private_key=material.key_pem,
                                        certificate_chain=material.cert_pem)


def channel_options(server_name: str = OPERATOR_NAME) -> list[tuple[str, str]]:
    """The name the server's certificate must carry, whatever address the channel dials."""
    return [("grpc.ssl_target_name_override", server_name)]


def peer_certificate(context: Any) -> bytes | None:
    """The PEM certificate the peer of a call authenticated with (None: no TLS peer)."""
    found = context.auth_context().get(PEM_CERT_KEY) or ()
    return found[0] if found else None


def peer_name(context: Any) -> tuple[str, float] | None:
    """The peer's certificate name and its expiry (Unix seconds); None without a certificate.
    gRPC verified the chain against the CA and the validity at the handshake."""
    pem = peer_certificate(context)
    if pem is None:
        return None
    found = facts(pem)
    return found.name, found.not_after
