"""kube-proxy's iptables data path, laid out as kube-proxy (iptables mode) lays it out, for tests
and benchmarks that check membrane next to it.

`render` turns service ports into an `iptables-restore` document (pure); `install` loads it into a
lab node's namespace (which takes it along when deleted). The layout follows kube-proxy's: the nat
table's PREROUTING and OUTPUT jump to KUBE-SERVICES, which matches each ClusterIP:port and jumps
to its KUBE-SVC-<hash> chain; that chain marks traffic from outside the cluster CIDR for
masquerading (KUBE-MARK-MASQ sets 0x4000) and picks one KUBE-SEP-<hash> chain per endpoint with
`-m statistic --mode random --probability 1/(n-i)`; the KUBE-SEP chain marks hairpin traffic
(from the endpoint itself) and DNATs to the endpoint. NodePorts go through KUBE-NODEPORTS (the
last rule of KUBE-SERVICES, for local destinations) and a KUBE-EXT-<hash> chain that marks for
masquerading. KUBE-POSTROUTING masquerades what carries the mark. The filter table drops
conntrack-INVALID forwarded packets (KUBE-FORWARD), as kube-proxy does: an asymmetric path
shows up there. Chain names hash the service port name the way kube-proxy does (SHA-256,
base32, 16 characters), so the names look and collide like the real ones.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import netns

MASQ_MARK = "0x4000"
OWN_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")


@dataclass(frozen=True)
class ServicePort:
    """One port of one Service with its ready endpoints (ip, port)."""

    namespace: str
    name: str
    cluster_ip: str
    port: int
    endpoints: tuple[tuple[str, int], ...]
    protocol: str = "tcp"
    port_name: str = ""
    node_port: int = 0

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")


def _hashed(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def svc_chain(sp: ServicePort) -> str:
    return _hashed("KUBE-SVC-", sp.display, sp.protocol)


def ext_chain(sp: ServicePort) -> str:
    return _hashed("KUBE-EXT-", sp.display, sp.protocol)


def sep_chain(sp: ServicePort, endpoint: tuple[str, int]) -> str:
    return _hashed("KUBE-SEP-", sp.display, sp.protocol, f"{endpoint[0]}:{endpoint[1]}")


@dataclass
class _Doc:
    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    def chain(self, name: str) -> None:
        self.chains.append(f":{name} - [0:0]")

    def add(self, rule: str) -> None:
        self.rules.append(rule)


def render(services: Sequence[ServicePort], cluster_cidr: str) -> str:
    """The nat and filter tables' kube-proxy chains for `services`, as `iptables-restore
    --noflush` input (user chains are flushed and refilled; the jumps from the built-in chains
    are added, so install once per namespace)."""
    nat = _Doc()
    for name in OWN_CHAINS:
        nat.chain(name)
    nat.add('-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES')
    nat.add('-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES')
    nat.add('-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING')
    nat.add(f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}")
    nat.add(f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN")
    nat.add(f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}")
    nat.add('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully")
    for sp in services:
        proto, svc, comment = sp.protocol, svc_chain(sp), f'"{sp.display} cluster IP"'
        match = f"-d {sp.cluster_ip}/32 -p {proto} -m comment --comment {comment} -m {proto} --dport {sp.port}"
        nat.chain(svc)
        nat.add(f"-A KUBE-SERVICES {match} -j {svc}")
        nat.add(f"-A {svc} ! -s {cluster_cidr} {match} -j KUBE-MARK-MASQ")
        count = len(sp.endpoints)
        for i, endpoint in enumerate(sp.endpoints):
            sep, target = sep_chain(sp, endpoint), f"{endpoint[0]}:{endpoint[1]}"
            nat.chain(sep)
            pick = f"-m statistic --mode random --probability {1.0 / (count - i):0.10f} " if i < count - 1 else ""
            nat.add(f'-A {svc} -m comment --comment "{sp.display} -> {target}" {pick}-j {sep}')
            nat.add(f'-A {sep} -s {endpoint[0]}/32 -m comment --comment "{sp.display}" -j KUBE-MARK-MASQ')
            nat.add(f'-A {sep} -p {proto} -m comment --comment "{sp.display}" -m {proto} '
                    f"-j DNAT --to-destination {target}")
        if sp.node_port:
            ext = ext_chain(sp)
            nat.chain(ext)
            nat.add(f'-A KUBE-NODEPORTS -p {proto} -m comment --comment "{sp.display}" -m {proto} '
                    f"--dport {sp.node_port} -j {ext}")
            nat.add(f'-A {ext} -m comment --comment "masquerade traffic for {sp.display} external destinations" '
                    "-j KUBE-MARK-MASQ")
            nat.add(f"-A {ext} -j {svc}")
    nat.add('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last '
            'rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    filt = _Doc()
    filt.chain("KUBE-FORWARD")
    filt.add('-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD')
    filt.add("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP")
    filt.add(f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark '
             f"{MASQ_MARK}/{MASQ_MARK} -j ACCEPT")
    filt.add('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
             "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    lines = ["*nat", *nat.chains, *nat.rules, "COMMIT", "*filter", *filt.chains, *filt.rules, "COMMIT", ""]
    return "\n".join(lines)


def install(node_netns: str, services: Sequence[ServicePort], cluster_cidr: str) -> None:
    """Load the layout into a namespace (the node's: iptables there never touches the machine's)."""
    done = subprocess.run(["ip", "netns", "exec", node_netns, "iptables-restore", "-w", "5", "--noflush"],
                          input=render(services, cluster_cidr), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"iptables-restore in {node_netns}: {done.stderr.strip()}")


def nat_packets(node_netns: str, chain: str) -> int:
    """Packets counted by the rules of a nat chain (how many connections it translated)."""
    out = netns.exec_in(node_netns, ["iptables", "-w", "5", "-t", "nat", "-L", chain, "-v", "-n", "-x"]).stdout
    return sum(int(line.split()[0]) for line in out.splitlines()[2:] if line.strip())
