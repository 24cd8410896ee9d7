"""What runs inside each lab pod for reachability probing: server and prober in one process.

Started once per pod with `ip netns exec <pod netns> python -S -u probe_server.py --ports 80,81`
(standard library only, no `membrane` import, so it starts fast), it serves:

- TCP on every port: accept, send the peer address back, close;
- UDP on every port: echo the datagram back to its sender;
- SCTP on every port, without SCTP sockets (the kernel may lack them): a raw IPv4 socket for
  protocol 132 records every SCTP INIT chunk that arrives for a served port, with its source
  address and initiate tag. "Reachable" for SCTP means the INIT arrived.

It is driven by JSON lines on stdin and answers JSON lines on stdout (one answer per request,
carrying the request's `id`); requests run concurrently:

- `{"op": "probe", "proto": "tcp"|"udp", "targets": [[key, ip, port], ...], "timeout": 1.0}`
  -> `{"results": {key: "ok" | "timeout" | "refused" | "error: ..."}}` (all targets at once;
  TCP: connect within the timeout; UDP: the echo comes back within the timeout, the datagram
  being resent a few times meanwhile);
- `{"op": "sctp_send", "targets": [[key, ip, port], ...], "tag": N, "attempts": 3,
  "interval": 0.05}` -> `{"sent": count}`: hand-made INIT packets (CRC32c checksum) through a
  raw socket, with initiate tag N;
- `{"op": "sctp_seen", "tag": N}` -> `{"seen": [[source ip, port], ...]}`: the INITs with tag
  N that arrived here (forgotten once reported);
- `{"op": "ping"}` -> `{"pong": true}`, `{"op": "quit"}`.

The first line it prints is `{"ready": true, ...}` once every socket is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import struct
import sys
import threading
from typing import Any

IPPROTO_SCTP = 132
SCTP_INIT = 1

# --- CRC32c (Castagnoli), reflected polynomial 0x82F63B78, as SCTP requires (RFC 4960 B) ---


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def sctp_init(sport: int, dport: int, tag: int) -> bytes:
    """An SCTP packet (common header + one INIT chunk) with a valid checksum."""
    chunk = struct.pack("!BBHIIHHI", SCTP_INIT, 0, 20, tag, 65535, 10, 10, random.getrandbits(32))
    header = struct.pack("!HHII", sport, dport, 0, 0)
    checksum = crc32c(header + chunk)
    # The CRC goes on the wire least significant byte first (Linux: cpu_to_le32).
    return struct.pack("!HHI", sport, dport, 0) + struct.pack("<I", checksum) + chunk


def parse_sctp_init(packet: bytes) -> tuple[str, int, int] | None:
    """(source ip, destination port, initiate tag) of an IPv4 SCTP INIT, else None."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != IPPROTO_SCTP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    sctp = packet[ihl:]
    if len(sctp) < 12 + 20 or sctp[12] != SCTP_INIT:
        return None
    _, dport, _vtag = struct.unpack("!HHI", sctp[:8])
    wire = struct.unpack("<I", sctp[8:12])[0]
    if crc32c(sctp[:8] + b"\0\0\0\0" + sctp[12:]) != wire:
        return None
    tag = struct.unpack("!I", sctp[16:20])[0]
    return socket.inet_ntoa(packet[12:16]), dport, tag


# --- serving -----------------------------------------------------------------------------


class TcpEcho(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        assert isinstance(transport, asyncio.Transport)
        transport.write(f"{peer[0]}\n".encode())
        transport.close()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]  # a datagram endpoint's transport


class Server:
    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.seen: dict[int, list[list[Any]]] = {}  # initiate tag -> [[source, port], ...]
        self.raw_rx: socket.socket | None = None
        self.raw_tx: socket.socket | None = None
        self.out_lock = threading.Lock()
        # Source ports for UDP and SCTP probes go up one by one (never a random pick): a new
        # probe must not reuse the 5-tuple of an earlier flow that conntrack still remembers,
        # or it would ride that old entry instead of being judged by the current policy.
        self.next_port = random.randint(20000, 40000)

    def source_port(self) -> int:
        port = self.next_port
        self.next_port = 20000 if port >= 60999 else port + 1
        return port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for port in self.ports:
            await loop.create_server(TcpEcho, "0.0.0.0", port, reuse_address=True, backlog=512)
            await loop.create_datagram_endpoint(UdpEcho, local_addr=("0.0.0.0", port))
        self.raw_rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
        self.raw_rx.setblocking(False)
        loop.add_reader(self.raw_rx.fileno(), self._on_sctp)
        self.raw_tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
        self.raw_tx.setblocking(False)

    def _on_sctp(self) -> None:
        assert self.raw_rx is not None
        while True:
            try:
                packet = self.raw_rx.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            found = parse_sctp_init(packet)
            if found is not None and found[1] in self.ports:
                source, port, tag = found
                entry = [source, port]
                bucket = self.seen.setdefault(tag, [])
                if entry not in bucket:
                    bucket.append(entry)

    # --- probing ---

    async def tcp(self, ip: str, port: int, timeout: float) -> str:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return f"error: {exc.strerror or exc}"
        writer.close()
        return "ok"

    async def udp(self, ip: str, port: int, timeout: float, resends: int = 3) -> str:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            for _ in range(20):
                try:
                    sock.bind(("0.0.0.0", self.source_port()))
                    break
                except OSError:
                    continue
            sock.connect((ip, port))
            payload = os.urandom(8).hex().encode()
            deadline = loop.time() + timeout
            step = timeout / resends
            while True:
                sock.send(payload)
                left = deadline - loop.time()
                if left <= 0:
                    return "timeout"
                try:
                    reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), min(step, left))
                except TimeoutError:
                    if loop.time() >= deadline:
                        return "timeout"
                    continue
                if reply == payload:
                    return "ok"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return f"error: {exc.strerror or exc}"
        finally:
            sock.close()

    async def sctp_send(self, targets: list[list[Any]], tag: int, attempts: int, interval: float) -> int:
        assert self.raw_tx is not None
        sent = 0
        packets = [(ip, sctp_init(self.source_port(), int(port), tag)) for _, ip, port in targets]
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(interval)
            for ip, packet in packets:
                try:
                    self.raw_tx.sendto(packet, (ip, 0))
                    sent += 1
                except OSError:
                    pass
        return sent

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "probe":
            timeout = float(request.get("timeout", 1.0))
            check = self.tcp if request["proto"] == "tcp" else self.udp
            targets = request["targets"]
            outcomes = await asyncio.gather(*(check(ip, int(port), timeout) for _, ip, port in targets))
            return {"results": {t[0]: outcome for t, outcome in zip(targets, outcomes, strict=True)}}
        if op == "sctp_send":
            sent = await self.sctp_send(request["targets"], int(request["tag"]),
                                        int(request.get("attempts", 3)), float(request.get("interval", 0.05)))
            return {"sent": sent}
        if op == "sctp_seen":
            return {"seen": self.seen.pop(int(request["tag"]), [])}
        if op == "ping":
            return {"pong": True}
        raise ValueError(f"unknown op {op!r}")

    def emit(self, message: dict[str, Any]) -> None:
        line = json.dumps(message) + "\n"
        with self.out_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    async def answer(self, request: dict[str, Any]) -> None:
        try:
            reply = await self.handle(request)
        except Exception as exc:  # noqa: BLE001 - every request gets an answer
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        self.emit({"id": request.get("id"), **reply})


async def main_async(ports: list[int]) -> None:
    server = Server(ports)
    await server.start()
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def read_stdin() -> None:  # a thread: stdin is a pipe, which add_reader handles poorly with buffering
        for line in sys.stdin:
            line = line.strip()
            if line:
                try:
                    loop.call_soon_threadsafe(requests.put_nowait, json.loads(line))
                except ValueError:
                    server.emit({"error": f"not JSON: {line[:80]}"})
        loop.call_soon_threadsafe(requests.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    server.emit({"ready": True, "pid": os.getpid(), "ports": ports})
    tasks: set[asyncio.Task[None]] = set()
    while True:
        request = await requests.get()
        if request is None or request.get("op") == "quit":
            break
        task = asyncio.create_task(server.answer(request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", default="80,81")
    args = parser.parse_args()
    ports = [int(p) for p in args.ports.split(",") if p]
    try:
        asyncio.run(main_async(ports))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
