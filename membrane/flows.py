"""Flow records and flow filters (pure): what `membranectl observe` and the Observer API speak.

A `Flow` is one datapath event (a drop, a policy verdict, a new or ended connection) decoded
and enriched with who the endpoints are. A `FlowFilter` selects flows the way Hubble does:

- within one filter, every field that is set must match (AND); a field holding several values
  matches when any of them does (OR);
- a list of filters matches when any filter does (OR);
- a flow is selected when it matches the allow-list (or the allow-list is empty) and matches
  no filter of the deny-list.

Fields without a `source_`/`destination_` prefix match either end of the flow, so
`FlowFilter(namespace=["shop"], protocol=["tcp"])` is "TCP flows touching namespace shop".

Filters are compiled once into plain predicates (`compile_filters`) because a follower
evaluates them on every flow the node produces.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from membrane.selectors import Operator, Requirement, Selector

# Reserved identities (membrane.identities.ReservedIdentity), named as flow logs show them.
RESERVED_IDENTITY_NAMES: dict[int, str] = {
    1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init", 6: "remote-node", 7: "kube-apiserver",
}
RESERVED_IDENTITY_NUMBERS: dict[str, int] = {name: num for num, name in RESERVED_IDENTITY_NAMES.items()}

TCP_FLAG_BITS: tuple[tuple[int, str], ...] = (
    (0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"), (0x20, "URG"),
    (0x40, "ECE"), (0x80, "CWR"),
)
PROTOCOL_NAMES: dict[int, str] = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}


class Verdict(StrEnum):
    FORWARDED = "FORWARDED"
    DROPPED = "DROPPED"


class FlowType(StrEnum):
    DROP = "drop"
    POLICY_VERDICT = "policy-verdict"
    TRACE = "trace"


class Direction(StrEnum):
    """From the pod's point of view, as in the datapath."""

    INGRESS = "ingress"
    EGRESS = "egress"


class Endpoint(BaseModel):
    """One end of a flow. `pod` is empty for anything that is not a pod of the cluster."""

    model_config = ConfigDict(frozen=True)

    identity: int = 0
    identity_name: str = ""  # reserved identities: "world", "host", ...
    namespace: str = ""
    pod: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    def display(self) -> str:
        if self.pod:
            return f"{self.namespace}/{self.pod}"
        return self.identity_name


class Flow(BaseModel):
    model_config = ConfigDict(frozen=True)

    time: datetime
    node: str = ""
    type: FlowType
    trace_event: str = ""  # trace flows: "new", "end", "translation"
    verdict: Verdict
    drop_reason: str = ""  # enum mb_reason name, empty unless dropped
    direction: Direction
    is_reply: bool = False
    ip_version: int = 4
    source_ip: str
    destination_ip: str
    protocol: str  # "TCP", "UDP", "ICMP" or "proto-<n>"
    source_port: int = 0  # ICMP echo: the identifier
    destination_port: int = 0
    tcp_flags: tuple[str, ...] = ()
    source: Endpoint = Field(default_factory=Endpoint)
    destination: Endpoint = Field(default_factory=Endpoint)
    policies: tuple[str, ...] = ()  # the policies whose rules decided (policy verdicts, policy drops)
    count: int = 1  # packets this flow stands for (the datapath aggregates)
    bytes: int = 0
    ifindex: int = 0
    endpoint_id: int = 0
    # How a new flow crosses the node: "redirect" (straight into the pod, around the node's stack:
    # pod to pod), "stack" (through the node's stack, where kube-proxy or a hostPort may translate
    # it), "tunnel" (straight to another node); empty when the event does not say.
    path: str = ""
    service: str = ""  # namespace/name of the Service the connection went through ("" unknown / none)
    translation: str = ""  # "service address:port -> backend address:port"


def tcp_flag_names(bits: int) -> tuple[str, ...]:
    return tuple(name for bit, name in TCP_FLAG_BITS if bits & bit)


def protocol_name(nexthdr: int) -> str:
    return PROTOCOL_NAMES.get(nexthdr) or f"proto-{nexthdr}"


def identity_name(identity: int) -> str:
    return RESERVED_IDENTITY_NAMES.get(identity, "")


# --- filters --------------------------------------------------------------------------------------


class FlowFilter(BaseModel):
    """One filter: set fields AND together, values of one field OR together.

    Pods are "namespace/name-prefix" (no "/" means namespace "default"), "namespace/" is any pod
    of the namespace. Labels are kubectl selectors ("app=web,tier in (a,b),!canary"). IPs may be
    CIDRs. Identities are numbers (reserved names are translated by the CLI).
    """

    namespace: list[str] = Field(default_factory=list)
    source_namespace: list[str] = Field(default_factory=list)
    destination_namespace: list[str] = Field(default_factory=list)
    pod: list[str] = Field(default_factory=list)
    source_pod: list[str] = Field(default_factory=list)
    destination_pod: list[str] = Field(default_factory=list)
    label: list[str] = Field(default_factory=list)
    source_label: list[str] = Field(default_factory=list)
    destination_label: list[str] = Field(default_factory=list)
    identity: list[int] = Field(default_factory=list)
    source_identity: list[int] = Field(default_factory=list)
    destination_identity: list[int] = Field(default_factory=list)
    ip: list[str] = Field(default_factory=list)
    source_ip: list[str] = Field(default_factory=list)
    destination_ip: list[str] = Field(default_factory=list)
    port: list[int] = Field(default_factory=list)
    source_port: list[int] = Field(default_factory=list)
    destination_port: list[int] = Field(default_factory=list)
    protocol: list[str] = Field(default_factory=list)
    verdict: list[Verdict] = Field(default_factory=list)
    drop_reason: list[str] = Field(default_factory=list)
    direction: list[Direction] = Field(default_factory=list)
    node: list[str] = Field(default_factory=list)
    type: list[FlowType] = Field(default_factory=list)

Predicate = Callable[[Flow], bool]
_Side = Callable[[Flow], Endpoint]
_SRC: _Side = lambda f: f.source  # noqa: E731
_DST: _Side = lambda f: f.destination  # noqa: E731


class FilterError(ValueError):
    """A filter value that cannot be understood (bad selector, IP, pod)."""


def parse_label_selector(text: str) -> Selector:
    """kubectl label selector syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`."""
    reqs: list[Requirement] = []
    for part in _split_top_level(text):
        part = part.strip()
        if not part:
            continue
        if m := re.fullmatch(r"([^\s=!(),]+)\s+(in|notin)\s*\(([^)]*)\)", part):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            op = Operator.IN if m.group(2) == "in" else Operator.NOT_IN
            reqs.append(Requirement(m.group(1), op, values))
        elif m := re.fullmatch(r"([^\s=!(),]+)\s*(!=|==|=)\s*([^\s=!(),]*)", part):
            op = Operator.NOT_IN if m.group(2) == "!=" else Operator.IN
            reqs.append(Requirement(m.group(1), op, (m.group(3),)))
        elif m := re.fullmatch(r"!\s*([^\s=!(),]+)", part):
            reqs.append(Requirement(m.group(1), Operator.DOES_NOT_EXIST))
        elif re.fullmatch(r"[^\s=!(),]+", part):
            reqs.append(Requirement(part, Operator.EXISTS))
        else:
            raise FilterError(f"bad label selector {text!r}: cannot parse {part!r}")
    return Selector.of(requirements=reqs)


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses ("a=b,c in (x,y)" -> two requirements)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _pod_matcher(spec: str) -> Callable[[Endpoint], bool]:
    namespace, _, prefix = spec.rpartition("/")
    namespace = namespace or "default"
    if not prefix and not spec.endswith("/"):
        raise FilterError(f"bad pod {spec!r}: want [namespace/]name or namespace/")
    return lambda ep: bool(ep.pod) and ep.namespace == namespace and ep.pod.startswith(prefix)


def _fields_match(getters: tuple[str, ...], test: Callable[[Any], bool]) -> Predicate:
    """A predicate true when `test` holds for any of the flow's fields named in `getters`."""
    return lambda f: any(test(getattr(f, g)) for g in getters)


def _any_matcher(matchers: list[Callable[[str], bool]]) -> Callable[[Any], bool]:
    return lambda value: any(m(value) for m in matchers)


def _ip_matcher(spec: str) -> Callable[[str], bool]:
    try:
        net = ipaddress.ip_network(spec, strict=False)
    except ValueError as exc:
        raise FilterError(f"bad IP or CIDR {spec!r}") from exc
    if net.num_addresses == 1:
        text = str(net.network_address)
        return lambda ip: ip == text
    return lambda ip: _in_network(ip, net)


def _in_network(ip: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_address(ip) in net
    except ValueError:
        return False


def _normal_reason(reason: str) -> str:
    reason = reason.strip().upper().replace("-", "_")
    return reason[5:] if reason.startswith("DROP_") else reason


def _any(preds: Sequence[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    return lambda f: any(p(f) for p in preds)


def _sided(values: Iterable[str], make: Callable[[str], Callable[[Endpoint], bool]],
           sides: Sequence[_Side]) -> Predicate:
    """Match any value on any of the given sides of the flow."""
    matchers = [make(v) for v in values]
    return lambda f: any(m(side(f)) for side in sides for m in matchers)


def compile_filter(flt: FlowFilter) -> Predicate:
    """One filter -> predicate (AND of the set fields)."""
    both, src, dst = (_SRC, _DST), (_SRC,), (_DST,)
    checks: list[Predicate] = []

    def ns(v: str) -> Callable[[Endpoint], bool]:
        return lambda ep: ep.namespace == v

    def label(v: str) -> Callable[[Endpoint], bool]:
        sel = parse_label_selector(v)
        return lambda ep: sel.matches(ep.labels)

    def ident(v: str) -> Callable[[Endpoint], bool]:
        num = int(v)
        return lambda ep: ep.identity == num

    for field, make, sides in (
        ("namespace", ns, both), ("source_namespace", ns, src), ("destination_namespace", ns, dst),
        ("pod", _pod_matcher, both), ("source_pod", _pod_matcher, src), ("destination_pod", _pod_matcher, dst),
        ("label", label, both), ("source_label", label, src), ("destination_label", label, dst),
        ("identity", ident, both), ("source_identity", ident, src), ("destination_identity", ident, dst),
    ):
        values = getattr(flt, field)
        if values:
            checks.append(_sided([str(v) for v in values], make, sides))

    for field, getters in (("ip", ("source_ip", "destination_ip")), ("source_ip", ("source_ip",)),
                           ("destination_ip", ("destination_ip",))):
        if specs := getattr(flt, field):
            ms = [_ip_matcher(s) for s in specs]
            checks.append(_fields_match(getters, _any_matcher(ms)))
    for field, getters in (("port", ("source_port", "destination_port")), ("source_port", ("source_port",)),
                           ("destination_port", ("destination_port",))):
        if ports := getattr(flt, field):
            wanted = frozenset(ports)
            checks.append(_fields_match(getters, wanted.__contains__))
    if flt.protocol:
        protos = frozenset(p.upper() for p in flt.protocol)
        checks.append(lambda f: f.protocol.upper() in protos)
    if flt.verdict:
        verdicts = frozenset(flt.verdict)
        checks.append(lambda f: f.verdict in verdicts)
    if flt.drop_reason:
        reasons = frozenset(_normal_reason(r) for r in flt.drop_reason)
        checks.append(lambda f: bool(f.drop_reason) and _normal_reason(f.drop_reason) in reasons)
    if flt.direction:
        directions = frozenset(flt.direction)
        checks.append(lambda f: f.direction in directions)
    if flt.node:
        nodes = frozenset(flt.node)
        checks.append(lambda f: f.node in nodes)
    if flt.type:
        types = frozenset(flt.type)
        checks.append(lambda f: f.type in types)
    if not checks:
        return lambda f: True
    return lambda f: all(c(f) for c in checks)


def compile_filters(allow: Sequence[FlowFilter] = (), deny: Sequence[FlowFilter] = ()) -> Predicate:
    """Allow-list (any filter; empty = everything) minus deny-list (any filter)."""
    allowed = _any([compile_filter(f) for f in allow]) if allow else None
    denied = _any([compile_filter(f) for f in deny]) if deny else None
    if allowed is None and denied is None:
        return lambda f: True
    if denied is None:
        assert allowed is not None
        return allowed
    if allowed is None:
        return lambda f: not denied(f)
    return lambda f: allowed(f) and not denied(f)


# --- time specs -----------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Go-style durations: "90s", "5m", "1h30m", "250ms", "2d"."""
    pos, total = 0, 0.0
    text = text.strip()
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"bad duration {text!r} (want e.g. 30s, 5m, 1h30m)")
    return timedelta(seconds=total)


def parse_time_spec(text: str, now: datetime) -> datetime:
    """A duration ago ("5m") or an absolute RFC 3339 / ISO 8601 time (UTC when no zone given)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"bad time {text!r}: want a duration (5m) or a timestamp (2024-05-01T12:00:00Z)") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# --- where the Observer listens -------------------------------------------------------------------


def observer_socket_for(api_socket: str | Path) -> Path:
    """Default Observer socket next to an agent API socket: /run/membrane/node1.sock ->
    /run/membrane/node1.observer.sock. Agent and membranectl both derive it, so a lab agent
    started with only `--api-socket` is observable without more flags."""
    path = Path(api_socket)
    return path.with_name(f"{path.stem}.observer.sock")


def flows_from_json_lines(lines: Iterable[str]) -> list[Flow]:
    """Read `membranectl observe -o json` output back (tests, offline service maps)."""
    return [Flow.model_validate_json(line) for line in lines if line.strip()]


def labels_from_strings(labels: Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    """Identity labels ("k8s:app=web", "reserved:world") -> a dict selectors can match.

    Pod labels lose their "k8s:" source so `--label app=web` matches both local pods and
    identities of remote ones; other sources keep their prefix (they are not pod labels).
    """
    if isinstance(labels, Mapping):
        return dict(labels)
    out: dict[str, str] = {}
    for item in labels:
        key, _, value = item.partition("=")
        if key.startswith("k8s:"):
            key = key[4:]
        out[key] = value
    return out
