"""Lightweight state-stream subscribers for the operator scale benchmark (one process, many).

`python -m tests.bench.scale_subscribers TARGET PREFIX FIRST COUNT` opens COUNT subscriptions
named PREFIX{FIRST}..PREFIX{FIRST+COUNT-1}, each on its own `grpc.aio` channel (its own
connection, as separate agents would have), and acks every complete update like an agent that
applies instantly: on the Subscribe stream when the operator offers it (as `StateClient` does),
else (or with MEMBRANE_BENCH_ACKS=unary) with the unary Ack RPC. Updates are received as raw bytes (their size is counted exactly) and
decoded with protobuf. It reports on stdout, one JSON object per line:

- `{"event": "synced", ...}` once every subscription has applied its first snapshot;
- `{"event": "version", "v": N, ...}` once every subscription that was synced before N has
  acked delta N: the latest ack time (CLOCK_MONOTONIC, comparable across processes), the
  bytes received for it summed over subscriptions, and the changed keys (`U:kind:key` or
  `D:kind:key`);
- `{"event": "stats", ...}` when asked (a line `stats` on stdin): process CPU and RSS.

An update that carries PacketFilter or CIDRDenyList records is turned into the datapath's rules
and deny-list prefixes before it is acked (membrane/prefilter_converting.py and the rule
encoder: the pure part of what an agent's prefilter manager does; the map writes are left out).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

import grpc
from grpc import aio

from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state_codec import change_from_pb
from membrane.api.state_objects import CIDRDenyChunkState, CIDRDenyListState, PacketFilterState
from membrane.prefilter_converting import deny_prefixes, desired_rules
from membrane.prefilter_rules import encode_rule

_PREFILTER_KINDS = ("packet_filter", "cidr_deny_list", "cidr_deny_chunk")

SUBSCRIBE = "/membrane.state.v1.StateService/Subscribe"
ACK = "/membrane.state.v1.StateService/Ack"
STREAM_ACKS = os.environ.get("MEMBRANE_BENCH_ACKS", "stream") != "unary"
TLS_DIR = os.environ.get("MEMBRANE_BENCH_TLS_DIR", "")  # set: mutual TLS, one certificate per subscriber


def change_key(change: pb.Change) -> str:
    which = change.WhichOneof("object")
    obj = getattr(change, which)
    if which in ("endpoint", "policy"):
        key = f"{obj.namespace}/{obj.name}"
    elif which == "identity":
        key = str(obj.id)
    elif which == "cidr_deny_chunk":
        key = f"{obj.list}/{obj.bucket}"
    else:
        key = obj.name
    return f"{'U' if change.op == pb.Change.OP_UPSERT else 'D'}:{which}:{key}"


@dataclass
class Version:
    expected: int
    acked: int = 0
    last_ack: float = 0.0
    first_recv: float = float("inf")
    bytes: int = 0
    keys: list[str] = field(default_factory=list)


class Subscribers:
    def __init__(self, target: str, names: list[str]) -> None:
        self.target = target
        self.names = names
        self.synced_at: dict[str, int] = {}  # name -> snapshot version
        self.snapshot_bytes = 0
        self.versions: dict[int, Version] = {}
        self.reconnects = 0
        self.errors: list[str] = []
        self.synced_reported = False
        self.prefilter: dict[str, dict[tuple[str, str], PacketFilterState | CIDRDenyListState
                                       | CIDRDenyChunkState]] = {}
        # Deny-list prefixes as converted: list -> chunk key ("" for the head) -> prefixes.
        self.deny: dict[str, dict[str, dict[str, frozenset[IPv4Network]]]] = {}
        self.prefilter_s = 0.0  # CPU spent turning prefilter records into the datapath's rules

    def emit(self, **fields: object) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    def _channel(self, name: str) -> aio.Channel:
        # Its own connection, as a separate agent has (channels of one process would share one).
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
        if not TLS_DIR:
            return aio.insecure_channel(self.target, options=options)
        # Mutual TLS as an agent: its own key and certificate (named after it) from TLS_DIR.
        directory = Path(TLS_DIR)
        creds = grpc.ssl_channel_credentials(
            root_certificates=(directory / "ca.crt").read_bytes(),
            private_key=(directory / f"{name}.key").read_bytes(),
            certificate_chain=(directory / f"{name}.crt").read_bytes())
        return aio.secure_channel(self.target, creds, options=[
            *options, ("grpc.ssl_target_name_override", "membrane-operator")])

    async def run_one(self, name: str) -> None:
        async with self._channel(name) as channel:
            subscribe = channel.stream_stream(
                SUBSCRIBE, request_serializer=pb.SubscribeRequest.SerializeToString,
                response_deserializer=None)
            ack = channel.unary_unary(ACK, request_serializer=pb.AckRequest.SerializeToString,
                                      response_deserializer=pb.AckResponse.FromString)
            while True:
                try:
                    await self._stream(name, subscribe, ack)
                except grpc.RpcError as exc:
                    self.errors.append(f"{name}: {exc.code()}")
                self.reconnects += 1
                await asyncio.sleep(0.5)

    async def _stream(self, name: str, subscribe: aio.StreamStreamMultiCallable,
                      ack: aio.UnaryUnaryMultiCallable) -> None:
        call = subscribe()
        await call.write(pb.SubscribeRequest(node_name=name, accepts_batches=STREAM_ACKS))
        if not STREAM_ACKS:
            await call.done_writing()  # the old unary-request form
        on_stream = STREAM_ACKS and any(
            key == "membrane-stream-acks" for key, _ in (await call.initial_metadata()) or ())
        pending_bytes = 0
        while True:
            raw = await call.read()
            if raw is aio.EOF:
                return
            received = time.monotonic()
            message = pb.StateUpdate.FromString(raw)
            pending_bytes += len(raw)
            if message.type == pb.StateUpdate.TYPE_SNAPSHOT and message.more:
                continue
            size, pending_bytes = pending_bytes, 0
            started = time.process_time()
            self._prefilter(name, message)
            self.prefilter_s += time.process_time() - started
            if on_stream:
                await call.write(pb.SubscribeRequest(acked_version=message.version))
            else:
                await ack(pb.AckRequest(node_name=name, version=message.version,
                                        stream_id=message.stream_id), timeout=30)
            done = time.monotonic()
            if message.type == pb.StateUpdate.TYPE_SNAPSHOT:
                self.synced_at[name] = message.version
                self.snapshot_bytes += size
                if not self.synced_reported and len(self.synced_at) == len(self.names):
                    self.synced_reported = True
                    self.emit(event="synced", n=len(self.names),
                              max_version=max(self.synced_at.values()),
                              snapshot_bytes=self.snapshot_bytes, at=done)
                continue
            self._delta_acked(message, received, done, size)

    def _prefilter(self, name: str, message: pb.StateUpdate) -> None:
        """What the agent computes before it can ack a prefilter change: every rule in force
        encoded, each changed deny-list chunk's prefixes converted (unchanged ones are not
        touched) and each changed list's prefixes joined from its chunks."""
        held = self.prefilter.setdefault(name, {})
        deny = self.deny.setdefault(name, {})
        if message.type == pb.StateUpdate.TYPE_SNAPSHOT:
            held.clear()
            deny.clear()
        touched = False
        lists: set[str] = set()
        for change in message.changes:
            which = change.WhichOneof("object")
            if which not in _PREFILTER_KINDS:
                continue
            touched = True
            decoded = change_from_pb(change)
            obj = decoded.obj
            if isinstance(obj, PacketFilterState):
                held[(which, decoded.key[1])] = obj
            elif which == "packet_filter":
                held.pop((which, decoded.key[1]), None)
            else:
                # A chunk's key is list/bucket; a head (key: the list) is held as chunk "".
                is_chunk = which == "cidr_deny_chunk"
                list_name = decoded.key[1].rpartition("/")[0] if is_chunk else decoded.key[1]
                lists.add(list_name)
                chunks = deny.setdefault(list_name, {})
                if isinstance(obj, (CIDRDenyListState, CIDRDenyChunkState)):
                    chunks[decoded.key[1] if is_chunk else ""] = deny_prefixes(obj.cidrs)
                else:
                    chunks.pop(decoded.key[1] if is_chunk else "", None)
        for list_name in lists:
            frozenset().union(*deny.get(list_name, {}).values())
        if touched:
            rules = desired_rules(o for o in held.values() if isinstance(o, PacketFilterState))
            for ref, rule in enumerate(rules, start=1):
                encode_rule(rule, ref)

    def _delta_acked(self, message: pb.StateUpdate, received: float, done: float,
                     size: int) -> None:
        # A batch (this subscriber lagged) acks every version it spans; its bytes and keys
        # count for its last version (the one a change searched for is at or before it).
        base = message.base_version or message.version - 1
        for version in range(base + 1, message.version + 1):
            entry = self.versions.get(version)
            if entry is None:
                expected = sum(1 for v in self.synced_at.values() if v < version)
                entry = self.versions[version] = Version(expected)
            if not entry.keys and version == message.version:
                entry.keys = [change_key(c) for c in message.changes][:50]
                entry.keys.append(f"#changes={len(message.changes)}")
            entry.acked += 1
            entry.bytes += size if version == message.version else 0
            entry.last_ack = max(entry.last_ack, done)
            entry.first_recv = min(entry.first_recv, received)
            if entry.acked == entry.expected:
                self.emit(event="version", v=version, n=entry.acked, last_ack=entry.last_ack,
                          first_recv=entry.first_recv, bytes=entry.bytes, keys=entry.keys)
                del self.versions[version]

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                os._exit(0)  # the driver went away
            if line.strip() == "stats":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                self.emit(event="stats", cpu_s=usage.ru_utime + usage.ru_stime,
                          maxrss_kib=usage.ru_maxrss, reconnects=self.reconnects,
                          errors=self.errors[:5], pending=len(self.versions), prefilter_s=self.prefilter_s)

    async def main(self) -> None:
        tasks = [asyncio.create_task(self.run_one(name)) for name in self.names]
        tasks.append(asyncio.create_task(self.commands()))
        await asyncio.gather(*tasks)


def main(argv: list[str]) -> int:
    target, prefix, first, count = argv[0], argv[1], int(argv[2]), int(argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * count + 256)), hard))
    names = [f"{prefix}{i}" for i in range(first, first + count)]
    asyncio.run(Subscribers(target, names).main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
