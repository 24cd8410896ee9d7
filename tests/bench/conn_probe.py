"""TCP connection tools for the policy benchmark (stdlib only; run inside a pod's netns).

    conn_probe.py serve IP PORT            accept and close, forever (stopped by its PID)
    conn_probe.py rate IP PORT SECONDS     new connections per second: connect + close in a
                                           loop (RST close, so no TIME_WAIT pile-up); prints JSON
    conn_probe.py watch IP PORT INTERVAL_MS TIMEOUT_MS
                                           start a non-blocking connect every INTERVAL_MS until
                                           stdin closes; each attempt is allowed (connected) or
                                           denied (no answer within TIMEOUT_MS); prints one JSON
                                           line per attempt: [start (CLOCK_MONOTONIC s), allowed]

CLOCK_MONOTONIC is the same in every network namespace, so the caller can compare the
attempts' start times with when it applied a policy change.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import struct
import sys
import threading
import time

LINGER_RST = struct.pack("ii", 1, 0)


def serve(ip: str, port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen(4096)
    while True:
        conn, _ = srv.accept()
        conn.close()


def rate(ip: str, port: int, seconds: float) -> None:
    done = errors = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.settimeout(1.0)
        try:
            s.connect((ip, port))
            done += 1
        except OSError:
            errors += 1
        finally:
            s.close()
    elapsed = time.monotonic() - started
    print(json.dumps({"connections": done, "errors": errors, "seconds": elapsed, "per_second": done / elapsed}))


def watch(ip: str, port: int, interval: float, timeout: float) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, float] = {}
    out = sys.stdout
    next_start = time.monotonic()

    def finish(s: socket.socket, allowed: bool) -> None:
        started = pending.pop(s)
        sel.unregister(s)
        s.close()
        out.write(json.dumps([started, allowed]) + "\n")

    while not stop.is_set() or pending:
        now = time.monotonic()
        if not stop.is_set() and now >= next_start:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            s.setblocking(False)
            code = s.connect_ex((ip, port))
            pending[s] = now
            sel.register(s, selectors.EVENT_WRITE)
            if code not in (0, errno.EINPROGRESS):
                finish(s, False)
            next_start = now + interval
        wait = max(0.0, min(next_start - time.monotonic(), 0.005))
        for key, _ in sel.select(wait):
            s = key.fileobj  # type: ignore[assignment]
            if s in pending:
                finish(s, s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)  # type: ignore[arg-type]
        now = time.monotonic()
        for s, started in list(pending.items()):
            if now - started > timeout:
                finish(s, False)
    out.flush()


def main(argv: list[str]) -> int:
    cmd, ip, port = argv[0], argv[1], int(argv[2])
    if cmd == "serve":
        serve(ip, port)
    elif cmd == "rate":
        rate(ip, port, float(argv[3]))
    elif cmd == "watch":
        watch(ip, port, float(argv[3]) / 1000, float(argv[4]) / 1000)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main(sys.argv[1:]))
