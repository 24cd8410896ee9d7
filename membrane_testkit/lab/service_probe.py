"""Service traffic for the lab: a backend server and a client, real sockets, standard library only.

    python -S -u service_probe.py serve NAME IP TCPPORTS UDPPORTS [peer]
        TCP: accept, send NAME:PORT, close. UDP: answer every datagram with NAME:PORT. Prints "ready".
        With "peer": the answer is NAME:PORT@CLIENTIP (the source address the backend saw).
    python -S -u service_probe.py client JSON
        JSON is a list of steps; prints one JSON list of results. Steps:
        {"op": "tcp", "ip", "port", "timeout"}      -> {"reply", "peer", "ms"} or {"error", "errno", "ms"}
        {"op": "udp_connected", "ip", "port", "count"} -> {"replies": [...], "peer", "sources": [...]}
        {"op": "udp_sendto", "ip", "port", "count", "gap"} -> {"replies": [...], "sources": [...]}
          (one unconnected socket for every datagram; "gap" seconds between them)
        {"op": "sleep", "seconds"}
        {"op": "udp_hold", "ip", "port"} keeps a connected UDP socket for later steps (one exchange)
        {"op": "udp_hold_send"} -> {"reply"} or {"error", "errno"} on the held socket
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any


def serve(name: str, ip: str, tcp_ports: str, udp_ports: str, peer: str = "") -> None:
    for port in [int(p) for p in tcp_ports.split(",") if p]:
        reply = f"{name}:{port}".encode()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((ip, port))
        listener.listen(128)
        threading.Thread(target=_tcp, args=(listener, reply, peer == "peer"), daemon=True).start()
    for port in [int(p) for p in udp_ports.split(",") if p]:
        reply = f"{name}:{port}".encode()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, port))
        threading.Thread(target=_udp, args=(sock, reply, peer == "peer"), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def _tcp(listener: socket.socket, reply: bytes, tell_peer: bool) -> None:
    while True:
        conn, client = listener.accept()
        try:
            conn.sendall(reply + (b"@" + client[0].encode() if tell_peer else b""))
        except OSError:
            pass
        conn.close()


def _udp(sock: socket.socket, reply: bytes, tell_peer: bool) -> None:
    while True:
        _, peer = sock.recvfrom(2048)
        sock.sendto(reply + (b"@" + peer[0].encode() if tell_peer else b""), peer)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1e3, 3)


def client(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    held: socket.socket | None = None
    for step in steps:
        op, timeout = step["op"], float(step.get("timeout", 2.0))
        started = time.perf_counter()
        try:
            if op == "tcp":
                with socket.create_connection((step["ip"], step["port"]), timeout=timeout) as sock:
                    peer = sock.getpeername()
                    data = sock.recv(256)
                out.append({"reply": data.decode(), "peer": list(peer), "ms": _ms(started)})
            elif op == "udp_connected":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(timeout)
                    sock.connect((step["ip"], step["port"]))
                    replies, sources = [], []
                    for _ in range(int(step.get("count", 1))):
                        sock.send(b"hello")
                        data, source = sock.recvfrom(256)
                        replies.append(data.decode())
                        sources.append(list(source))
                    out.append({"replies": replies, "sources": sources, "peer": list(sock.getpeername()),
                                "ms": _ms(started)})
            elif op == "udp_sendto":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(timeout)
                    replies, sources = [], []
                    for _ in range(int(step.get("count", 1))):
                        sock.sendto(b"hello", (step["ip"], step["port"]))
                        data, source = sock.recvfrom(256)
                        replies.append(data.decode())
                        sources.append(list(source))
                        time.sleep(float(step.get("gap", 0)))
                    out.append({"replies": replies, "sources": sources, "ms": _ms(started)})
            elif op == "sleep":
                time.sleep(float(step["seconds"]))
                out.append({})
            elif op == "udp_hold":
                held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.settimeout(timeout)
                held.connect((step["ip"], step["port"]))
                held.send(b"hello")
                out.append({"peer": list(held.getpeername()), "reply": held.recv(256).decode()})
            elif op == "udp_hold_send":
                assert held is not None
                held.send(b"hello")
                out.append({"reply": held.recv(256).decode(), "ms": _ms(started)})
            else:
                out.append({"error": f"unknown op {op}"})
        except OSError as exc:
            out.append({"error": str(exc), "errno": exc.errno or 0, "ms": _ms(started)})
    return out


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:7])
    else:
        print(json.dumps(client(json.loads(sys.argv[2]))), flush=True)
