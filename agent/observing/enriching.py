"""Turning decoded events into `Flow` records: wall-clock time, endpoints, identities, policies.

The observer knows nothing about how the agent tracks pods, identities or policies: it asks an
`EndpointDirectory` (implemented by the agent's policy/identity wiring). Lookups happen for
every event, so implementations should be dictionary reads; the enricher additionally caches
the `Endpoint` records it builds per (ip, identity) and drops the cache whenever the directory's
`generation()` changes (call `invalidate()` otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from membrane.agent.datapath.layout import EventType, FlowPath
from membrane.flows import (
    Direction,
    Endpoint,
    Flow,
    FlowType,
    Verdict,
    identity_name,
    labels_from_strings,
    protocol_name,
    tcp_flag_names,
)

from .events import VERDICT_DROPPED, RawEvent, reason_name


@dataclass(frozen=True)
class EndpointInfo:
    """What the agent knows about an address: a local or remote pod."""

    namespace: str
    pod: str
    labels: Mapping[str, str] = field(default_factory=dict)
    identity: int = 0


@runtime_checkable
class EndpointDirectory(Protocol):
    """The agent's answers to "who is this?" (implemented by the policy/identity wiring)."""

    def lookup_ip(self, ip: str) -> EndpointInfo | None:
        """The pod owning `ip` (dotted IPv4), or None for anything that is not a pod."""

    def identity_labels(self, identity: int) -> Mapping[str, str] | Iterable[str] | None:
        """Labels of an identity: a dict, or canonical strings ("k8s:app=web"); None if unknown."""

    def describe_rule(self, rule_ref: int) -> list[str]:
        """Names of the policies behind a policy map `rule_ref` ("namespace/name"); [] if none."""


class NullDirectory:
    """Knows nobody: flows still carry addresses, identities and reserved names."""

    def lookup_ip(self, ip: str) -> EndpointInfo | None:
        return None

    def identity_labels(self, identity: int) -> Mapping[str, str] | Iterable[str] | None:
        return None

    def describe_rule(self, rule_ref: int) -> list[str]:
        return []


class StaticDirectory:
    """A fixed directory (tests, benchmarks, membranectl offline use)."""

    def __init__(self, endpoints: Mapping[str, EndpointInfo] | None = None,
                 identities: Mapping[int, Mapping[str, str]] | None = None,
                 rules: Mapping[int, list[str]] | None = None) -> None:
        self.endpoints = dict(endpoints or {})
        self.identities = dict(identities or {})
        self.rules = dict(rules or {})

    def lookup_ip(self, ip: str) -> EndpointInfo | None:
        return self.endpoints.get(ip)

    def identity_labels(self, identity: int) -> Mapping[str, str] | None:
        return self.identities.get(identity)

    def describe_rule(self, rule_ref: int) -> list[str]:
        return list(self.rules.get(rule_ref, []))


class MonotonicClock:
    """CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) -> wall clock.

    The offset between the clocks is re-measured at most every `refresh_s` seconds so that an
    NTP step of the wall clock shows up in flow times within that period, without paying two
    clock reads per event.
    """

    def __init__(self, refresh_s: float = 1.0) -> None:
        self.refresh_ns = int(refresh_s * 1e9)
        self._offset_ns = 0
        self._measured_at = -self.refresh_ns - 1
        self.refresh()

    def refresh(self) -> None:
        mono = time.monotonic_ns()  # CLOCK_MONOTONIC on Linux, the clock bpf_ktime_get_ns reads
        self._offset_ns = time.time_ns() - mono
        self._measured_at = mono

    def wall_ns(self, mono_ns: int) -> int:
        if mono_ns - self._measured_at > self.refresh_ns:
            self.refresh()
        return mono_ns + self._offset_ns

    def to_datetime(self, mono_ns: int) -> datetime:
        wall = self.wall_ns(mono_ns)
        return datetime.fromtimestamp(wall // 1_000_000_000, tz=UTC).replace(
            microsecond=(wall % 1_000_000_000) // 1000)


_POLICY_DROPS = (7, 8)  # enum mb_reason: DROP_POLICY_INGRESS, DROP_POLICY_EGRESS
# enum mb_reason: DROP_PREFILTER_RULE, _DENY, _RATE. Their rule_ref is the prefilter's counter slot
# (a rule or a deny list), never a policy rule: named through describe_prefilter.
_PREFILTER_DROPS = (15, 16, 17)

_PATHS: dict[int, str] = {int(p): p.name.lower() for p in FlowPath}

_FLOW_TYPES: dict[int, tuple[FlowType, str]] = {
    EventType.DROP: (FlowType.DROP, ""),
    EventType.POLICY_VERDICT: (FlowType.POLICY_VERDICT, ""),
    EventType.TRACE_NEW: (FlowType.TRACE, "new"),
    EventType.TRACE_END: (FlowType.TRACE, "end"),
    EventType.TRANSLATION: (FlowType.TRACE, "translation"),
}
_ENDPOINT_CACHE_MAX = 65536


class Enricher:
    """RawEvent -> Flow, with per-(ip, identity) endpoint caching."""

    def __init__(self, node: str, directory: EndpointDirectory | None = None,
                 clock: MonotonicClock | None = None) -> None:
        self.node = node
        self.directory: EndpointDirectory = directory or NullDirectory()
        self.clock = clock or MonotonicClock()
        self._endpoints: dict[tuple[str, int], Endpoint] = {}
        self._rules: dict[int, tuple[str, ...]] = {}
        self._generation: object = None
        # The Service of an event (its translation event, or a flow of a connection a socket hook
        # translated): (service, translation) or None. Set by the agent when it balances Services.
        self.services: Callable[[RawEvent], tuple[str, str] | None] = lambda ev: None

    def invalidate(self) -> None:
        """Forget cached endpoints and rule names (pods, identities or policies changed)."""
        self._endpoints.clear()
        self._rules.clear()

    def _check_generation(self) -> None:
        gen = getattr(self.directory, "generation", None)
        if gen is not None:
            current = gen()
            if current != self._generation:
                self._generation = current
                self.invalidate()

    def endpoint(self, ip: str, identity: int) -> Endpoint:
        key = (ip, identity)
        ep = self._endpoints.get(key)
        if ep is None:
            ep = self._build_endpoint(ip, identity)
            if len(self._endpoints) >= _ENDPOINT_CACHE_MAX:  # many world addresses: start over
                self._endpoints.clear()
            self._endpoints[key] = ep
        return ep

    def _build_endpoint(self, ip: str, identity: int) -> Endpoint:
        info = self.directory.lookup_ip(ip)
        if info is not None:
            ident = identity or info.identity
            return Endpoint(identity=ident, identity_name=identity_name(ident), namespace=info.namespace,
                            pod=info.pod, labels=dict(info.labels))
        labels = self.directory.identity_labels(identity) if identity else None
        return Endpoint(identity=identity, identity_name=identity_name(identity),
                        labels=labels_from_strings(labels) if labels is not None else {})

    def policies(self, rule_ref: int) -> tuple[str, ...]:
        if not rule_ref:
            return ()
        names = self._rules.get(rule_ref)
        if names is None:
            names = self._rules[rule_ref] = tuple(self.directory.describe_rule(rule_ref))
        return names

    def prefilter(self, rule_ref: int) -> tuple[str, ...]:
        """The prefilter rule or deny list a drop counts against ("prefilter/cve.frag-of-death")."""
        ask = getattr(self.directory, "describe_prefilter", None)
        return tuple(ask(rule_ref)) if ask is not None and rule_ref else ()

    def isolating(self, ev: RawEvent, dropped: bool) -> tuple[str, ...]:
        """A default-deny drop matches no rule: name the policies that isolate the pod instead."""
        ask = getattr(self.directory, "isolating_policies", None)
        if not dropped or ev.rule_ref or ask is None or ev.reason not in _POLICY_DROPS:
            return ()
        egress = ev.direction == 1
        return tuple(ask(ev.saddr if egress else ev.daddr, "egress" if egress else "ingress"))

    def flow(self, ev: RawEvent) -> Flow:
        self._check_generation()
        ftype, trace_event = _FLOW_TYPES.get(ev.type, (FlowType.TRACE, f"unknown-{ev.type}"))
        dropped = ev.verdict == VERDICT_DROPPED
        service = self.services(ev)
        # Trusted, already-typed values: model_construct skips validation (the hot path).
        return Flow.model_construct(
            time=self.clock.to_datetime(ev.ts_ns),
            node=self.node,
            type=ftype,
            trace_event=trace_event,
            verdict=Verdict.DROPPED if dropped else Verdict.FORWARDED,
            drop_reason=reason_name(ev.reason) if dropped else "",
            direction=Direction.EGRESS if ev.direction == 1 else Direction.INGRESS,
            is_reply=ev.is_reply,
            ip_version=4,
            source_ip=ev.saddr,
            destination_ip=ev.daddr,
            protocol=protocol_name(ev.nexthdr),
            source_port=ev.sport,
            destination_port=ev.dport,
            tcp_flags=tcp_flag_names(ev.tcp_flags) if ev.nexthdr == 6 else (),
            source=self.endpoint(ev.saddr, ev.src_identity),
            destination=self.endpoint(ev.daddr, ev.dst_identity),
            policies=(self.prefilter(ev.rule_ref) if ev.reason in _PREFILTER_DROPS and dropped
                      else self.policies(ev.rule_ref) or self.isolating(ev, dropped)),
            count=max(ev.count, 1),
            bytes=ev.len,
            ifindex=ev.ifindex,
            endpoint_id=ev.endpoint_id,
            path=_PATHS.get(ev.path, ""),
            service=service[0] if service else "",
            translation=service[1] if service else "",
        )
