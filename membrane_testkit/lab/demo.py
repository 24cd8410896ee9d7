"""`make demo`: one node, three pods, real traffic through the eBPF datapath.

Starts an agent in its own node namespace, applies a Namespace and three Pods to the
standalone store, wires three pods with the real CNI plugin, then sends ping, TCP and UDP
between them and shows the endpoint list, the datapath counters rising and conntrack.
Everything is removed on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import cleanup
from .node import LabNode, tool

PODS = ("frontend", "backend", "db")
MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {team: shop}}
""" + "".join(f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: demo, labels: {{app: {pod}}}}}
spec:
  containers:
  - name: main
    image: example/{pod}
    ports: [{{name: http, containerPort: 8080, protocol: TCP}}]
""" for pod in PODS)


BLOB_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 8080)); s.listen()
print("ready", flush=True)
body = b"m" * (1 << 20)
while True:
    c, _ = s.accept(); c.recv(4096)
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body); c.close()
"""


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def ctl(node: LabNode, *args: str) -> str:
    done = subprocess.run([tool("membranectl"), "--socket", node.socket, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"membranectl {' '.join(args)}: {done.stderr}")
    return done.stdout


def forwarded(node: LabNode) -> int:
    rows = json.loads(ctl(node, "-o", "json", "bpf", "metrics"))
    return sum(r["packets"] for r in rows if r["reason"].startswith("forward"))


def run_demo() -> None:
    node = LabNode("node1", pod_cidr="10.200.1.0/24", prefix="mbdemo")
    try:
        say("starting membrane-agent in network namespace " + node.netns)
        node.create()
        started = time.monotonic()
        node.start_agent()
        print(f"agent ready in {time.monotonic() - started:.2f}s; log: {node.log_path}")
        print(ctl(node, "status"), end="")

        say("membranectl apply -f (standalone store: a Namespace and three Pods)")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            handle.write(MANIFEST)
        print(ctl(node, "apply", "-f", handle.name), end="")
        Path(handle.name).unlink()

        say("kubelet-style CNI ADD for three pods (membrane-cni, config on stdin)")
        for name in PODS:
            pod = node.add_pod(name, namespace="demo")
            print(f"{name:<9} -> {pod.ip} (netns {pod.netns})")
        print()
        print(ctl(node, "endpoint", "list"), end="")

        before = forwarded(node)
        a, b, c = (node.pods[n] for n in PODS)
        say(f"ping {a.name} -> {b.name} and {b.name} -> {c.name}")
        for src, dst in ((a, b), (b, c)):
            out = src.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", dst.ip]).stdout
            print(next(line for line in out.splitlines() if "packets transmitted" in line))

        say(f"TCP: {a.name} fetches 1 MiB over HTTP from {c.name}")
        # A minimal HTTP server: http.server would resolve names (DNS) we never want to send.
        server = subprocess.Popen(["ip", "netns", "exec", c.netns, sys.executable, "-c", BLOB_SERVER, c.ip],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            out = a.exec(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} bytes in %{time_total}s",
                          f"http://{c.ip}:8080/blob.bin"]).stdout
            print(out)
        finally:
            server.kill()
            server.wait(5)

        say("datapath counters (per-CPU BPF map, read by the agent)")
        print(ctl(node, "bpf", "metrics"), end="")
        print(f"\nforwarded packets: {before} before the traffic, {forwarded(node)} after")
        say("conntrack entries (first lines)")
        print("\n".join(ctl(node, "bpf", "ct").splitlines()[:8]))
        say("CNI DEL for every pod, then cleanup")
        for name in PODS:
            node.delete_pod(name)
        print(ctl(node, "endpoint", "list"), end="")
    finally:
        node.destroy()
        # Only the demo's own objects: tests running beside it on the machine have theirs.
        left = [name for names in cleanup.leftovers().values() for name in names
                if Path(name).name.startswith(f"{node.prefix}-")]
        print(f"\ncleaned up; leftovers of the demo: {len(left)}")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # What an interrupted demo left, and nothing else: a plain clean() would also remove the live
    # namespaces and work dirs of tests running beside it (their agents lose their sockets).
    cleanup.clean(("mbdemo-",))
    try:
        run_demo()
    except KeyboardInterrupt:
        print("\ninterrupted; everything was removed", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
