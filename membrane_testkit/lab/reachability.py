"""Reachability over real packets: the upstream Kubernetes NetworkPolicy e2e model on a lab node.

The model (as in Kubernetes' `test/e2e/network/netpol`): namespaces x, y, z, each with pods
a, b, c labelled `pod=<name>`, every pod serving ports 80 and 81 on TCP, UDP and SCTP (named
ports `serve-80-tcp`, `serve-81-udp`, ...). `ProbeCluster` builds it on a `LabNode` (Namespace
and Pod objects applied to the agent's standalone store, pods wired by the real CNI plugin),
runs one long-lived `probe_server` process in each pod (server and prober at once), and probes
the full pod x pod matrix for one protocol and port concurrently: every source probes all
targets at the same time, all sources in parallel.

`Reachability` holds the expected and observed truth tables (`expect_all`, `expect_from`,
`expect_to`, `expect_peer`, `allow_loopback`) and prints them side by side on mismatch.
`ProbeCluster.validate` probes until the observed matrix equals the expected one (policy
takes a moment to be enforced) or a deadline passes, and returns the last full observation.

`EngineCluster` answers the same questions from the pure policy engine (no root, instant), so a
case can be checked against the engine and against packets with the same code.

Reusable outside the tests (benchmarks: `ProbeCluster.probe` timing, propagation delay), and
from the shell: `python -m membrane_testkit.lab.reachability [-f objects.yaml]` prints the matrices.
A full 9x9 round takes ~0.03 s when everything answers, the probe timeout (1 s) when some
cell is dropped, ~0.4 s for SCTP (INITs are sent, then the destinations are asked).
"""

from __future__ import annotations

import builtins
import copy
import json
import os
import random
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import netns
from .node import LabNode, Pod

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP", "SCTP")
NS_NAME_LABEL = "kubernetes.io/metadata.name"
PROBE_SERVER = Path(__file__).with_name("probe_server.py")


# --- peers and truth tables -------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A set of pods: empty namespace / pod means any."""

    namespace: str = ""
    pod: str = ""

    @classmethod
    def of(cls, spec: Peer | str) -> Peer:
        """"x/a" one pod, "x" or "x/*" a namespace, "*/a" pod a everywhere, "*" or "" all."""
        if isinstance(spec, Peer):
            return spec
        namespace, _, pod = spec.partition("/")
        return cls("" if namespace == "*" else namespace, "" if pod == "*" else pod)

    def matches(self, key: str) -> bool:
        namespace, _, pod = key.partition("/")
        return (not self.namespace or self.namespace == namespace) and (not self.pod or self.pod == pod)


class TruthTable:
    """A boolean per (from, to) pair of items, all pairs set."""

    def __init__(self, items: Sequence[str], default: bool | None = None) -> None:
        self.items = list(items)
        self.values: dict[tuple[str, str], bool | None] = {(f, t): default for f in self.items for t in self.items}
        self.notes: dict[tuple[str, str], str] = {}  # why an observation is False ("timeout", ...)

    def set(self, src: str, dst: str, value: bool, note: str = "") -> None:
        if (src, dst) not in self.values:
            raise KeyError(f"{src} -> {dst} is not in the table")
        self.values[(src, dst)] = value
        if note:
            self.notes[(src, dst)] = note
        else:
            self.notes.pop((src, dst), None)

    def get(self, src: str, dst: str) -> bool | None:
        return self.values[(src, dst)]

    def set_where(self, src: Peer | str, dst: Peer | str, value: bool) -> None:
        sp, dp = Peer.of(src), Peer.of(dst)
        for f, t in self.values:
            if sp.matches(f) and dp.matches(t):
                self.values[(f, t)] = value

    def copy(self) -> TruthTable:
        return copy.deepcopy(self)

    def differences(self, other: TruthTable) -> list[tuple[str, str]]:
        return [k for k, v in self.values.items() if other.values.get(k) != v]

    def count(self, value: bool) -> int:
        return sum(1 for v in self.values.values() if v is value)

    def pretty(self, mark: builtins.set[tuple[str, str]] | None = None) -> str:
        """Rows are sources, columns destinations; `.` reachable, `X` not, `?` unknown;
        `*` marks a cell that differs."""
        mark = mark or set()
        width = max(len(i) for i in self.items)
        lines = [" " * width + " | " + " ".join(f"{i:>{width}}" for i in self.items)]
        lines.append("-" * len(lines[0]))
        for f in self.items:
            cells = []
            for t in self.items:
                value = self.values[(f, t)]
                glyph = "?" if value is None else ("." if value else "X")
                cells.append(f"{glyph + ('*' if (f, t) in mark else ''):>{width}}")
            lines.append(f"{f:>{width}} | " + " ".join(cells))
        return "\n".join(lines)


class Reachability:
    """Expected reachability of every (source pod, destination pod) pair, and what was seen."""

    def __init__(self, pods: Sequence[str], default: bool = True) -> None:
        self.pods = list(pods)
        self.expected = TruthTable(self.pods, default)
        self.observed = TruthTable(self.pods, None)

    # expectations (later calls override earlier ones, as upstream)
    def expect_all(self, value: bool) -> Reachability:
        self.expected.set_where("*", "*", value)
        return self

    def expect(self, src: str, dst: str, value: bool) -> Reachability:
        self.expected.set(src, dst, value)
        return self

    def expect_peer(self, src: Peer | str, dst: Peer | str, value: bool) -> Reachability:
        self.expected.set_where(src, dst, value)
        return self

    def expect_from(self, src: Peer | str, value: bool) -> Reachability:
        """All egress of `src` (upstream ExpectAllEgress)."""
        self.expected.set_where(src, "*", value)
        return self

    def expect_to(self, dst: Peer | str, value: bool) -> Reachability:
        """All ingress of `dst` (upstream ExpectAllIngress)."""
        self.expected.set_where("*", dst, value)
        return self

    def allow_loopback(self) -> Reachability:
        """A pod always reaches itself (the packet never leaves its namespace)."""
        for pod in self.pods:
            self.expected.set(pod, pod, True)
        return self

    def observe(self, src: str, dst: str, value: bool, note: str = "") -> None:
        self.observed.set(src, dst, value, note)

    def mismatches(self) -> list[tuple[str, str]]:
        return self.expected.differences(self.observed)

    def ok(self) -> bool:
        return not self.mismatches()

    def report(self, title: str = "") -> str:
        wrong = set(self.mismatches())
        details = [f"  {f} -> {t}: expected {self.expected.get(f, t)}, observed {self.observed.get(f, t)}"
                   + (f" ({self.observed.notes[(f, t)]})" if (f, t) in self.observed.notes else "")
                   for f, t in sorted(wrong)]
        exp, obs = self.expected.pretty(wrong).splitlines(), self.observed.pretty(wrong).splitlines()
        width = max(len(line) for line in exp)
        side = [f"{'expected':<{width}}    observed"] + [f"{a:<{width}}    {b}" for a, b in zip(exp, obs, strict=False)]
        head = f"{title}: " if title else ""
        return (f"{head}{len(wrong)} of {len(self.expected.values)} cells differ "
                f"(. reachable, X not, * differs)\n" + "\n".join(side) + "\n" + "\n".join(details))


# --- the cluster model -------------------------------------------------------------------------


def key(namespace: str, pod: str) -> str:
    return f"{namespace}/{pod}"


@dataclass
class ClusterModel:
    namespaces: tuple[str, ...] = NAMESPACES
    pods: tuple[str, ...] = PODS
    ports: tuple[int, ...] = PORTS
    protocols: tuple[str, ...] = PROTOCOLS

    @property
    def pod_keys(self) -> list[str]:
        return [key(ns, pod) for ns in self.namespaces for pod in self.pods]

    def namespace_object(self, namespace: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {NS_NAME_LABEL: namespace, **(labels or {})}}}

    def pod_object(self, namespace: str, pod: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        containers = [{"name": f"cont-{port}-{proto.lower()}", "image": "registry.k8s.io/e2e-test-images/agnhost",
                       "ports": [{"containerPort": port, "name": f"serve-{port}-{proto.lower()}", "protocol": proto}]}
                      for port in self.ports for proto in self.protocols]
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": namespace, "labels": {"pod": pod, **(labels or {})}},
                "spec": {"containers": containers}}

    def base_objects(self) -> list[dict[str, Any]]:
        return ([self.namespace_object(ns) for ns in self.namespaces]
                + [self.pod_object(ns, pod) for ns in self.namespaces for pod in self.pods])


# --- probe processes ---------------------------------------------------------------------------


class ProbeProcess:
    """One `probe_server` inside a pod's network namespace, driven over its stdin/stdout."""

    def __init__(self, pod_netns: str) -> None:
        self.netns = pod_netns
        self.proc = netns.popen_in(pod_netns, [sys.executable, "-S", "-u", str(PROBE_SERVER), "--ports",
                                               ",".join(str(p) for p in PORTS)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.ids = iter(range(1, 1 << 62))
        self.buffer = b""
        self.lock = threading.Lock()

    def wait_ready(self, timeout: float = 20) -> dict[str, Any]:
        message = self._read(timeout)
        if not message.get("ready"):
            raise RuntimeError(f"probe server in {self.netns} did not start: {message}")
        return message

    def _read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line, read from the raw pipe with our own buffer (a buffered reader
        could hold a line that select() then never reports)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = end - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"probe server in {self.netns}: no answer within {timeout}s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.proc.wait(5)
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"probe server in {self.netns} exited ({self.proc.returncode}): {err[-500:]}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)  # type: ignore[no-any-return]  # the probe server's JSON reply object

    def send(self, op: str, **args: Any) -> int:
        assert self.proc.stdin is not None
        request_id = next(self.ids)
        self.proc.stdin.write((json.dumps({"id": request_id, "op": op, **args}) + "\n").encode())
        self.proc.stdin.flush()
        return request_id

    def receive(self, request_id: int, timeout: float = 30) -> dict[str, Any]:
        end = time.monotonic() + timeout
        message = self._read(timeout)
        while isinstance(message.get("id"), int) and message["id"] < request_id:  # left over by a failed round
            message = self._read(max(end - time.monotonic(), 0.01))
        if message.get("id") != request_id:
            raise RuntimeError(f"probe server in {self.netns}: answer {message} to another request than {request_id}")
        if "error" in message:
            raise RuntimeError(f"probe server in {self.netns}: {message['error']}")
        return message

    def call(self, op: str, timeout: float = 30, **args: Any) -> dict[str, Any]:
        with self.lock:
            return self.receive(self.send(op, **args), timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(2)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@dataclass
class ProbeResult:
    protocol: str
    port: int
    observed: TruthTable
    seconds: float


@dataclass
class ProbeCluster:
    """The x/y/z x a/b/c model wired onto one lab node, with a probe process in every pod."""

    packets = True

    node: LabNode
    model: ClusterModel = field(default_factory=ClusterModel)
    timeout: float = 1.0  # TCP connect / UDP echo wait per probe
    pods: dict[str, Pod] = field(default_factory=dict)
    probers: dict[str, ProbeProcess] = field(default_factory=dict)
    by_ip: dict[str, str] = field(default_factory=dict)
    rounds: int = 0

    @property
    def pod_keys(self) -> list[str]:
        return self.model.pod_keys

    def ip(self, pod_key: str) -> str:
        return self.pods[pod_key].ip

    # --- building and tearing down ---

    def setup(self) -> ProbeCluster:
        self.apply(self.model.base_objects())
        for namespace in self.model.namespaces:
            for pod in self.model.pods:
                self._add_pod(namespace, pod)
        for pod_key, member in self.pods.items():
            self.probers[pod_key] = ProbeProcess(member.netns)
        for prober in self.probers.values():
            prober.wait_ready()
        return self

    def _add_pod(self, namespace: str, name: str) -> Pod:
        """CNI ADD as kubelet does; pod netns `<node netns>-<namespace>-<name>` (LabNode.add_pod
        names the netns after the pod name alone, which repeats across namespaces here)."""
        pod_ns = f"{self.node.netns}-{namespace}-{name}"
        path = netns.create(pod_ns)
        container_id = f"{self.node.name}-{namespace}-{name}"
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"
        code, result, raw = self.node.cni("ADD", container_id, str(path), "eth0", args)
        if code != 0 or result is None:
            netns.delete(pod_ns)
            raise RuntimeError(f"CNI ADD {namespace}/{name} failed ({code}): {raw}")
        pod = Pod(name, namespace, pod_ns, container_id, result)
        self.node.pods[f"{namespace}-{name}"] = pod  # so LabNode.destroy removes it
        self.pods[key(namespace, name)] = pod
        self.by_ip[pod.ip] = key(namespace, name)
        return pod

    def close(self) -> None:
        for prober in self.probers.values():
            try:
                prober.stop()
            except Exception:  # noqa: BLE001 - cleanup goes on regardless
                pass
        self.probers.clear()

    # --- objects ---

    def apply(self, objects: Iterable[dict[str, Any]]) -> Any:
        return self.node.api("apply", objects=list(objects))

    def delete(self, objects: Iterable[dict[str, Any]]) -> Any:
        return self.node.api("delete", objects=list(objects))

    def label_namespace(self, namespace: str, labels: dict[str, str]) -> None:
        self.apply([self.model.namespace_object(namespace, labels)])

    def label_pod(self, namespace: str, pod: str, labels: dict[str, str]) -> None:
        self.apply([self.model.pod_object(namespace, pod, labels)])

    # --- probing ---

    def probe(self, protocol: str, port: int, only: Iterable[tuple[str, str]] | None = None) -> ProbeResult:
        """Probe the whole matrix (or the `only` pairs) once, all sources in parallel."""
        started = time.monotonic()
        self.rounds += 1
        protocol = protocol.upper()
        wanted = list(only) if only is not None else [(f, t) for f in self.pod_keys for t in self.pod_keys]
        per_source: dict[str, list[list[Any]]] = {}
        for src, dst in wanted:
            per_source.setdefault(src, []).append([dst, self.ip(dst), port])
        observed = TruthTable(self.pod_keys, None)
        if protocol in ("TCP", "UDP"):
            sent = {src: self.probers[src].send("probe", proto=protocol.lower(), targets=targets, timeout=self.timeout)
                    for src, targets in per_source.items()}
            for src, request_id in sent.items():
                results = self.probers[src].receive(request_id, timeout=self.timeout * 4 + 20)["results"]
                for dst, outcome in results.items():
                    observed.set(src, dst, outcome == "ok", "" if outcome == "ok" else outcome)
        elif protocol == "SCTP":
            tag = random.randrange(1, 1 << 32)
            sent = {src: self.probers[src].send("sctp_send", targets=targets, tag=tag, attempts=3, interval=0.05)
                    for src, targets in per_source.items()}
            for src, request_id in sent.items():
                self.probers[src].receive(request_id)
            time.sleep(0.25)  # SCTP datagrams have no answer to wait on: give them time to land
            destinations = {dst for _, dst in wanted}
            asked = {dst: self.probers[dst].send("sctp_seen", tag=tag) for dst in destinations}
            arrived: set[tuple[str, str]] = set()
            for dst, request_id in asked.items():
                for source_ip, seen_port in self.probers[dst].receive(request_id)["seen"]:
                    if seen_port == port and source_ip in self.by_ip:
                        arrived.add((self.by_ip[source_ip], dst))
            for src, dst in wanted:
                observed.set(src, dst, (src, dst) in arrived, "" if (src, dst) in arrived else "INIT not seen")
        else:
            raise ValueError(f"unknown protocol {protocol}")
        return ProbeResult(protocol, port, observed, time.monotonic() - started)

    def validate(self, reachability: Reachability, protocol: str, port: int, deadline: float = 15.0,
                 settle: float = 0.2) -> Reachability:
        """Probe the full matrix until it equals the expectation or `deadline` seconds pass;
        `reachability.observed` is the last full observation (one round, never stitched)."""
        end = time.monotonic() + deadline
        while True:
            reachability.observed = self.probe(protocol, port).observed
            if reachability.ok() or time.monotonic() >= end:
                return reachability
            time.sleep(settle)

    def reachability(self, default: bool = True) -> Reachability:
        return Reachability(self.pod_keys, default)


class EngineCluster:
    """The same cluster judged by the pure policy engine instead of packets (no root, no agent):
    `probe` answers each pair from `membrane.policy.trace` over `compute_policy`. The
    conformance cases run against both, which separates "the expectation or the engine is
    wrong" from "the datapath disagrees with the engine". Pods get made-up addresses."""

    packets = False  # verdicts appear at once: nothing to wait for

    def __init__(self, model: ClusterModel | None = None, first_ip: str = "10.200.1.10") -> None:
        import ipaddress

        self.model = model or ClusterModel()
        base = ipaddress.ip_address(first_ip)
        self.ips = {pod_key: str(base + i) for i, pod_key in enumerate(self.model.pod_keys)}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.apply(self.model.base_objects())
        self.rounds = 0

    @property
    def pod_keys(self) -> list[str]:
        return self.model.pod_keys

    def ip(self, pod_key: str) -> str:
        return self.ips[pod_key]

    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
        meta = obj.get("metadata") or {}
        kind = str(obj.get("kind"))
        return kind, "" if kind == "Namespace" else str(meta.get("namespace") or "default"), str(meta.get("name"))

    def apply(self, objects: Iterable[dict[str, Any]]) -> Any:
        from membrane.k8s_models import parse_object

        batch = list(objects)
        for obj in batch:
            parse_object(obj)  # reject what the agent would reject
        for obj in batch:
            self.objects[self._key(obj)] = obj
        return [{"kind": k[0], "namespace": k[1], "name": k[2]} for k in map(self._key, batch)]

    def delete(self, objects: Iterable[dict[str, Any]]) -> Any:
        for obj in objects:
            self.objects.pop(self._key(obj), None)

    def label_namespace(self, namespace: str, labels: dict[str, str]) -> None:
        self.apply([self.model.namespace_object(namespace, labels)])

    def label_pod(self, namespace: str, pod: str, labels: dict[str, str]) -> None:
        self.apply([self.model.pod_object(namespace, pod, labels)])

    def probe(self, protocol: str, port: int, only: Iterable[tuple[str, str]] | None = None) -> ProbeResult:
        from membrane.identities import IdentityAllocator, identity_labels
        from membrane.k8s_models import Namespace, NetworkPolicy, ObjectRef, parse_object
        from membrane.k8s_models import Pod as PodModel
        from membrane.policy import NamespaceInfo, PodInfo, Verdict, compute_policy, trace

        started = time.monotonic()
        self.rounds += 1
        parsed = {k: parse_object(v) for k, v in self.objects.items()}
        namespaces = {k[2]: NamespaceInfo.from_namespace(o) for k, o in parsed.items() if isinstance(o, Namespace)}
        allocator = IdentityAllocator()
        infos = []
        for (_, namespace, name), obj in sorted(parsed.items()):
            if isinstance(obj, PodModel):
                ns_labels = dict(namespaces[namespace].labels) if namespace in namespaces else {}
                identity = allocator.acquire(identity_labels(obj.metadata.labels, namespace, ns_labels),
                                             f"{namespace}/{name}")
                infos.append(PodInfo(obj.ref, dict(obj.metadata.labels), identity,
                                     (self.ips[key(namespace, name)],), obj.named_ports()))
        policies = [o for o in parsed.values() if isinstance(o, NetworkPolicy)]
        desired = compute_policy(namespaces.values(), infos, policies)
        observed = TruthTable(self.pod_keys, None)
        wanted = list(only) if only is not None else [(f, t) for f in self.pod_keys for t in self.pod_keys]
        for src, dst in wanted:
            if src == dst:  # a pod's own address never leaves its namespace
                observed.set(src, dst, True)
                continue
            verdict = trace(desired, infos, ObjectRef.parse(src), ObjectRef.parse(dst), port, protocol).verdict
            observed.set(src, dst, verdict is Verdict.ALLOW, "" if verdict is Verdict.ALLOW else "engine: deny")
        return ProbeResult(protocol.upper(), port, observed, time.monotonic() - started)

    def validate(self, reachability: Reachability, protocol: str, port: int, deadline: float = 0.0,
                 settle: float = 0.0) -> Reachability:
        reachability.observed = self.probe(protocol, port).observed
        return reachability

    def reachability(self, default: bool = True) -> Reachability:
        return Reachability(self.pod_keys, default)

    def close(self) -> None:
        pass


def policy(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A `networking.k8s.io/v1` NetworkPolicy object."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m membrane_testkit.lab.reachability [-f policies.yaml]`: build the model on a fresh lab
    node, apply the given objects, print the observed matrix per protocol and port, remove all."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("-f", "--file", action="append", default=[], help="YAML objects to apply first")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--ports", default=",".join(str(p) for p in PORTS))
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to wait after applying")
    args = parser.parse_args(argv)
    node = LabNode(f"reach{os.getpid() % 10000}")
    cluster = ProbeCluster(node)
    try:
        node.create()
        node.start_agent()
        cluster.setup()
        objects = [doc for path in args.file for doc in yaml.safe_load_all(Path(path).read_text()) if doc]
        if objects:
            cluster.apply(objects)
            time.sleep(args.settle)
        for protocol in args.protocols.split(","):
            for port in (int(p) for p in args.ports.split(",")):
                result = cluster.probe(protocol, port)
                print(f"\n{protocol}/{port} ({result.seconds:.2f}s, {result.observed.count(True)} reachable)")
                print(result.observed.pretty())
    finally:
        cluster.close()
        node.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
