"""membranectl: inspect and feed a membrane agent (tables for people, -o json|yaml for machines).

Exit codes (stable, for scripts): 0 success; 1 an error (the agent refused or could not be
reached, a file could not be read); 2 a usage error (unknown command or option, bad value);
3 the answer is "no": `policy trace` found the connection denied, or `apply --wait` /
`delete --wait` found the change not enforced on every node within `--timeout` (one line
names the nodes). Output cut short by its reader (`| head`) is not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from membrane.build_info import build_info

from .client import AgentError, request
from .completing import HOISTED_OPTIONS, bash_script
from .manifests import read_manifests
from .observe import add_observe_parser, run_observe
from .tables import render_table

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO = 0, 1, 2, 3
OUTPUTS = ("table", "json", "yaml")
NOT_ENFORCED = 504  # the agent's API code for "not enforced within the timeout" (exits EXIT_NO)
REJECTED = 422  # the agent's API code for objects refused by validation (details: one line each)
MAX_WAIT_SECONDS = 3600.0


def _wait_seconds(text: str) -> float:
    """--timeout: seconds in (0, 3600] (a bad value is a usage error)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds <= MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_WAIT_SECONDS:g}] seconds, got {text}")
    return seconds


_COLUMNS = {
    "endpoint list": [("POD", "pod"), ("IP", "ip"), ("INTERFACE", "host_ifname"), ("ID", "endpoint_id"),
                      ("IDENTITY", "identity"), ("STATE", "state")],
    "bpf endpoints": [("IP", "ip"), ("IFINDEX", "ifindex"), ("ID", "endpoint_id"), ("IDENTITY", "identity"),
                      ("POD MAC", "pod_mac"), ("HOST MAC", "host_mac")],
    "bpf ct": [("PROTO", "proto"), ("SOURCE", "src"), ("DESTINATION", "dst"), ("FLAGS", "flags"),
               ("TX PKTS", "tx_packets"), ("RX PKTS", "rx_packets"), ("AGE S", "age_s"), ("IDLE S", "idle_s")],
    "bpf metrics": [("REASON", "reason"), ("DIRECTION", "direction"), ("PACKETS", "packets"), ("BYTES", "bytes")],
    "apply": [("KIND", "kind"), ("NAMESPACE", "namespace"), ("NAME", "name"), ("RESULT", "action")],
}
_COLUMNS["delete"] = _COLUMNS["apply"]
_COLUMNS["policy list"] = [("POLICY", "policy"), ("TYPES", "types"), ("INGRESS RULES", "ingress_rules"),
                           ("EGRESS RULES", "egress_rules"), ("SELECTS (IN)", "selected_ingress"),
                           ("SELECTS (EG)", "selected_egress")]
_COLUMNS["identity list"] = [("IDENTITY", "identity"), ("LABELS", "labels"), ("USED BY", "owners")]
_COLUMNS["identity get"] = _COLUMNS["identity list"]
_COLUMNS["prefilter list"] = [("#", "order"), ("NAME", "name"), ("KIND", "kind"), ("ACTION", "action"),
                              ("FROM", "origin"), ("MATCHES", "matches")]
_COLUMNS["prefilter stats"] = [("NAME", "name"), ("KIND", "kind"), ("ACTION", "action"), ("PACKETS", "packets"),
                               ("BYTES", "bytes"), ("DROPPED PKTS", "dropped_packets"),
                               ("DROPPED BYTES", "dropped_bytes")]
_COLUMNS["service list"] = [("SERVICE", "service"), ("TYPE", "type"), ("FRONTEND", "frontend"), ("ID", "id"),
                            ("BACKENDS", "backend_list")]
_COLUMNS["bpf lb"] = [("FRONTEND", "frontend"), ("ID", "id"), ("FLAGS", "flags"), ("SLOTS", "slots"),
                      ("AFFINITY S", "affinity_timeout_s"), ("BACKENDS (ID=ADDRESS)", "backends")]
_COLUMNS["bpf lb maglev"] = [("ID", "id"), ("SIZE", "size"), ("ENTRIES PER BACKEND (ID=N)", "backends")]
_COLUMNS["bpf lb nat"] = [("DIR", "dir"), ("TUPLE", "tuple"), ("REWRITTEN TO", "to"), ("ID", "id"),
                          ("BACKEND", "backend_id"), ("FLAGS", "flags")]


_EPILOG = ("-o/--output may be given anywhere on the command line. Exit codes: 0 success, 1 error, "
           "2 usage error, 3 denied (policy trace) or not enforced in time (apply/delete --wait).")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="membranectl", description="Talk to a membrane agent.",
                                     epilog=_EPILOG)
    info = build_info()
    parser.add_argument("--version", action="version",
                        version=f"membranectl {info.version} (commit {info.commit}, Python {info.python_version})")
    parser.add_argument("--socket", help="agent API socket (default $MEMBRANE_AGENT_SOCKET or "
                        "/run/membrane/agent.sock)")
    # "compact" is what `observe -o compact` always meant: the table of flows.
    parser.add_argument("-o", "--output", choices=[*OUTPUTS, "compact"], default="table",
                        help="table for people (default), json or yaml for machines")
    sub = parser.add_subparsers(dest="command", required=True)
    comp = sub.add_parser("completion", help="print a shell completion script: source <(membranectl completion bash)")
    comp.add_argument("shell", choices=["bash"])
    sub.add_parser("status", help="agent status")
    ep = sub.add_parser("endpoint", help="endpoints on this node")
    ep.add_argument("action", choices=["list"])
    for verb in ("apply", "delete"):
        p = sub.add_parser(verb, help=f"{verb} Kubernetes-format objects (standalone mode)")
        p.add_argument("-f", "--filename", action="append", required=True, help="YAML/JSON file, folder or -")
        p.add_argument("--wait", action="store_true",
                       help="return only once every affected node enforces the change (new and established "
                            "connections); exit 3 naming the nodes that did not within --timeout")
        p.add_argument("--timeout", type=_wait_seconds, default=30.0,
                       help="seconds --wait waits at most (default 30)")
    pol = sub.add_parser("policy", help="NetworkPolicies as this node enforces them")
    pol_sub = pol.add_subparsers(dest="action", required=True)
    pol_sub.add_parser("list")
    pol_sub.add_parser("get").add_argument("name", help="NAMESPACE/NAME")
    tr = pol_sub.add_parser("trace", help="would a new connection be allowed, and by which rules")
    tr.add_argument("--from", dest="src", required=True, help="NAMESPACE/POD or an IP")
    tr.add_argument("--to", dest="dst", required=True, help="NAMESPACE/POD, an IP or a CIDR")
    tr.add_argument("--port", default="80/TCP", help="PORT/PROTOCOL, port by number or name (default 80/TCP)")
    ident = sub.add_parser("identity", help="security identities")
    ident_sub = ident.add_subparsers(dest="action", required=True)
    ident_sub.add_parser("list")
    ident_sub.add_parser("get").add_argument("identity", type=int)
    svc = sub.add_parser("service", help="Services as this node's load balancer holds them")
    svc.add_argument("action", choices=["list"])
    pre = sub.add_parser("prefilter", help="the XDP prefilter on this node (PacketFilters, CIDR deny lists)")
    pre_sub = pre.add_subparsers(dest="action", required=True)
    pre_sub.add_parser("list", help="rules and deny lists in force, in the order a packet meets them")
    pre_sub.add_parser("stats", help="packets and bytes each rule and deny list matched and dropped")
    add_observe_parser(sub)
    bpf = sub.add_parser("bpf", help="dump datapath maps")
    bpf.add_argument("map", choices=["endpoints", "ct", "metrics", "lb"])
    return parser


def hoist_output(argv: Sequence[str]) -> list[str]:
    """Move `-o X` / `-oX` / `--output X` / `--output=X` from anywhere (up to `--`) to the front,
    where the top-level parser takes it; the last one given wins."""
    rest: list[str] = []
    value: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in HOISTED_OPTIONS and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--output="):
            value, i = arg.partition("=")[2], i + 1
            continue
        if arg.startswith("-o") and len(arg) > 2 and not arg.startswith("--"):
            value, i = arg[2:].lstrip("="), i + 1
            continue
        rest.append(arg)
        i += 1
    return rest if value is None else ["-o", value, *rest]


def _print(result: Any, output: str) -> None:
    if output == "json":
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        import yaml

        yaml.safe_dump(json.loads(json.dumps(result, default=str)), sys.stdout, sort_keys=False)


def parse_args(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """membranectl's command line as its parser reads it (with -o taken from anywhere)."""
    return (parser or _parser()).parse_args(hoist_output(argv))


def run(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parse_args(sys.argv[1:] if argv is None else argv, parser)
    if args.command == "completion":
        sys.stdout.write(bash_script(parser))
        return EXIT_OK
    if args.command == "observe":
        return run_observe(args)
    try:
        if args.command == "status":
            result: Any = request("status", args.socket)
            key = "status"
        elif args.command == "endpoint":
            result, key = request("endpoint.list", args.socket), "endpoint list"
        elif args.command in ("apply", "delete"):
            docs = read_manifests(args.filename)
            if args.wait:
                result = request(args.command, args.socket, timeout=args.timeout + 30.0, objects=docs,
                                 wait=True, timeout_seconds=args.timeout)
            else:
                result = request(args.command, args.socket, objects=docs)
            key = args.command
        elif args.command == "policy":
            key = f"policy {args.action}"
            extra = {"name": args.name} if args.action == "get" else \
                {"src": args.src, "dst": args.dst, "port": args.port} if args.action == "trace" else {}
            result = request(f"policy.{args.action}", args.socket, **extra)
        elif args.command == "prefilter":
            key = f"prefilter {args.action}"
            result = request(f"prefilter.{args.action}", args.socket)
        elif args.command == "identity":
            key = f"identity {args.action}"
            extra = {"identity": args.identity} if args.action == "get" else {}
            result = request(f"identity.{args.action}", args.socket, **extra)
            if args.action == "get":
                result = [result]
        elif args.command == "service":
            result, key = request("service.list", args.socket), "service list"
            for row in result:
                row["backend_list"] = " ".join(f"{b['address']}({b['state']})" for b in row["backends"]) or "(refuse)"
        else:
            op = {"endpoints": "bpf.endpoints", "ct": "bpf.ct", "metrics": "bpf.metrics", "lb": "bpf.lb"}[args.map]
            result, key = request(op, args.socket), f"bpf {args.map}"
            if args.map == "lb" and args.output == "table":
                key = "bpf lb all"
    except AgentError as exc:
        if exc.code == REJECTED and isinstance(exc.details, list) and exc.details:
            # "rejected: a; b" and then a and b: each problem on its own line, once
            print(f"error: {exc.msg.partition(':')[0]}:", file=sys.stderr)
        else:
            print(f"error: {exc.msg}", file=sys.stderr)
        if exc.code == NOT_ENFORCED:
            return EXIT_NO
        if isinstance(exc.details, list):
            for line in exc.details:
                print(f"  {line}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    denied = key == "policy trace" and result.get("verdict") != "allow"
    if args.output in ("json", "yaml"):
        _print(result, args.output)
    elif key in ("apply", "delete") and isinstance(result, dict):  # --wait
        sys.stdout.write(render_table(result["objects"], _COLUMNS[key]))
        nodes = result["enforced"]
        print(f"enforced on {len(nodes)}/{len(nodes) + len(result['pending'])} node(s) "
              f"({', '.join(nodes)}) as version {result['version']}")
    elif key == "policy trace":
        print("\n".join(result["lines"]))
    elif key == "policy get":
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif key == "bpf lb all":
        sys.stdout.write(render_table(result["services"], _COLUMNS["bpf lb"]))
        print(f"\nMaglev tables ({len(result['maglev'])}):")
        sys.stdout.write(render_table(result["maglev"], _COLUMNS["bpf lb maglev"]))
        print(f"\nNAT entries ({len(result['nat'])} of {result['nat_total']} shown):")
        sys.stdout.write(render_table(result["nat"], _COLUMNS["bpf lb nat"]))
    elif key == "status":
        for name, value in result.items():
            print(f"{name + ':':<16}{json.dumps(value) if isinstance(value, (dict, list)) else value}")
    else:
        sys.stdout.write(render_table(result, _COLUMNS[key]))
    return EXIT_NO if denied else EXIT_OK


def main() -> None:
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): what it wanted it got. Point stdout at /dev/null so
        # the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
