"""Writes the agent's per-node config: the ConfigMap's config plus this node's PodCIDR.

Runs as the init container node-config (ipam.mode "kubernetes"). Reads the Node object
named by MEMBRANE_NODE_NAME with the pod's service account, waits until spec.podCIDR(s)
holds an IPv4 CIDR (kube-controller-manager --allocate-node-cidrs sets it), and writes
SRC + {"pod_cidr": ...} to DEST. Stdlib only, plus PyYAML which the image has.

  python3 node-config.py SRC DEST
Environment: MEMBRANE_NODE_NAME (required), MEMBRANE_IPAM_WAIT_SECONDS (default 300),
KUBERNETES_SERVICE_HOST/PORT (in-cluster), MEMBRANE_K8S_API (a full base URL, overrides).
"""

import ipaddress
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

import yaml

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def api_base() -> str:
    if os.environ.get("MEMBRANE_K8S_API"):
        return os.environ["MEMBRANE_K8S_API"].rstrip("/")
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        sys.exit("node-config: KUBERNETES_SERVICE_HOST is not set (not in a cluster?)")
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


def get_node(base: str, name: str) -> dict:
    request = urllib.request.Request(f"{base}/api/v1/nodes/{name}", headers={"Accept": "application/json"})
    context = None
    if base.startswith("https://"):
        context = ssl.create_default_context(cafile=f"{SA}/ca.crt")
        with open(f"{SA}/token") as handle:  # re-read each time: projected tokens rotate
            request.add_header("Authorization", "Bearer " + handle.read().strip())
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return json.load(response)


def ipv4_pod_cidr(node: dict) -> str | None:
    spec = node.get("spec") or {}
    for cidr in (spec.get("podCIDRs") or []) + [spec.get("podCIDR") or ""]:
        try:
            net = ipaddress.ip_network(cidr)
        except ValueError:
            continue
        if net.version == 4:
            return str(net)
    return None


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: node-config.py SRC DEST")
    src, dest = sys.argv[1], sys.argv[2]
    name = os.environ.get("MEMBRANE_NODE_NAME")
    if not name:
        sys.exit("node-config: MEMBRANE_NODE_NAME is not set")
    with open(src) as handle:
        config = yaml.safe_load(handle) or {}
    base = api_base()
    deadline = time.monotonic() + float(os.environ.get("MEMBRANE_IPAM_WAIT_SECONDS", "300"))
    delay = 1.0
    while True:
        problem = ""
        try:
            cidr = ipv4_pod_cidr(get_node(base, name))
            if cidr:
                break
            problem = "spec.podCIDR has no IPv4 CIDR yet (is --allocate-node-cidrs on?)"
        except (OSError, urllib.error.URLError, ValueError) as exc:
            problem = f"cannot read the Node: {exc}"
        if time.monotonic() >= deadline:
            sys.exit(f"node-config: node {name}: {problem}; giving up")
        print(f"node-config: node {name}: {problem}; retrying in {delay:.0f}s", file=sys.stderr, flush=True)
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
    config["pod_cidr"] = cidr
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    with open(dest + ".tmp", "w") as handle:
        yaml.safe_dump(config, handle, default_flow_style=False)
    os.replace(dest + ".tmp", dest)
    print(f"node-config: node {name}: pod_cidr {cidr} -> {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
