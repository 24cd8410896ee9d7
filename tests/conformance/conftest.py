"""NetworkPolicy conformance: the upstream e2e model (namespaces x, y, z; pods a, b, c; ports
80 and 81 on TCP, UDP and SCTP), each case checked over the full 9x9 pod matrix.

Every case runs twice (the `cluster` fixture's parameter):
- `engine`: verdicts from the pure policy engine (`membrane.policy.trace`), no root, instant:
  checks the expectation against the engine;
- `packets`: one lab node running a real agent, pods wired by the real CNI plugin, a probe
  process in every pod sending real TCP/UDP/SCTP through the eBPF datapath (needs root).
The lab is built once per module (`lab`); the `netpol` fixture hands each test a `Netpol` helper
that records what the test changed (policies, labels) and puts everything back afterwards,
waiting until the whole matrix is reachable again before the next test starts.

Environment: `MEMBRANE_CONFORMANCE_DEADLINE` (seconds a check keeps probing for the expected
matrix, default 12), `MEMBRANE_CONFORMANCE_TIMEOUT` (per probe, default 1.0),
`MEMBRANE_CONFORMANCE_GRACE` (default 0.3, see below). Run only one side with `-k engine` or
`-k packets`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from membrane_testkit.lab.node import LabNode
from membrane_testkit.lab.reachability import ClusterModel, EngineCluster, ProbeCluster, Reachability, TruthTable

DEADLINE = float(os.environ.get("MEMBRANE_CONFORMANCE_DEADLINE", "12"))
TIMEOUT = float(os.environ.get("MEMBRANE_CONFORMANCE_TIMEOUT", "1.0"))
# When a check expects exactly what was already observed before the last change, a match
# proves nothing until the change had time to land; wait this long after the change first.
# (Standalone mode enforces before `apply` returns, so this is belt and braces.)
GRACE = float(os.environ.get("MEMBRANE_CONFORMANCE_GRACE", "0.3"))

Cluster = ProbeCluster | EngineCluster


class Netpol:
    """What a conformance test uses: create/update/delete policies, relabel, check matrices."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.touched_namespaces: set[str] = set()
        self.touched_pods: set[tuple[str, str]] = set()
        self.checked: set[tuple[str, int]] = set()
        self.known: dict[tuple[str, int], TruthTable] = {}  # last matrix seen as expected
        self.changed_at = 0.0
        self.deadline = DEADLINE  # a test that expects to fail may shorten it
        self.log: list[str] = []

    # --- changes ---

    def _changed(self) -> None:
        self.changed_at = time.monotonic()

    def create(self, *policies: dict[str, Any]) -> None:
        for obj in policies:
            self.policies[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        self.cluster.apply(policies)
        self._changed()

    update = create

    def delete(self, *policies: dict[str, Any]) -> None:
        for obj in policies:
            self.policies.pop((obj["metadata"]["namespace"], obj["metadata"]["name"]), None)
        self.cluster.delete(policies)
        self._changed()

    def label_namespace(self, namespace: str, labels: dict[str, str]) -> None:
        self.touched_namespaces.add(namespace)
        self.cluster.label_namespace(namespace, labels)
        self._changed()

    def label_pod(self, namespace: str, pod: str, labels: dict[str, str]) -> None:
        self.touched_pods.add((namespace, pod))
        self.cluster.label_pod(namespace, pod, labels)
        self._changed()

    # --- expectations ---

    def reach(self, default: bool = True) -> Reachability:
        return self.cluster.reachability(default)

    def check(self, reachability: Reachability, protocol: str = "TCP", ports: tuple[int, ...] | int = 80,
              loopback: bool = True) -> None:
        """Probe the full 9x9 matrix for each port until it equals `reachability` (a pod always
        reaches itself: its own address never leaves its namespace) or the deadline passes."""
        if loopback:
            reachability.allow_loopback()
        for port in (ports,) if isinstance(ports, int) else ports:
            slot = (protocol.upper(), port)
            self.checked.add(slot)
            before = self.known.get(slot) or TruthTable(reachability.pods, True)  # reset leaves all open
            unchanged = not before.differences(reachability.expected)
            if unchanged and self.cluster.packets:
                wait = self.changed_at + GRACE - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            started = time.monotonic()
            self.cluster.validate(reachability, protocol, port, deadline=self.deadline)
            self.log.append(f"{protocol}/{port}: {'ok' if reachability.ok() else 'MISMATCH'} "
                            f"after {time.monotonic() - started:.2f}s")
            if not reachability.ok():
                pytest.fail(reachability.report(f"{protocol}/{port}"), pytrace=False)
            self.known[slot] = reachability.expected.copy()

    # --- back to the base state ---

    def reset(self) -> None:
        model = self.cluster.model
        if self.policies:
            self.cluster.delete(list(self.policies.values()))
            self.policies.clear()
        restore = ([model.namespace_object(ns) for ns in sorted(self.touched_namespaces)]
                   + [model.pod_object(ns, pod) for ns, pod in sorted(self.touched_pods)])
        if restore:
            self.cluster.apply(restore)
        slots = self.checked | {("TCP", 80)}
        for protocol, port in sorted(slots):
            everything = self.cluster.reachability(True)
            self.cluster.validate(everything, protocol, port, deadline=DEADLINE)
            if not everything.ok():
                raise AssertionError("after removing the test's policies and labels, not everything is "
                                     "reachable again:\n" + everything.report(f"{protocol}/{port}"))


@pytest.fixture(scope="module")
def lab() -> Iterator[ProbeCluster]:
    """The model on a lab node: real agent, real CNI, a probe process in every pod."""
    if os.geteuid() != 0:
        pytest.skip("real packets need root (network namespaces, eBPF)")
    node = LabNode(f"cf{os.getpid() % 10000}")
    probe_cluster = ProbeCluster(node, ClusterModel(), timeout=TIMEOUT)
    try:
        node.create()
        node.start_agent()
        probe_cluster.setup()
        yield probe_cluster
    finally:
        probe_cluster.close()
        node.destroy()


@pytest.fixture(scope="module", params=["engine", "packets"])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """Every case runs twice: judged by the pure policy engine (`engine`: checks the
    expectation against the engine, no root needed) and over real packets (`packets`)."""
    if request.param == "engine":
        return EngineCluster()
    return request.getfixturevalue("lab")  # type: ignore[no-any-return]


@pytest.fixture
def netpol(cluster: Cluster) -> Iterator[Netpol]:
    helper = Netpol(cluster)
    yield helper
    helper.reset()

