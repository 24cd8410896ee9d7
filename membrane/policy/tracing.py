"""Tracing a connection through the desired policy (`membranectl policy trace`) (pure).

Answers "would a new connection src -> dst:port/proto be allowed, and which policies and rules
decide?" from the same `DesiredPolicy` the maps are built from, with the datapath's rules:
egress is judged at the source endpoint, ingress at the destination endpoint; a direction no
policy selects is open; in an isolated direction an entry for the peer's identity or for any
peer must cover the port, and DENY entries win over ALLOW. Addresses that are no pod resolve
through the CIDR identities by longest prefix, else WORLD. Every address (pods included) also
has a CIDR identity, its longest ipBlock prefix else WORLD, which entries may match as well:
an ipBlock selects pod addresses too (the datapath's CIDR map).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from membrane.identities import IDENTITY_ANY, ReservedIdentity
from membrane.k8s_models import ObjectRef
from membrane.policy.cidrs import lpm_lookup
from membrane.policy.entries import DesiredPolicy, Direction, Protocol, RuleRef, Verdict
from membrane.policy.inputs import PodInfo


@dataclass(frozen=True)
class Party:
    """One side of the traced connection."""

    description: str
    pod: PodInfo | None
    identity: int | None
    cidr_identity: int | None = None  # of its address (None: no address known)


@dataclass(frozen=True)
class DirectionTrace:
    direction: Direction
    endpoint: ObjectRef | None  # where it is judged; None: not a policy-enforced pod
    verdict: Verdict
    rules: tuple[RuleRef, ...] = ()  # the deciding rules (allowing, or denying)
    selected_by: tuple[ObjectRef, ...] = ()  # policies isolating the endpoint
    reason: str = ""


@dataclass(frozen=True)
class TraceResult:
    verdict: Verdict
    src: Party
    dst: Party
    protocol: Protocol
    port: int
    egress: DirectionTrace
    ingress: DirectionTrace

    def lines(self) -> list[str]:
        out = [
            f"{self.src.description} ({_identities(self.src)}) -> "
            f"{self.dst.description} ({_identities(self.dst)}) "
            f"{self.protocol.name}/{self.port}: {self.verdict.name}"
        ]
        for step in (self.egress, self.ingress):
            out.append(f"  {step.direction.label}: {step.verdict.name}: {step.reason}")
            out.extend(f"    {rule}" for rule in step.rules)
        return out


def _identities(party: Party) -> str:
    if party.cidr_identity is None or party.cidr_identity == party.identity:
        return f"identity {party.identity}"
    return f"identity {party.identity}, CIDR identity {party.cidr_identity}"


def _cidr_identity(cidrs: Mapping[str, int], address: str | None) -> int | None:
    """The CIDR identity of an address: its longest ipBlock prefix, else WORLD."""
    if address is None:
        return None
    identity = lpm_lookup(cidrs, address)
    return int(ReservedIdentity.WORLD) if identity is None else identity


def _address(pod: PodInfo) -> str | None:
    """The address the datapath sees for a pod: its first IPv4 one, else its first."""
    for ip in pod.ips:
        if ipaddress.ip_address(ip).version == 4:
            return ip
    return pod.ips[0] if pod.ips else None


def _party(
    who: ObjectRef | str, pods: Mapping[ObjectRef, PodInfo], cidrs: Mapping[str, int]
) -> Party:
    if isinstance(who, str):
        try:
            address = str(ipaddress.ip_address(who))
        except ValueError:
            who = ObjectRef.parse(who)
        else:
            cidr = _cidr_identity(cidrs, address)
            for candidate in pods.values():
                if address in candidate.ips and not candidate.host_network:
                    return Party(f"{candidate.ref} ({address})", candidate, candidate.identity, cidr)
            return Party(address, None, cidr, cidr)
    pod = pods.get(who)
    if pod is None:
        raise ValueError(f"unknown pod {who}")
    cidr = _cidr_identity(cidrs, _address(pod))
    if pod.host_network:
        return Party(f"{who} (host network)", None, int(ReservedIdentity.HOST), cidr)
    return Party(str(who), pod, pod.identity, cidr)


def _judge(
    desired: DesiredPolicy,
    direction: Direction,
    at: Party,
    peer: Party,
    protocol: Protocol,
    port: int,
) -> DirectionTrace:
    if at.pod is None:
        return DirectionTrace(direction, None, Verdict.ALLOW, reason="not a policy-enforced pod")
    endpoint = desired.endpoints.get(at.pod.ref)
    if endpoint is None:
        return DirectionTrace(
            direction, at.pod.ref, Verdict.ALLOW, reason="endpoint has no policy state"
        )
    selected = tuple(sorted(endpoint.selected_by.get(direction, ())))
    if not selected:
        return DirectionTrace(
            direction, at.pod.ref, Verdict.ALLOW,
            reason=f"no policy selects {at.pod.ref} for {direction.label}",
        )
    identities = {IDENTITY_ANY} | {i for i in (peer.identity, peer.cidr_identity) if i is not None}
    matching = [
        value
        for key, value in endpoint.entries.items()
        if key.direction is direction and key.identity in identities and key.covers(protocol, port)
    ]
    names = ", ".join(str(ref) for ref in selected)
    denies = [v for v in matching if v.verdict is Verdict.DENY]
    deciding = denies or matching
    if not deciding:
        return DirectionTrace(
            direction, at.pod.ref, Verdict.DENY, (), selected,
            reason=f"isolated by {names}; no rule allows it",
        )
    rules = tuple(sorted(frozenset().union(*(v.rules for v in deciding))))
    verdict = Verdict.DENY if denies else Verdict.ALLOW
    word = "denied" if denies else "allowed"
    return DirectionTrace(
        direction, at.pod.ref, verdict, rules, selected, reason=f"isolated by {names}; {word} by"
    )


def trace(
    desired: DesiredPolicy,
    pods: Mapping[ObjectRef, PodInfo] | Iterable[PodInfo],
    src: ObjectRef | str,
    dst: ObjectRef | str,
    port: int | str,
    protocol: Protocol | str = Protocol.TCP,
) -> TraceResult:
    """`src`/`dst`: a pod ref (or "ns/name") or an IP address; `port` may be a named port of
    the destination pod."""
    by_ref = pods if isinstance(pods, Mapping) else {pod.ref: pod for pod in pods}
    proto = protocol if isinstance(protocol, Protocol) else Protocol.parse(protocol)
    source = _party(src, by_ref, desired.cidr_identities)
    target = _party(dst, by_ref, desired.cidr_identities)
    if isinstance(port, str) and not port.isdigit():
        numbers = target.pod.resolve_port(port, proto) if target.pod else ()
        if not numbers:
            raise ValueError(f"{target.description} has no {proto.name} port named {port!r}")
        number = numbers[0]
    else:
        number = int(port)
    egress = _judge(desired, Direction.EGRESS, source, target, proto, number)
    ingress = _judge(desired, Direction.INGRESS, target, source, proto, number)
    verdict = (
        Verdict.ALLOW
        if egress.verdict is Verdict.ALLOW and ingress.verdict is Verdict.ALLOW
        else Verdict.DENY
    )
    return TraceResult(verdict, source, target, proto, number, egress, ingress)
