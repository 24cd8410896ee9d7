"""Raw traffic for the prefilter's tests and benchmarks: crafted frames sent from an "outside"
namespace at a node's device, and UDP datagrams counted by port where they arrive.

    python -m membrane_testkit.lab.flooding send IFNAME COUNT PPS   (hex frames on stdin, one a line)
    python -m membrane_testkit.lab.flooding count ADDRESS PORT[,PORT...]   (prints counts on stdin EOF)

`send` writes the frames round-robin through an AF_PACKET socket (no stack, no checksums
fixed: what the test crafted is what the device receives), paced to PPS (0: as fast as one
core can), and prints {"sent": n, "seconds": t}. `count` binds the ports and, when its stdin
closes, prints {"port": datagrams} as JSON. Run each inside the namespace it belongs to
(`netns.popen_in`).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from collections.abc import Sequence

BATCH = 64  # frames between pacing checks


def send(ifname: str, frames: Sequence[bytes], count: int, pps: float) -> dict[str, float]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    started = time.perf_counter()
    sent = 0
    n = len(frames)
    while sent < count:
        for _ in range(min(BATCH, count - sent)):
            try:
                sock.send(frames[sent % n])
            except OSError:  # ENOBUFS under a flood: the device queue is full, try the next one
                pass
            sent += 1
        if pps > 0:
            ahead = sent / pps - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
    sock.close()
    return {"sent": sent, "seconds": time.perf_counter() - started}


def count(address: str, ports: Sequence[int]) -> dict[int, int]:
    socks = {}
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((address, port))
        sock.setblocking(False)
        socks[sock.fileno()] = (port, sock)
    counts = dict.fromkeys(ports, 0)
    print("ready", flush=True)
    poller = select.poll()
    for fd in socks:
        poller.register(fd, select.POLLIN)
    poller.register(sys.stdin.fileno(), select.POLLIN | select.POLLHUP)
    while True:
        for fd, _ in poller.poll(1000):
            if fd == sys.stdin.fileno():
                # Drain what arrived before the end was asked for, then report.
                for port, sock in socks.values():
                    while True:
                        try:
                            sock.recv(65536)
                            counts[port] += 1
                        except BlockingIOError:
                            break
                return counts
            port, sock = socks[fd]
            while True:
                try:
                    sock.recv(65536)
                    counts[port] += 1
                except BlockingIOError:
                    break


def main(argv: Sequence[str]) -> None:
    if argv[0] == "send":
        frames = [bytes.fromhex(line.strip()) for line in sys.stdin if line.strip()]
        print(json.dumps(send(argv[1], frames, int(argv[2]), float(argv[3]))), flush=True)
    elif argv[0] == "count":
        print(json.dumps(count(argv[1], [int(p) for p in argv[2].split(",")])), flush=True)
    else:
        raise SystemExit(f"unknown command {argv[0]!r}: send or count")


if __name__ == "__main__":
    main(sys.argv[1:])
