"""Masquerade pod traffic that leaves the cluster's pod CIDR, with iptables in the node netns.

Runs in the agent's own network namespace (the node); rules live in a chain of their own so
they can be checked and replaced without touching anything else in the table.
"""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Network

CHAIN = "MEMBRANE-MASQ"


def _iptables(*args: str, check: bool = True) -> bool:
    done = subprocess.run(["iptables", "-w", "5", "-t", "nat", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {done.stderr.strip()}")
    return done.returncode == 0


def ensure_masquerade(pod_cidr: IPv4Network, cluster_cidr: IPv4Network) -> None:
    """Idempotent: the chain holds exactly one rule, POSTROUTING jumps to it once."""
    _iptables("-N", CHAIN, check=False)
    _iptables("-F", CHAIN)
    _iptables("-A", CHAIN, "-s", str(pod_cidr), "!", "-d", str(cluster_cidr), "-m", "comment",
              "--comment", "membrane: pod traffic leaving the pod CIDR", "-j", "MASQUERADE")
    if not _iptables("-C", "POSTROUTING", "-j", CHAIN, check=False):
        _iptables("-A", "POSTROUTING", "-j", CHAIN)


