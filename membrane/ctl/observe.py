"""`membranectl observe`: read flows from an agent's Observer (like `hubble observe`).

Hooked into membranectl by `add_observe_parser(subparsers)` and `run_observe(args)`.
Filter flags build one allow-list filter (different flags AND, repeated flags OR); every
`--not-<flag>` builds its own deny-list filter, so `--not-namespace kube-system --not-protocol udp`
hides kube-system flows and UDP flows. grpc is imported only when connecting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from membrane.api import grpc_limits
from membrane.flows import (
    RESERVED_IDENTITY_NUMBERS,
    Direction,
    Endpoint,
    FilterError,
    Flow,
    FlowFilter,
    FlowType,
    Verdict,
    compile_filters,
    observer_socket_for,
    parse_time_spec,
)

from .client import socket_path

DEFAULT_LAST = 20  # like hubble observe: a screenful unless asked otherwise

# flag -> (FlowFilter field, value type, help)
_FILTER_FLAGS: dict[str, tuple[str, str, str]] = {
    "namespace": ("namespace", "str", "either end in namespace NS"),
    "from-namespace": ("source_namespace", "str", "source in namespace NS"),
    "to-namespace": ("destination_namespace", "str", "destination in namespace NS"),
    "pod": ("pod", "str", "either end is pod [NS/]NAME (name prefix; NS/ for any pod of NS)"),
    "from-pod": ("source_pod", "str", "source pod [NS/]NAME"),
    "to-pod": ("destination_pod", "str", "destination pod [NS/]NAME"),
    "label": ("label", "str", "either end matches a label selector (app=web,tier in (a,b),!canary)"),
    "from-label": ("source_label", "str", "source matches a label selector"),
    "to-label": ("destination_label", "str", "destination matches a label selector"),
    "identity": ("identity", "identity", "either end has identity N (or host, world, ...)"),
    "from-identity": ("source_identity", "identity", "source identity"),
    "to-identity": ("destination_identity", "identity", "destination identity"),
    "ip": ("ip", "str", "either address is IP or in CIDR"),
    "from-ip": ("source_ip", "str", "source IP or CIDR"),
    "to-ip": ("destination_ip", "str", "destination IP or CIDR"),
    "port": ("port", "int", "either port"),
    "from-port": ("source_port", "int", "source port"),
    "to-port": ("destination_port", "int", "destination port"),
    "protocol": ("protocol", "str", "tcp, udp, icmp"),
    "verdict": ("verdict", "verdict", "forwarded or dropped"),
    "drop-reason": ("drop_reason", "str", "drop reason (e.g. policy_ingress, DROP_SPOOFED_IP)"),
    "direction": ("direction", "direction", "ingress or egress (pod's point of view)"),
    "node": ("node", "str", "node name"),
    "type": ("type", "type", "drop, policy-verdict or trace"),
}


def add_observe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `observe` subcommand to membranectl's subparsers."""
    p = subparsers.add_parser("observe", help="show flows seen by the agent's datapath",
                              description="Show flows from an agent's Observer. Different filter flags "
                              "AND together, repeating a flag ORs its values; --not-FLAG hides matches.")
    p.add_argument("--server", help="observer address: unix:///path or HOST:PORT (default "
                   "$MEMBRANE_OBSERVER_SERVER, else <agent socket>.observer.sock)")
    p.add_argument("--tls-dir", help="mutual TLS to a HOST:PORT observer (--observer-tcp): a directory with "
                   "ca.crt, tls.crt and tls.key issued by the cluster CA (default $MEMBRANE_OBSERVER_TLS_DIR)")
    p.add_argument("--tls-server-name", help="the node name the observer's certificate carries (default: "
                   "the host of --server)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    p.add_argument("--last", type=int, metavar="N", help=f"last N matching flows (default {DEFAULT_LAST}; "
                   "0: all held; with -f: none)")
    p.add_argument("--since", help="flows since a duration ago (5m, 1h30m) or a timestamp")
    p.add_argument("--until", help="flows until a duration ago or a timestamp")
    p.add_argument("--graph", metavar="FILE.svg", help="also write a service map of the flows read")
    p.add_argument("--status", action="store_true", help="print the observer's status and exit")
    for flag, (_field, kind, text) in _FILTER_FLAGS.items():
        p.add_argument(f"--{flag}", action="append", default=[], metavar=kind.upper(), help=text)
        p.add_argument(f"--not-{flag}", action="append", default=[], metavar=kind.upper(), help=argparse.SUPPRESS)
    return p  # type: ignore[no-any-return]  # argparse's add_parser, reached through an untyped subparsers


def _value(kind: str, raw: str) -> Any:
    raw = raw.strip()
    if kind == "int":
        return int(raw)
    if kind == "identity":
        return RESERVED_IDENTITY_NUMBERS[raw] if raw in RESERVED_IDENTITY_NUMBERS else int(raw)
    if kind == "verdict":
        return Verdict(raw.upper())
    if kind == "direction":
        return Direction(raw.lower())
    if kind == "type":
        return FlowType(raw.lower())
    return raw


def build_filters(args: argparse.Namespace) -> tuple[list[FlowFilter], list[FlowFilter]]:
    """(allow-list, deny-list) from the flags; raises ValueError on bad values."""
    allow: dict[str, list[Any]] = {}
    deny: list[FlowFilter] = []
    for flag, (field, kind, _text) in _FILTER_FLAGS.items():
        attr = flag.replace("-", "_")
        values = [_value(kind, v) for v in getattr(args, attr, [])]
        if values:
            allow[field] = values
        negated = [_value(kind, v) for v in getattr(args, f"not_{attr}", [])]
        if negated:
            deny.append(FlowFilter(**{field: negated}))
    allow_list = [FlowFilter(**allow)] if allow else []
    compile_filters(allow_list, deny)  # bad selectors/CIDRs fail here, before connecting
    return allow_list, deny


def default_server(agent_socket: str | None) -> str:
    return os.environ.get("MEMBRANE_OBSERVER_SERVER") or f"unix://{observer_socket_for(socket_path(agent_socket))}"


# --- output ---------------------------------------------------------------------------------------


def _endpoint_text(ep: Endpoint, ip: str, port: int, with_port: bool) -> str:
    where = f"{ep.namespace}/{ep.pod}" if ep.pod else ip
    if with_port and port:
        where += f":{port}"
    if ep.identity_name:
        return f"{where} ({ep.identity_name})"
    return f"{where} (ID:{ep.identity})" if ep.identity else where


def format_compact(flow: Flow) -> str:
    """`Nov 22 03:12:18.261: default/web-1:40000 (ID:256) -> db/pg-0:5432 (ID:257) policy-verdict EGRESS
    TCP SYN FORWARDED by db/allow-web`"""
    with_ports = flow.protocol in ("TCP", "UDP", "SCTP")
    local = flow.time.astimezone()
    when = local.strftime("%b %d %H:%M:%S.") + f"{local.microsecond // 1000:03d}"
    kind = flow.type.value + (f":{flow.trace_event}" if flow.trace_event else "")
    parts = [f"{when}:", _endpoint_text(flow.source, flow.source_ip, flow.source_port, with_ports),
             "<-" if flow.is_reply else "->",
             _endpoint_text(flow.destination, flow.destination_ip, flow.destination_port, with_ports),
             kind, flow.direction.value.upper(), flow.protocol]
    if flow.tcp_flags:
        parts.append(",".join(flow.tcp_flags))
    parts.append(flow.verdict.value)
    if flow.path == "stack":  # the node's netfilter may translate it (kube-proxy, hostPorts)
        parts.append("via-stack")
    if flow.drop_reason:
        parts.append(f"({flow.drop_reason})")
    if flow.policies:
        parts.append("by " + ", ".join(flow.policies))
    if flow.service:
        parts.append(f"service {flow.service} ({flow.translation})" if flow.translation else f"service {flow.service}")
    if flow.count > 1:
        parts.append(f"x{flow.count}")
    return " ".join(parts)


def print_flow(flow: Flow, output: str, out: TextIO) -> None:
    if output == "yaml":  # a stream of documents, one per flow
        import yaml

        out.write("---\n" + yaml.safe_dump(flow.model_dump(mode="json"), sort_keys=False))
    else:
        out.write((flow.model_dump_json() if output == "json" else format_compact(flow)) + "\n")
    out.flush()


# --- talking to the server ------------------------------------------------------------------------


def _channel(server: str, tls_dir: str | None = None, server_name: str | None = None) -> Any:
    """A channel to the observer: plaintext (unix socket), or mutual TLS with `tls_dir`."""
    import grpc

    options = grpc_limits.OBSERVER.client_options()
    tls_dir = tls_dir or os.environ.get("MEMBRANE_OBSERVER_TLS_DIR")
    if not tls_dir:
        return grpc.insecure_channel(server, options=options)
    directory = Path(tls_dir)
    creds = grpc.ssl_channel_credentials(root_certificates=(directory / "ca.crt").read_bytes(),
                                         private_key=(directory / "tls.key").read_bytes(),
                                         certificate_chain=(directory / "tls.crt").read_bytes())
    name = server_name or server.rpartition(":")[0].strip("[]")
    return grpc.secure_channel(server, creds, options=[*options, ("grpc.ssl_target_name_override", name)])


def _stream(server: str, request: Any, timeout: float | None, tls_dir: str | None = None,
            server_name: str | None = None) -> Iterator[Any]:
    from membrane.api.observer.v1 import observer_pb2_grpc as pb_grpc

    with _channel(server, tls_dir, server_name) as channel:
        call = pb_grpc.ObserverStub(channel).GetFlows(request, timeout=timeout)
        try:
            yield from call
        finally:
            call.cancel()


def _status(server: str, tls_dir: str | None = None, server_name: str | None = None) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    from membrane.api.observer.v1 import observer_pb2 as pb
    from membrane.api.observer.v1 import observer_pb2_grpc as pb_grpc

    with _channel(server, tls_dir, server_name) as channel:
        reply = pb_grpc.ObserverStub(channel).ServerStatus(pb.ServerStatusRequest(), timeout=10)
    return MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def fetch_flows(server: str, number: int = 0, follow: bool = False, since: datetime | None = None,
                until: datetime | None = None, allow: Iterable[FlowFilter] = (),
                deny: Iterable[FlowFilter] = (), timeout: float | None = None,
                batch: bool = True, tls_dir: str | None = None,
                server_name: str | None = None) -> Iterator[Flow | int]:
    """Flows from an Observer; an int is a count of flows the server says this reader lost."""
    from membrane.api.observer_codec import flow_from_pb, request_to_pb

    request = request_to_pb(number, follow, since, until, list(allow), list(deny), batch=batch)
    for resp in _stream(server, request, timeout, tls_dir, server_name):
        kind = resp.WhichOneof("response_types")
        if kind == "flows":
            for msg in resp.flows.flows:
                yield flow_from_pb(msg)
        elif kind == "flow":
            yield flow_from_pb(resp.flow)
        elif kind == "lost_events":
            yield resp.lost_events.count


def run_observe(args: argparse.Namespace) -> int:
    """Run `membranectl observe`; returns the exit code."""
    # membranectl's -o (given anywhere): one compact line per flow, JSON lines or YAML documents
    output = str(args.output) if getattr(args, "output", None) in ("json", "yaml") else "compact"
    server = args.server or default_server(getattr(args, "socket", None))
    try:
        allow, deny = build_filters(args)
        now = datetime.now(UTC)
        since = parse_time_spec(args.since, now) if args.since else None
        until = parse_time_spec(args.until, now) if args.until else None
    except (ValueError, KeyError, FilterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.last is not None:
        number = args.last
    else:  # a screenful, unless following, bounded by time, or mapping (the map wants everything)
        number = 0 if (args.follow or since or args.graph) else DEFAULT_LAST

    import grpc

    try:
        if args.status:
            status = _status(server, getattr(args, "tls_dir", None), getattr(args, "tls_server_name", None))
            if output == "json":
                print(json.dumps(status))
            elif output == "yaml":
                import yaml

                sys.stdout.write(yaml.safe_dump(status, sort_keys=False))
            else:
                for key, value in status.items():
                    print(f"{key + ':':<24}{value}")
            return 0
        collected: list[Flow] = []
        try:
            for item in fetch_flows(server, number, args.follow, since, until, allow, deny,
                                    tls_dir=getattr(args, "tls_dir", None),
                                    server_name=getattr(args, "tls_server_name", None)):
                if isinstance(item, int):
                    print(f"warning: {item} flows lost (this reader fell behind the agent's ring)", file=sys.stderr)
                    continue
                print_flow(item, output, sys.stdout)
                if args.graph:
                    collected.append(item)
        except KeyboardInterrupt:
            pass  # -f ends with Ctrl-C; still write the graph of what was seen
        if args.graph:
            from membrane.servicemap import render_svg

            Path(args.graph).write_text(render_svg(collected))
            print(f"service map of {len(collected)} flows written to {args.graph}", file=sys.stderr)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            print(f"error: cannot reach the observer at {server}: {details}", file=sys.stderr)
        else:
            print(f"error: {details}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `membranectl observe | head`
        return 0
    return 0
