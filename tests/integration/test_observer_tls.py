"""The Observer's TCP listener with mutual TLS: served with the node's certificate, a client
needs one from the cluster CA; without one (or with another CA's, or plaintext) it gets nothing.
A renewed server certificate is used from the next handshake on."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from membrane.agent.observing import FlowObserver, ObserverServer, StaticDirectory
from membrane.api.observer.v1 import observer_pb2 as pb
from membrane.api.observer.v1 import observer_pb2_grpc as pb_grpc
from membrane.tls.certificates import Authority, facts
from membrane.tls.grpc_credentials import channel_credentials, channel_options
from membrane.tls.material import Material

HOUR = dt.timedelta(hours=1)


def material(ca: Authority, name: str, generation: int = 0) -> Material:
    pair = ca.issue(name, HOUR)
    return Material(ca.cert_pem, pair.key_pem, pair.cert_pem, generation)


def status(port: int, creds: grpc.ChannelCredentials | None, name: str = "node1") -> pb.ServerStatusResponse:
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target) if creds is None else \
        grpc.secure_channel(target, creds, options=channel_options(name))
    with channel:
        return pb_grpc.ObserverStub(channel).ServerStatus(pb.ServerStatusRequest(), timeout=5)


def test_observer_tcp_requires_a_client_certificate_from_the_cluster_ca() -> None:
    ca = Authority.create()
    current = [material(ca, "node1")]
    server = ObserverServer(FlowObserver("node1", StaticDirectory(), capacity=16), None, tcp="127.0.0.1:0",
                            tls=lambda: current[0])
    server.start()
    try:
        port = server.tcp_port
        assert port
        assert status(port, channel_credentials(material(ca, "relay"))).node_name == "node1"
        for creds in (None, grpc.ssl_channel_credentials(root_certificates=ca.cert_pem),
                      channel_credentials(Material(ca.cert_pem, *_pair(Authority.create(), "relay")))):
            with pytest.raises(grpc.RpcError) as err:
                status(port, creds)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        # Rotation: the next handshake gets the new certificate, no restart.
        old_serial = facts(current[0].cert_pem).serial
        current[0] = material(ca, "node1", generation=1)
        assert facts(current[0].cert_pem).serial != old_serial
        assert status(port, channel_credentials(material(ca, "relay"))).node_name == "node1"
    finally:
        server.stop(0.1)


def _pair(ca: Authority, name: str) -> tuple[bytes, bytes]:
    pair = ca.issue(name, HOUR)
    return pair.key_pem, pair.cert_pem


def test_membranectl_observe_uses_a_tls_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from membrane.agent.cert_keeping import write_dir
    from membrane.ctl.observe import _status, fetch_flows

    ca = Authority.create()
    server = ObserverServer(FlowObserver("node1", StaticDirectory(), capacity=16), None, tcp="127.0.0.1:0",
                            tls=lambda: material(ca, "node1"))
    server.start()
    try:
        write_dir(tmp_path / "tls", material(ca, "admin"))
        target = f"127.0.0.1:{server.tcp_port}"
        assert _status(target, str(tmp_path / "tls"), "node1")["node_name"] == "node1"
        assert list(fetch_flows(target, timeout=5, tls_dir=str(tmp_path / "tls"), server_name="node1")) == []
        with pytest.raises(grpc.RpcError):
            _status(target)  # plaintext: refused
    finally:
        server.stop(0.1)
