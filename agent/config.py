"""Agent configuration: one pydantic model fed by a file, the environment and flags.

Precedence, lowest first: defaults < config file (YAML or JSON) < MEMBRANE_* environment
variables < command-line flags.
"""

from __future__ import annotations

import argparse
import json
import os
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from membrane.maglev import check_size


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_name: str = Field(default_factory=lambda: os.uname().nodename)
    # standalone: local store + embedded identity allocation; kubernetes: the operator's state
    # stream (PodCIDR, namespaces, pods, identities, policies) at `operator_address`.
    mode: Literal["standalone", "kubernetes"] = "standalone"
    operator_address: str | None = None  # unix:///path or host:port (kubernetes mode)
    identity_wait_seconds: float = Field(default=2.0, ge=0)  # CNI ADD waits this long for a pod's identity
    pod_cidr: IPv4Network = IPv4Network("10.200.0.0/24")
    cluster_cidr: IPv4Network | None = None  # pod traffic to it is not masqueraded
    state_dir: Path = Path("/var/lib/membrane")
    bpffs_root: Path = Path("/sys/fs/bpf/membrane")
    api_socket: Path = Path("/run/membrane/agent.sock")
    # A procfs whose sys/net is writable (the node's /proc/sys/net mounted there in a container
    # that is not privileged, e.g. /host/proc); sysctls are written under it.
    procfs: Path = Path("/proc")
    # The CNI network configuration: copied from cni_conf_source to write_cni_conf_when_ready
    # once the agent is ready; on SIGTERM removed (cni_uninstall "always") or kept ("never").
    write_cni_conf_when_ready: Path | None = None
    cni_conf_source: Path | None = None
    cni_uninstall: Literal["always", "never"] = "never"
    http_addr: str = "127.0.0.1:9962"  # /healthz, /readyz, /metrics
    masquerade: bool = True
    flow_events: bool = True  # datapath flow events (drops, verdicts, connections) to the observer
    flow_ring_size: int = Field(default=4096, ge=16, le=1_000_000)  # recent flows held in memory
    observer_tcp: str | None = None  # e.g. 127.0.0.1:4245; the unix socket is always served
    allow_host_traffic: bool = True  # the node (kubelet probes) may reach pods isolated by policy
    # Pod MTU. None: derived, the underlay's MTU minus the VXLAN overhead when tunnelling (so an
    # encapsulated full-size packet still fits the underlay), else the underlay's MTU.
    mtu: int | None = Field(default=None, ge=576, le=65535)
    # Cross-node pod traffic: VXLAN in external (collect-metadata) mode, the source identity in the VNI.
    tunnel: Literal["vxlan", "disabled"] = "vxlan"
    tunnel_device: str = Field(default="membrane_vxlan", min_length=1, max_length=15)
    tunnel_port: int = Field(default=8472, ge=1, le=65535)  # Linux's VXLAN port, as Cilium and flannel use
    node_ip: IPv4Address | None = None  # underlay address; None: the source address of the default route
    # cgroup v2 directory the Service socket hooks attach to (the node's cgroup v2 root in a
    # cluster: pods and node processes alike). None: no socket load balancing.
    cgroup_root: Path | None = None
    # Services: True, membrane is the cluster's Service load balancer (no kube-proxy); False (the
    # default), kube-proxy translates Services and membrane keeps its translated flows working.
    kube_proxy_replacement: bool = False
    # The node's devices (names in its network namespace): the XDP prefilter attaches to them, and
    # bpf_host.c load-balances NodePort/externalIP/LoadBalancer traffic arriving on them. Empty: neither.
    devices: tuple[str, ...] = ()
    # XDP on --devices: auto (native where the driver has it, else generic), native or generic.
    xdp_mode: Literal["auto", "native", "generic"] = "auto"
    # A plain deny list for this node (one IPv4 prefix per line, '#' comments): sources dropped by
    # the prefilter, next to the cluster's CIDRDenyLists. Re-read at every resync when it changed.
    prefilter_cidrs: Path | None = None
    prefilter_cidr_map_entries: int = Field(default=131072, ge=64, le=1 << 24)
    # Entries of each per-packet frontend's Maglev table (NodePort, externalIP, LoadBalancer on
    # --devices): a prime, at least ~100x its backends.
    lb_maglev_table_size: int = Field(default=1021, ge=3, le=131071)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    # A kernel header tree for bcc (BCC_KERNEL_SOURCE), e.g. the image's, laid out by
    # deploy/image/kernel-headers.sh. None: bcc's default, /lib/modules/$(uname -r)/{build,source}.
    kernel_headers: Path | None = None
    # Sizes of the maps the agent rebuilds from its state (a change of size takes effect at the
    # next start: the map is recreated and refilled before the programs are replaced). A policy
    # change that would not fit is refused with the reason and the old policy stays enforced.
    policy_map_entries: int = Field(default=65536, ge=64, le=1 << 24)
    ipcache_map_entries: int = Field(default=65536, ge=64, le=1 << 24)
    cidr_map_entries: int = Field(default=16384, ge=64, le=1 << 24)
    # Mutual TLS with the operator (state stream) and on --observer-tcp: the node's key and
    # certificate from a directory (ca.crt, tls.crt, tls.key; re-read when they change), or by
    # a CertificateSigningRequest through the Kubernetes API (--tls-bootstrap; kept in tls_dir,
    # default <state-dir>/tls, renewed at 2/3 of the lifetime). Kubernetes mode and
    # --observer-tcp refuse to run without TLS unless --insecure-plaintext is given.
    tls_dir: Path | None = None
    tls_bootstrap: bool = False
    insecure_plaintext: bool = False
    tls_server_name: str = "membrane-operator"  # the name the operator's certificate carries
    tls_ca_configmap: str = "kube-system/membrane-ca"  # bootstrap: where the CA certificate is published
    # Bootstrap only: how to reach the Kubernetes API (default: in-cluster service account).
    api_server: str | None = None
    kubeconfig: Path | None = None
    api_token_file: Path | None = None
    conntrack_gc_seconds: float = Field(default=30.0, gt=0)
    resync_seconds: float = Field(default=60.0, gt=0)
    # A damaged standalone object store (Pods, policies: the kernel cannot rebuild them) makes the
    # agent refuse to start; with this it starts with an empty store instead (the damaged files
    # are kept as *.damaged).
    accept_state_loss: bool = False

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, value: str) -> str:
        if not value or len(value) > 253:
            raise ValueError("node name must be 1..253 characters")
        return value

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: object) -> object:
        # A flag or environment variable gives "eth0,eth1"; a config file may give a list.
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            for name in value:
                if not (isinstance(name, str) and 0 < len(name) <= 15 and "/" not in name
                        and not any(c.isspace() for c in name)):
                    raise ValueError(f"devices: {name!r} is not a network device name (1-15 characters, "
                                     "no '/' or spaces)")
            if len(set(value)) != len(value):
                raise ValueError("devices: a device is named twice")
        return value

    @field_validator("kernel_headers")
    @classmethod
    def _kernel_headers(cls, value: Path | None) -> Path | None:
        # Checked here, not at compile time: bcc would otherwise fall back to other headers
        # (or fail with a message that does not name this setting).
        if value is not None and not (value.is_absolute() and (value / "include/linux/kconfig.h").is_file()):
            raise ValueError(f"kernel_headers {value} is not a kernel header tree (no include/linux/kconfig.h); "
                             "deploy/image/kernel-headers.sh lays one out")
        return value

    @field_validator("lb_maglev_table_size")
    @classmethod
    def _maglev_size(cls, value: int) -> int:
        check_size(value)
        return value

    @field_validator("cgroup_root")
    @classmethod
    def _cgroup_root(cls, value: Path | None) -> Path | None:
        # A cgroup v2 directory has cgroup.procs and no "tasks" file (v1 directories have both).
        if value is not None and not (value.is_absolute() and (value / "cgroup.procs").is_file()
                                      and not (value / "tasks").exists()):
            raise ValueError(f"cgroup_root {value} is not a cgroup v2 directory")
        return value

    @model_validator(mode="after")
    def _cni_conf(self) -> AgentConfig:
        if (self.write_cni_conf_when_ready is None) != (self.cni_conf_source is None):
            raise ValueError("--write-cni-conf-when-ready and --cni-conf-source go together")
        return self

    @model_validator(mode="after")
    def _cidrs(self) -> AgentConfig:
        tls = self.tls_dir is not None or self.tls_bootstrap
        if not tls and not self.insecure_plaintext:
            if self.mode == "kubernetes":
                raise ValueError("kubernetes mode talks to the operator over mutual TLS: give --tls-dir or "
                                 "--tls-bootstrap (or --insecure-plaintext to run without, knowingly)")
            if self.observer_tcp:
                raise ValueError("--observer-tcp serves flows over mutual TLS: give --tls-dir or "
                                 "--tls-bootstrap (or --insecure-plaintext to run without, knowingly)")
        if self.mode == "kubernetes":
            if not self.operator_address:
                raise ValueError("kubernetes mode needs operator_address (--operator-address)")
            return self  # the PodCIDR comes from the operator; cluster_cidr stays as given
        if self.cluster_cidr is None:
            self.cluster_cidr = self.pod_cidr
        elif not self.pod_cidr.subnet_of(self.cluster_cidr):
            raise ValueError(f"pod_cidr {self.pod_cidr} is not inside cluster_cidr {self.cluster_cidr}")
        return self

    @property
    def map_sizes(self) -> dict[str, int]:
        """Max entries of the resizable datapath maps, by role."""
        return {"policy": self.policy_map_entries, "ipcache": self.ipcache_map_entries,
                "cidr": self.cidr_map_entries, "prefilter_cidr": self.prefilter_cidr_map_entries}

    @property
    def tls_path(self) -> Path:
        """Where the node's TLS files are (bootstrap keeps them here)."""
        return self.tls_dir if self.tls_dir is not None else self.state_dir / "tls"

    @property
    def http_host_port(self) -> tuple[str, int]:
        host, _, port = self.http_addr.rpartition(":")
        return host or "127.0.0.1", int(port)


_FLAGS = {
    "node_name": "--node-name", "pod_cidr": "--pod-cidr", "cluster_cidr": "--cluster-cidr",
    "state_dir": "--state-dir", "procfs": "--procfs", "bpffs_root": "--bpffs-root", "api_socket": "--api-socket",
    "http_addr": "--http-addr", "mtu": "--mtu", "log_level": "--log-level",
    "log_format": "--log-format", "conntrack_gc_seconds": "--conntrack-gc-seconds",
    "resync_seconds": "--resync-seconds", "flow_ring_size": "--flow-ring-size", "observer_tcp": "--observer-tcp", "mode": "--mode", "operator_address": "--operator-address",
    "identity_wait_seconds": "--identity-wait-seconds", "kernel_headers": "--kernel-headers",
    "policy_map_entries": "--policy-map-entries", "ipcache_map_entries": "--ipcache-map-entries",
    "cidr_map_entries": "--cidr-map-entries",
    "write_cni_conf_when_ready": "--write-cni-conf-when-ready", "cni_conf_source": "--cni-conf-source",
    "cni_uninstall": "--cni-uninstall",
    "tls_dir": "--tls-dir", "tls_server_name": "--tls-server-name", "tls_ca_configmap": "--tls-ca-configmap",
    "api_server": "--api-server", "kubeconfig": "--kubeconfig", "api_token_file": "--api-token-file",
    "tunnel": "--tunnel", "tunnel_device": "--tunnel-device", "tunnel_port": "--tunnel-port", "node_ip": "--node-ip",
    "cgroup_root": "--cgroup-root", "devices": "--devices", "xdp_mode": "--xdp-mode",
    "prefilter_cidrs": "--prefilter-cidrs", "prefilter_cidr_map_entries": "--prefilter-cidr-map-entries",
    "lb_maglev_table_size": "--lb-maglev-table-size",
}


# What `membrane-agent --help` says about each option: one entry per AgentConfig field (for a
# boolean, what its --no-... flag does). tests/integration/test_agent_help.py fails when one is missing.
HELP: dict[str, str] = {
    "write_cni_conf_when_ready": "write the CNI network configuration (--cni-conf-source) to this path once "
                                 "the agent is ready, never before",
    "cni_conf_source": "the CNI network configuration to write (with --write-cni-conf-when-ready)",
    "cni_uninstall": "on SIGTERM: always (remove the written CNI configuration) or never (keep it for the "
                     "next agent)",
    "node_name": "this node's name (as in Kubernetes)",
    "mode": "standalone (local store, embedded identity allocation) or kubernetes (the operator's "
            "state stream)",
    "operator_address": "the operator's state stream, unix:///path or HOST:PORT (kubernetes mode)",
    "identity_wait_seconds": "how long a CNI ADD waits for the pod's identity to arrive",
    "pod_cidr": "this node's pod address range (standalone mode; the operator assigns it otherwise)",
    "cluster_cidr": "all pods' addresses: pod traffic to it is not masqueraded (standalone default: "
                    "the pod CIDR)",
    "state_dir": "where the agent keeps its state (endpoints, identities, the local store)",
    "bpffs_root": "bpffs directory the datapath maps are pinned under",
    "api_socket": "unix socket for the CNI plugin and membranectl (the observer's is next to it)",
    "procfs": "a procfs whose sys/net is writable (e.g. the node's /proc mounted at /host/proc)",
    "http_addr": "HOST:PORT of /healthz, /readyz and /metrics",
    "masquerade": "--no-masquerade: pod traffic leaving the cluster keeps the pod's address",
    "flow_events": "--no-flow-events: the datapath emits no flow events (counters still count)",
    "flow_ring_size": "recent flows held in memory for the observer",
    "observer_tcp": "HOST:PORT to serve the observer on besides its unix socket",
    "allow_host_traffic": "--no-allow-host-traffic: the node's own traffic to pods obeys "
                          "NetworkPolicy like any other peer",
    "mtu": "pod interface MTU (default: the underlay's, less the VXLAN overhead when tunnelling)",
    "tunnel": "cross-node pod traffic: vxlan (source identity in the VNI) or disabled",
    "tunnel_device": "name of the VXLAN device",
    "tunnel_port": "UDP port of the VXLAN tunnel",
    "node_ip": "underlay address of this node (default: the source address of the default route)",
    "cgroup_root": "cgroup v2 directory the Service socket hooks attach to (ClusterIP load balancing "
                   "for every process below it; in a cluster the node's cgroup v2 root)",
    "devices": "the node's network devices, comma-separated: the XDP prefilter attaches to each, and "
               "NodePort, externalIP and LoadBalancer traffic arriving on them is load-balanced per packet "
               "in tc (names in the agent's network namespace)",
    "xdp_mode": "XDP on --devices: auto (native where the driver supports it, else generic), native or generic",
    "prefilter_cidrs": "a file of IPv4 prefixes (one per line, # comments) whose sources the XDP prefilter "
                       "drops on this node, next to the cluster's CIDRDenyLists; re-read at each resync",
    "prefilter_cidr_map_entries": "capacity of the prefilter's CIDR deny map (a change applies at the next start)",
    "lb_maglev_table_size": "entries of each NodePort/externalIP/LoadBalancer frontend's Maglev table "
                            "(a prime, ~100x the backends)",
    "log_level": "debug, info, warning or error",
    "log_format": "json or text",
    "kernel_headers": "kernel header tree for bcc (default: /lib/modules/$(uname -r)/build)",
    "policy_map_entries": "capacity of the policy map (a change applies at the next start)",
    "ipcache_map_entries": "capacity of the ipcache map (a change applies at the next start)",
    "cidr_map_entries": "capacity of the ipBlock CIDR map (a change applies at the next start)",
    "tls_dir": "directory with this node's TLS files (ca.crt, tls.crt, tls.key; re-read when they "
               "change) for mutual TLS with the operator and on --observer-tcp; with --tls-bootstrap "
               "where the requested certificate is kept (default <state-dir>/tls)",
    "tls_bootstrap": "--no-tls-bootstrap: take the certificate from --tls-dir as it is (the default; "
                     "--tls-bootstrap requests it by CSR, signer membrane.io/agent, and renews it)",
    "insecure_plaintext": "--no-insecure-plaintext: require TLS in kubernetes mode and on "
                          "--observer-tcp (the default; --insecure-plaintext runs without)",
    "tls_server_name": "the name the operator's serving certificate must carry",
    "tls_ca_configmap": "ConfigMap (namespace/name) the operator publishes the CA certificate in "
                        "(--tls-bootstrap reads what to trust there)",
    "api_server": "Kubernetes API URL for --tls-bootstrap (default: in-cluster service account)",
    "kubeconfig": "kubeconfig file for --tls-bootstrap's Kubernetes API calls",
    "api_token_file": "bearer token file for --tls-bootstrap's Kubernetes API calls",
    "conntrack_gc_seconds": "period of the expired-conntrack sweep",
    "resync_seconds": "period of the full resync that repairs drift between state and kernel",
    "kube_proxy_replacement": "--no-kube-proxy-replacement: leave Service translation to kube-proxy and keep "
                              "the flows it translates working (the default; --kube-proxy-replacement: membrane "
                              "load-balances Services itself, for clusters without kube-proxy)",
    "accept_state_loss": "--no-accept-state-loss: refuse to start when the standalone object store is "
                         "damaged (the default; --accept-state-loss starts with an empty store instead)",
}


def _help(key: str) -> str:
    field = AgentConfig.model_fields[key]
    default = "node's hostname" if field.default_factory is not None else field.default
    shown = "not set" if default is None else default
    text = HELP.get(key, "")
    if field.annotation is bool:
        return f"{text.partition(': ')[2] or text} (env MEMBRANE_{key.upper()}=false)".replace("%", "%%")
    return f"{text} (default: {shown}; env MEMBRANE_{key.upper()})".replace("%", "%%")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="membrane-agent", description="membrane node agent: the datapath, the CNI endpoint "
        "manager, policy, flows and metrics of one node.",
        epilog="Precedence: defaults < --config file < MEMBRANE_<OPTION> environment < flags.")
    parser.add_argument("--config", help="YAML or JSON config file (keys as in AgentConfig; env MEMBRANE_CONFIG)")
    for key, flag in _FLAGS.items():
        parser.add_argument(flag, dest=key, default=None, help=_help(key))
    for key in ("flow_events", "masquerade", "allow_host_traffic"):
        parser.add_argument("--no-" + key.replace("_", "-"), dest=key, action="store_false", default=None,
                            help=_help(key))
    # TLS switches are off by default: the positive flag turns each on.
    parser.add_argument("--tls-bootstrap", dest="tls_bootstrap", action="store_true", default=None,
                        help="get this node's certificate by a CertificateSigningRequest through the Kubernetes "
                             "API and renew it at 2/3 of its lifetime (kept in --tls-dir, default <state-dir>/tls)")
    parser.add_argument("--insecure-plaintext", dest="insecure_plaintext", action="store_true", default=None,
                        help="talk to the operator and serve --observer-tcp without TLS: no authentication "
                             "(tests only; Kubernetes mode refuses to start without TLS otherwise)")
    parser.add_argument("--accept-state-loss", dest="accept_state_loss", action="store_true", default=None,
                        help="start with an empty object store when it is damaged (the damaged files are kept "
                             "as *.damaged) instead of refusing to start; Pods and policies must then be applied "
                             "again")
    parser.add_argument("--kube-proxy-replacement", dest="kube_proxy_replacement", action="store_true",
                        default=None, help="membrane load-balances Services itself (socket hooks, NodePort in tc): "
                                           "for clusters without kube-proxy")
    for key in ("tls_bootstrap", "insecure_plaintext", "accept_state_loss", "kube_proxy_replacement"):
        parser.add_argument("--no-" + key.replace("_", "-"), dest=key, action="store_false", default=None,
                            help=_help(key))
    return parser


def _read_file(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml  # only needed for YAML config files

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: config must be a mapping")
    return {k.replace("-", "_"): v for k, v in data.items()}


def load_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> AgentConfig:
    """Build the config from file, environment and flags; raises SystemExit on bad input."""
    env = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    merged: dict[str, Any] = {}
    config_file = args.config or env.get("MEMBRANE_CONFIG")
    try:
        if config_file:
            merged.update(_read_file(config_file))
        for key in AgentConfig.model_fields:
            value = env.get("MEMBRANE_" + key.upper())
            if value is not None:
                merged[key] = value
        merged.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
        return AgentConfig.model_validate(merged)
    except (OSError, ValueError, ValidationError) as exc:
        raise SystemExit(f"membrane-agent: invalid configuration: {exc}") from exc
