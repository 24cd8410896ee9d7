"""Traffic between lab pods: a small TCP server answering "ok" on ports 80 and 81 with a
one-shot connect probe, and a long TCP stream that measures its own largest gap, so a test can
restart agents or operators mid-stream and check that no packet had to wait."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from . import netns

OK_SERVER = r"""
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], port)); s.listen(512)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
for port in (80, 81):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CONNECT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])); print(s.recv(8).decode())
except OSError as e:
    print("fail", e)
"""

STREAM_SERVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
print("ready", flush=True)
c, _ = s.accept(); total = 0; last = time.monotonic(); gaps = 0.0
while True:
    d = c.recv(65536)
    if not d: break
    now = time.monotonic(); gaps = max(gaps, now - last); last = now; total += len(d)
print(total, round(gaps, 3), flush=True)
"""

STREAM_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); end = time.monotonic() + float(sys.argv[3])
chunk = b"x" * 1024
while time.monotonic() < end:
    s.sendall(chunk); time.sleep(0.002)
s.close()
"""


@dataclass
class StreamResult:
    bytes: int
    max_gap: float


class Stream:
    """Client in `client_ns` sends ~500 KiB/s to a server in `server_ns` for `seconds`."""

    def __init__(self, server_ns: str, server_ip: str, client_ns: str, seconds: float, port: int = 7000) -> None:
        self.server = netns.popen_in(server_ns, [sys.executable, "-c", STREAM_SERVER, server_ip, str(port)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None and self.server.stdout.readline().strip() == "ready"
        self.client = netns.popen_in(client_ns, [sys.executable, "-c", STREAM_CLIENT, server_ip, str(port),
                                                 str(seconds)])

    def result(self, timeout: float = 60) -> StreamResult:
        try:
            assert self.client.wait(timeout) == 0, "the stream's client failed: the connection broke"
            assert self.server.stdout is not None
            total, gap = self.server.stdout.readline().split()
            self.server.wait(10)
            return StreamResult(int(total), float(gap))
        finally:
            self.close()

    def close(self) -> None:
        for proc in (self.client, self.server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
