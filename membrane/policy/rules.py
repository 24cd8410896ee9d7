"""NetworkPolicy compiled for evaluation: selectors as matchers, ports as ranges (pure).

Compiling once per policy update keeps the hot path (recomputing endpoints) free of pydantic
and resolves every Kubernetes defaulting rule in one place:

- policyTypes: explicit, else Ingress always and Egress when egress rules exist; rules of a
  direction not in policyTypes are ignored.
- `from`/`to` empty or missing: every peer (`peers is None`); `ports` empty or missing: every
  port of every protocol (`ports is None`).
- a peer with only `podSelector` means pods of the policy's namespace; with only
  `namespaceSelector`, every pod of the selected namespaces; with both, the AND.
- a port with no protocol is TCP; no `port` is every port of that protocol; `endPort` makes an
  inclusive range; a string port is a named port resolved on the destination pod.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from membrane.k8s_models import (
    IPNetwork,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    ObjectRef,
)
from membrane.policy.entries import PORT_MAX, PORT_MIN, Direction, Protocol
from membrane.selectors import Selector, compile_selector


@dataclass(frozen=True)
class CompiledPort:
    """Numeric range, or a named port (`name` set, range unused)."""

    protocol: Protocol
    start: int = PORT_MIN
    end: int = PORT_MAX
    name: str | None = None


@dataclass(frozen=True)
class IpBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def selects_prefix(self, prefix: IPNetwork) -> bool:
        """Whether addresses whose longest ipcache match is `prefix` are in this block.

        Holds exactly when `prefix` lies inside `cidr` and inside no `except`, provided every
        cidr and except of every rule is itself an ipcache prefix (see `cidrs`).
        """
        if prefix.version != self.cidr.version or not _subnet_of(prefix, self.cidr):
            return False
        return not any(_subnet_of(prefix, e) for e in self.excepts)

    def prefixes(self) -> tuple[IPNetwork, ...]:
        return (self.cidr, *self.excepts)


def _subnet_of(inner: IPNetwork, outer: IPNetwork) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]  # same IP version, checked just before


@dataclass(frozen=True)
class CompiledPeer:
    """Selectors (None = not given) or an ipBlock."""

    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ip_block: IpBlock | None = None

@dataclass(frozen=True)
class CompiledRule:
    direction: Direction
    index: int
    peers: tuple[CompiledPeer, ...] | None  # None: every peer
    ports: tuple[CompiledPort, ...] | None  # None: every port, every protocol

    @property
    def has_named_ports(self) -> bool:
        return any(p.name is not None for p in self.ports or ())


@dataclass(frozen=True)
class CompiledPolicy:
    ref: ObjectRef
    subject: Selector
    directions: frozenset[Direction]
    rules: tuple[CompiledRule, ...]

    def ip_blocks(self) -> tuple[IpBlock, ...]:
        return tuple(
            peer.ip_block
            for rule in self.rules
            for peer in rule.peers or ()
            if peer.ip_block is not None
        )

    def prefixes(self) -> frozenset[str]:
        """Every cidr and except this policy needs in the ipcache (normalised strings)."""
        return frozenset(str(p) for block in self.ip_blocks() for p in block.prefixes())


def _compile_port(port: NetworkPolicyPort) -> CompiledPort:
    protocol = Protocol.parse(port.protocol)
    if port.port is None:
        return CompiledPort(protocol)
    if isinstance(port.port, str):
        return CompiledPort(protocol, name=port.port)
    return CompiledPort(protocol, port.port, port.end_port or port.port)


def _compile_peer(peer: NetworkPolicyPeer) -> CompiledPeer:
    if peer.ip_block is not None:
        block = peer.ip_block
        return CompiledPeer(ip_block=IpBlock(block.network, block.except_networks))
    return CompiledPeer(
        pod_selector=None if peer.pod_selector is None else compile_selector(peer.pod_selector),
        namespace_selector=(
            None if peer.namespace_selector is None else compile_selector(peer.namespace_selector)
        ),
    )


def compile_policy(policy: NetworkPolicy) -> CompiledPolicy:
    spec = policy.spec
    directions = frozenset(
        Direction.INGRESS if t == "Ingress" else Direction.EGRESS
        for t in spec.effective_policy_types()
    )
    rules: list[CompiledRule] = []
    if Direction.INGRESS in directions:
        for i, ingress in enumerate(spec.ingress or ()):
            rules.append(
                CompiledRule(
                    Direction.INGRESS,
                    i,
                    tuple(_compile_peer(p) for p in ingress.from_) or None,
                    tuple(_compile_port(p) for p in ingress.ports) or None,
                )
            )
    if Direction.EGRESS in directions:
        for i, egress in enumerate(spec.egress or ()):
            rules.append(
                CompiledRule(
                    Direction.EGRESS,
                    i,
                    tuple(_compile_peer(p) for p in egress.to) or None,
                    tuple(_compile_port(p) for p in egress.ports) or None,
                )
            )
    return CompiledPolicy(
        ref=policy.ref,
        subject=compile_selector(spec.pod_selector),
        directions=directions,
        rules=tuple(rules),
    )


def parse_prefix(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)
