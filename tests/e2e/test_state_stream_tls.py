"""The state stream under mutual TLS, end to end without a datapath: the API stand-in (with
bearer tokens mapped to node users), a real operator keeping its CA in a Secret and signing
CSRs, and clients that are agents (`StateClient` with `CertKeeper`) or attackers.

Refused: no certificate, plaintext, another node's certificate, an expired one, a node with no
Node object, a CSR for another node or from a non-node user. Forged acks for another node do
not count. A certificate rotated under a live stream loses nothing: the client keeps every
version in order across renewals and the server ending the stream at the old one's expiry."""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from kubernetes import client

from membrane.agent import cert_requesting
from membrane.agent.cert_keeping import CertKeeper
from membrane.api.backoff import Backoff
from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state_client import StateClient
from membrane.api.state_objects import Kind, StateUpdate, apply_update
from membrane.operator.config import OperatorConfig
from membrane.operator.running import Operator
from membrane.operator.state_serving import SERVICE
from membrane.tls.certificates import OPERATOR_NAME, Authority, new_key_pem, new_request
from membrane.tls.grpc_credentials import channel_credentials, channel_options
from membrane.tls.material import Material
from membrane_testkit.kubeapi import KubeApiServer, User
from membrane_testkit.waiting import wait_for

LIFETIME = 10.0  # seconds: renewals at ~6.7 s, expiry of the old certificate at 10 s


def node_user(name: str) -> User:
    return User(f"system:node:{name}", ("system:nodes", "system:authenticated"))


class Cluster:
    def __init__(self, api: KubeApiServer, tmp: Path) -> None:
        self.api = api
        self.tmp = tmp
        self.admin = api.api_client()
        self.core = client.CoreV1Api(self.admin)
        for name in ("n1", "n2"):
            self.core.create_node({"metadata": {"name": name}, "status": {
                "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}})
            api.add_token(f"tok-{name}", node_user(name))
        api.add_token("tok-evil", User("system:serviceaccount:default:evil", ("system:serviceaccounts",),
                                       extra={"authentication.kubernetes.io/node-name": ["n1"]}))
        self.operator = Operator(OperatorConfig(
            api_server=api.url, identity="op-1", http_addr="127.0.0.1:0", grpc_addr="127.0.0.1:0",
            install_crds=True, lease_duration_seconds=2.0, renew_deadline_seconds=1.5,
            retry_period_seconds=0.2, resync_seconds=0.2, tls_cert_lifetime_seconds=LIFETIME)).start()
        # Only the leader serves the stream: wait until this replica leads, not only until it is ready.
        assert wait_for(lambda: self.operator.ready() and self.operator.is_leader)
        self.target = f"127.0.0.1:{self.operator.grpc_port}"
        secret = self.core.read_namespaced_secret("membrane-ca", "kube-system")
        self.authority = Authority(base64.b64decode(secret.data["ca.key"]), base64.b64decode(secret.data["ca.crt"]))

    def token_file(self, token: str) -> Path:
        path = self.tmp / f"{token}.token"
        path.write_text(token)
        return path

    def requester(self, token: str) -> Callable[[bytes, bytes], tuple[bytes, bytes]]:
        def request(_key: bytes, csr: bytes) -> tuple[bytes, bytes]:
            api = cert_requesting.api_client(self.api.url, None, self.token_file(token))
            try:
                return cert_requesting.read_ca(api, "kube-system/membrane-ca"), \
                    cert_requesting.request_certificate(api, "n1", csr, timeout=15)
            finally:
                api.close()
        return request

    def material(self, name: str, lifetime: float = 3600, start: dt.datetime | None = None) -> Material:
        pair = self.authority.issue(name, dt.timedelta(seconds=lifetime), start)
        return Material(self.authority.cert_pem, pair.key_pem, pair.cert_pem)

    def channel(self, material: Material | None, plaintext: bool = False) -> grpc.Channel:
        if plaintext:
            return grpc.insecure_channel(self.target)
        creds = channel_credentials(material) if material is not None else \
            grpc.ssl_channel_credentials(root_certificates=self.authority.cert_pem)
        return grpc.secure_channel(self.target, creds, options=channel_options(OPERATOR_NAME))

    def close(self) -> None:
        self.operator.stop()
        self.admin.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with KubeApiServer(port=0) as api:
        c = Cluster(api, tmp_path)
        try:
            yield c
        finally:
            c.close()


def subscribe(channel: grpc.Channel, node: str) -> list[pb.StateUpdate]:
    """Open a Subscribe stream and read the first update (raises the call's error)."""
    call = channel.stream_stream(f"/{SERVICE}/Subscribe", request_serializer=pb.SubscribeRequest.SerializeToString,
                                 response_deserializer=pb.StateUpdate.FromString)
    stream = call(iter([pb.SubscribeRequest(node_name=node)]), timeout=5)
    try:
        return [next(stream)]
    finally:
        stream.cancel()


def refused(channel: grpc.Channel, node: str) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        subscribe(channel, node)
    return err.value.code()  # type: ignore[attr-defined, no-any-return]


def test_only_the_node_its_certificate_names_may_subscribe(cluster: Cluster) -> None:
    n1, n2 = cluster.material("n1"), cluster.material("n2")
    with cluster.channel(n1) as good:
        first = subscribe(good, "n1")[0]
        assert first.type == pb.StateUpdate.TYPE_SNAPSHOT and first.version >= 1
    # No client certificate, or no TLS at all: nothing is served.
    with cluster.channel(None) as anonymous:
        assert refused(anonymous, "n1") == grpc.StatusCode.UNAVAILABLE  # the handshake fails
    with cluster.channel(None, plaintext=True) as plain:
        assert refused(plain, "n1") == grpc.StatusCode.UNAVAILABLE
    # Another node's certificate.
    with cluster.channel(n2) as other:
        assert refused(other, "n1") == grpc.StatusCode.PERMISSION_DENIED
    # An expired certificate (issued by the right CA).
    old = cluster.material("n1", lifetime=60, start=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    with cluster.channel(old) as expired:
        assert refused(expired, "n1") == grpc.StatusCode.UNAVAILABLE
    # A certificate from another CA naming n1.
    stranger = Authority.create().issue("n1", dt.timedelta(hours=1))
    with cluster.channel(Material(cluster.authority.cert_pem, stranger.key_pem, stranger.cert_pem)) as foreign:
        assert refused(foreign, "n1") == grpc.StatusCode.UNAVAILABLE
    # A valid certificate for a node that does not exist.
    with cluster.channel(cluster.material("ghost")) as ghost:
        assert refused(ghost, "ghost") == grpc.StatusCode.PERMISSION_DENIED
    metrics = cluster.operator.metrics.registry
    for reason in ("wrong_node", "unknown_node"):
        assert metrics.get_sample_value("membrane_operator_state_stream_refused_total", {"reason": reason}) == 1


def test_forged_acks_for_another_node_do_not_count(cluster: Cluster) -> None:
    tracker = cluster.operator.tracker
    n1 = StateClient(cluster.target, "n1", lambda _u: None, backoff=Backoff(initial=0.05, maximum=0.2),
                     tls=lambda: cluster.material("n1"))
    n1.start()
    try:
        assert wait_for(lambda: tracker.acked_version("n1") >= 1)
        acked = tracker.acked_version("n1")
        with cluster.channel(cluster.material("n2")) as channel:
            ack = channel.unary_unary(f"/{SERVICE}/Ack", request_serializer=pb.AckRequest.SerializeToString,
                                      response_deserializer=pb.AckResponse.FromString)
            with pytest.raises(grpc.RpcError) as err:
                ack(pb.AckRequest(node_name="n1", version=acked + 100), timeout=5)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
            ack(pb.AckRequest(node_name="n2", version=1), timeout=5)  # its own: accepted
        assert tracker.acked_version("n1") == acked
    finally:
        n1.stop()


def test_csr_bootstrap_signs_only_for_the_requesting_node(cluster: Cluster, tmp_path: Path) -> None:
    keeper = CertKeeper("n1", tmp_path / "n1", cluster.requester("tok-n1"))
    material = keeper.load()
    assert material.facts.name == "n1" and material.facts.dns_names == ("n1",)
    assert cluster.authority.verify(material.cert_pem).name == "n1"
    assert oct((tmp_path / "n1").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "n1" / "tls.key").stat().st_mode & 0o777) == "0o600"
    csrs = client.CertificatesV1Api(cluster.admin).list_certificate_signing_request().items
    assert [c.spec.username for c in csrs] == ["system:node:n1"]  # recorded by the API server
    with cluster.channel(material) as channel:  # the certificate works on the stream
        assert subscribe(channel, "n1")[0].type == pb.StateUpdate.TYPE_SNAPSHOT
    # n2 asking for n1's certificate, or a pod's service account bound to n1: denied.
    for token in ("tok-n2", "tok-evil"):
        key = new_key_pem()
        with pytest.raises(cert_requesting.CertificateRequestError, match="denied"):
            cluster.requester(token)(key, new_request(key, "n1"))
    # A restart reuses the certificate on disk (no new CSR).
    again = CertKeeper("n1", tmp_path / "n1", cluster.requester("tok-n1")).load()
    assert again.cert_pem == material.cert_pem
    assert len(client.CertificatesV1Api(cluster.admin).list_certificate_signing_request().items) == 3


def test_rotation_under_a_live_stream_drops_nothing(cluster: Cluster, tmp_path: Path) -> None:
    keeper = CertKeeper("n1", tmp_path / "n1", cluster.requester("tok-n1"))
    keeper.load()
    keeper.start()
    state: dict = {}
    versions: list[int] = []
    problems: list[str] = []
    lock = threading.Lock()

    def apply(update: StateUpdate) -> None:
        with lock:
            if update.snapshot and versions:
                problems.append(f"snapshot at {update.version} after {versions[-1]}")
            if not update.snapshot and versions and update.base_version != versions[-1]:
                problems.append(f"gap: delta {update.base_version}->{update.version} after {versions[-1]}")
            apply_update(state, update)
            versions.append(update.version)

    agent = StateClient(cluster.target, "n1", apply, backoff=Backoff(initial=0.05, maximum=0.2), tls=keeper.current)
    agent.start()
    first_serving = cluster.operator.serving_cert.current().generation  # type: ignore[union-attr]
    try:
        assert wait_for(lambda: bool(versions))
        cluster.core.create_namespace({"metadata": {"name": "shop"}})
        deadline = time.monotonic() + 2.6 * LIFETIME  # two renewals and two expiries of the old one
        index = 0
        while time.monotonic() < deadline:
            cluster.core.create_namespaced_pod("shop", {
                "metadata": {"name": f"p{index}", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}})
            cluster.core.patch_namespaced_pod_status(f"p{index}", "shop", [
                {"op": "add", "path": "/status/podIP", "value": f"10.200.0.{index % 250 + 2}"}])
            index += 1
            time.sleep(0.25)  # paces the writes across the stream's lifetime
        final = cluster.operator.state.version
        assert wait_for(lambda: versions[-1] >= final), (versions[-5:], final)
        with lock:
            pods = [k for k in state if k[0] is Kind.ENDPOINT]
        assert len(pods) == index, (len(pods), index)
        assert not problems, problems
        assert keeper.renewals >= 2  # the agent's certificate was replaced twice ...
        assert agent.connects >= 2  # ... and the stream moved to the new one, resuming
        assert cluster.operator.metrics.registry.get_sample_value(
            "membrane_operator_state_snapshots_sent_total") == 1  # resumes were deltas only
        assert cluster.operator.serving_cert.current().generation > first_serving  # type: ignore[union-attr]
    finally:
        agent.stop()
        keeper.stop()
