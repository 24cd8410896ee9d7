"""Full maps are an error, not a silent truncation (real agent, real packets).

The agent's policy map is sized by `--policy-map-entries`. A policy that fits is accepted and
every one of its rules is enforced (each allowed port probed from the allowed pod, and from a
pod that is not allowed); a 10,000-rule policy that would not fit is refused with the reason,
exit code 1, the store rolled back and the old policy still enforced, counted in
`membrane_policy_changes_refused_total`; fill levels and capacity are exported. A restart with a
larger size recreates the map (resized) and refills it before traffic notices.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, tool

PORTS = list(range(8000, 8200, 2))  # 100 allowed ports; the odd ones between are not
SMALL, LARGE = 512, 32768

SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in range(int(sys.argv[2]), int(sys.argv[3])):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], port))
    s.listen(64); s.setblocking(False); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept(); c.close()
        except OSError:
            pass
"""

# Connects to every port at once; prints the ports that connected within the timeout.
PROBE = r"""
import json, selectors, socket, sys, time
ip, ports, timeout = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
sel = selectors.DefaultSelector(); ok = []
for port in ports:
    s = socket.socket(); s.setblocking(False)
    try: s.connect((ip, port))
    except BlockingIOError: pass
    sel.register(s, selectors.EVENT_WRITE, port)
deadline = time.monotonic() + timeout
while sel.get_map() and (left := deadline - time.monotonic()) > 0:
    for key, _ in sel.select(left):
        if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            ok.append(key.data)
        sel.unregister(key.fileobj); key.fileobj.close()
print(json.dumps(sorted(ok)))
"""


def objects() -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            *({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n, "namespace": "shop", "labels": {"app": n}},
               "spec": {"containers": [{"name": "c", "image": "i"}]}} for n in ("web", "db", "other"))]


def policy(ports: list[int], per_rule: bool = False) -> dict[str, Any]:
    peer = [{"podSelector": {"matchLabels": {"app": "web"}}}]
    ingress = [{"from": peer, "ports": [{"port": p, "protocol": "TCP"}]} for p in ports] if per_rule else \
        [{"from": peer, "ports": [{"port": p, "protocol": "TCP"} for p in ports]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"], "ingress": ingress}}


def reachable(src: str, ip: str, ports: list[int]) -> list[int]:
    out = netns.exec_in(src, [sys.executable, "-c", PROBE, ip, json.dumps(ports), "1.0"], timeout=60).stdout
    return list(json.loads(out))


def metrics(node: LabNode) -> dict[tuple[str, str], float]:
    text = netns.exec_in(node.netns, ["curl", "-sf", f"http://{node_http(node)}/metrics"]).stdout
    found = {}
    for line in text.splitlines():
        match = re.match(r'^(membrane_[a-z_]+)\{map="([a-z]+)"\} ([0-9.e+-]+)$', line)
        if match:
            found[(match.group(1), match.group(2))] = float(match.group(3))
    return found


def node_http(node: LabNode) -> str:
    return "127.0.0.1:9962"


def apply(node: LabNode, docs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("membranectl"), "--socket", node.socket, "apply", "--wait", "-f", "-"],
                          input=json.dumps(docs), capture_output=True, text=True, timeout=300)


def test_full_policy_map_refuses_and_every_accepted_rule_is_enforced(make_node) -> None:  # type: ignore[no-untyped-def]
    node = make_node(extra_args=["--policy-map-entries", str(SMALL)])
    node.api("apply", objects=objects())
    pods = {n: node.add_pod(n, namespace="shop") for n in ("web", "db", "other")}
    db = pods["db"]
    server = subprocess.Popen(["ip", "netns", "exec", db.netns, sys.executable, "-c", SERVER, db.ip,
                               str(PORTS[0]), str(PORTS[-1] + 2)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        odd = [p + 1 for p in PORTS]
        assert apply(node, policy(PORTS)).returncode == 0
        # Every accepted rule is enforced: each allowed port from web, none from other, no odd port.
        assert reachable(pods["web"].netns, db.ip, PORTS) == PORTS
        assert reachable(pods["other"].netns, db.ip, PORTS) == []
        assert reachable(pods["web"].netns, db.ip, odd) == []
        seen = metrics(node)
        assert seen[("membrane_bpf_map_capacity", "policy")] == SMALL
        assert seen[("membrane_policy_changes_refused_total", "policy")] == 0

        # 10,000 rules do not fit: refused with the reason, nothing changes.
        done = apply(node, policy(list(range(20000, 30000)), per_rule=True))
        assert done.returncode == 1, done.stderr
        line = done.stderr.strip()
        assert "\n" not in line and "refused" in line and "policy map would need" in line \
            and f"capacity {SMALL}" in line and "--policy-map-entries" in line, line
        stored = node.api("get", kind="NetworkPolicy")
        assert [p["spec"]["ingress"][0]["ports"] for p in stored] == [policy(PORTS)["spec"]["ingress"][0]["ports"]]
        assert reachable(pods["web"].netns, db.ip, PORTS) == PORTS
        assert reachable(pods["other"].netns, db.ip, PORTS) == []
        seen = metrics(node)
        assert seen[("membrane_policy_changes_refused_total", "policy")] == 1
        assert 0 < seen[("membrane_bpf_map_pressure", "policy")] < 1

        # A larger map at the next start: recreated (resized), refilled, still enforced, and
        # the 10,000 rules now fit.
        node.stop_agent()
        node.extra_args = ["--policy-map-entries", str(LARGE)]
        node.start_agent()
        assert metrics(node)[("membrane_bpf_map_capacity", "policy")] == LARGE
        assert reachable(pods["web"].netns, db.ip, PORTS) == PORTS
        assert reachable(pods["other"].netns, db.ip, PORTS) == []
        assert "map resized" in node.log_path.read_text()
        done = apply(node, policy(list(range(20000, 30000)), per_rule=True))
        assert done.returncode == 0, done.stderr
        assert reachable(pods["web"].netns, db.ip, PORTS) == []  # the old rules are gone
        assert metrics(node)[("membrane_bpf_map_entries", "policy")] >= 10000
    finally:
        server.kill()
        server.wait()
