"""Serving CNI requests: turns the plugin's ADD/DEL/CHECK/STATUS/GC into endpoint work.

The plugin is a thin client; every decision about a pod's network is made here, and every
failure leaves as a CniError carrying a code from the specification.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from membrane.bandwidth import BandwidthLimits, parse_bandwidth
from membrane.cni_types import (
    INTERFACE_MISMATCH,
    INTERNAL_ERROR,
    INVALID_ENVIRONMENT,
    IPAM_EXHAUSTED,
    PLUGIN_NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    Attachment,
    CniError,
    NetConf,
    build_result,
)
from membrane.ipam import IpamExhausted

from . import failpoints
from .endpoints import Endpoint, EndpointManager
from .netlinking import GATEWAY, LinkExists, Netlink, netns_problem

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IFNAME_BAD = re.compile(r"[/\s:]")


def _validate_names(container_id: str, ifname: str) -> None:
    if not _CONTAINER_ID.match(container_id):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {container_id!r} is not a valid container id",
                       "letters, digits, '_', '.' and '-' only")
    if not 0 < len(ifname) <= 15 or _IFNAME_BAD.search(ifname) or ifname in (".", ".."):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is not a valid interface name")


def attachment_of(ep: Endpoint) -> Attachment:
    return Attachment(host_ifname=ep.host_ifname, host_mac=ep.host_mac, pod_ifname=ep.ifname, pod_mac=ep.pod_mac,
                      sandbox=ep.netns, address=f"{ep.ip}/32", gateway=str(GATEWAY))


class CniHandler:
    def __init__(self, endpoints: EndpointManager, netlink: Netlink, is_ready: Callable[[], bool],
                 before_add: Callable[[str, str], int | None] | None = None) -> None:
        self.endpoints = endpoints
        self.netlink = netlink
        self.is_ready = is_ready
        # Kubernetes mode: raises CniError(11) until IPAM can serve, then gives the pod's
        # starting identity (waits briefly for it to be streamed).
        self.before_add = before_add

    def handle(self, req: dict[str, Any]) -> Any:
        conf = NetConf.parse(req.get("config") or {})
        command = req.get("command")
        container_id, ifname = str(req.get("containerID", "")), str(req.get("ifName", ""))
        if command in ("ADD", "DEL", "CHECK"):
            _validate_names(container_id, ifname)
        try:
            if command == "ADD":
                args = req.get("args") or {}
                with failpoints.armed(args):
                    return self.add(conf, container_id, ifname, str(req.get("netns", "")), args)
            if command == "DEL":
                self._unshape(str(req.get("netns", "")), ifname)
                self.endpoints.delete(container_id, ifname)
                return None
            if command == "CHECK":
                self.check(conf, container_id, ifname, str(req.get("netns", "")))
                return None
            if command == "STATUS":
                if not self.is_ready():
                    raise CniError(PLUGIN_NOT_AVAILABLE, "membrane agent is starting and not ready yet")
                return None
            if command == "GC":
                return self.gc(conf)
        except CniError:
            raise
        except LinkExists as exc:
            if exc.side == "pod":
                raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname} is taken: {exc.strerror}",
                               "another interface in the pod's network namespace has this name") from exc
            raise CniError(INTERNAL_ERROR, f"ADD failed: {exc.strerror} and could not be replaced") from exc
        except IpamExhausted as exc:
            raise CniError(IPAM_EXHAUSTED, "no pod address left on this node", str(exc)) from exc
        except Exception as exc:
            raise CniError(INTERNAL_ERROR, f"{command} failed: {exc}", repr(exc)) from exc
        raise CniError(INVALID_ENVIRONMENT, f"unknown CNI command {command!r}")

    def add(self, conf: NetConf, container_id: str, ifname: str, netns: str, args: dict[str, str]) -> dict[str, Any]:
        problem = netns_problem(netns)
        if problem is not None:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {netns} {problem}")
        limits = self._limits(conf)  # refused before anything is allocated
        namespace = args.get("K8S_POD_NAMESPACE", "")
        pod = args.get("K8S_POD_NAME", "")
        identity = self.before_add(namespace, pod) if self.before_add is not None else None
        # The endpoint manager's listeners (identity, policy, ipcache) run before this returns.
        ep = self.endpoints.add(container_id, ifname, netns, namespace, pod) if identity is None else \
            self.endpoints.add(container_id, ifname, netns, namespace, pod, identity=identity)
        try:
            result = build_result(attachment_of(ep), conf.cni_version, conf.prev_result)
            if limits is not None:
                try:
                    ifb = self.netlink.shape_pod(netns, ifname, limits)
                except Exception as exc:
                    raise CniError(INTERNAL_ERROR, f"applying the bandwidth limits failed: {exc}", repr(exc)) from exc
                if ifb is not None:  # the spec lists every interface a plugin created
                    result["interfaces"].append({"name": ifb[0], "mac": ifb[1], "sandbox": netns})
            failpoints.hit("add.after-shape")
        except BaseException:  # no half-limited pod: undo the whole ADD
            self._unshape(netns, ifname)
            self.endpoints.delete(container_id, ifname)
            raise
        return result

    def _limits(self, conf: NetConf) -> BandwidthLimits | None:
        """runtimeConfig.bandwidth (kubernetes.io/*-bandwidth annotations via the runtime)."""
        return parse_bandwidth(conf.raw.get("runtimeConfig"), self.endpoints.config.mtu or 1500)

    def _unshape(self, netns: str, ifname: str) -> None:
        if netns and os.path.exists(netns):
            self.netlink.unshape_pod(netns, ifname)

    def check(self, conf: NetConf, container_id: str, ifname: str, netns: str) -> None:
        ep = self.endpoints.get(container_id, ifname)
        if ep is None:
            raise CniError(UNKNOWN_CONTAINER, f"container {container_id} ({ifname}) is not known to membrane")
        problems: list[str] = []
        idx = self.netlink.ifindex(ep.host_ifname)
        if idx is None:
            problems.append(f"host interface {ep.host_ifname} is missing")
        else:
            hooks = self.netlink.attached_programs(idx)
            if hooks.get("ingress") != ["from_container"] or hooks.get("egress") != ["to_container"]:
                problems.append(f"datapath programs on {ep.host_ifname} are {hooks}")
        pod_side = self.netlink.pod_addresses(netns, ifname)
        if pod_side is None:
            problems.append(f"interface {ifname} is missing in {netns}")
        else:
            mac, addrs = pod_side
            if mac != ep.pod_mac:
                problems.append(f"{ifname} has MAC {mac}, expected {ep.pod_mac}")
            if f"{ep.ip}/32" not in addrs:
                problems.append(f"{ifname} lacks address {ep.ip}/32 (has {addrs})")
        if ep.ip not in self.endpoints.datapath.read_endpoints():
            problems.append(f"endpoint map has no entry for {ep.ip}")
        limits = self._limits(conf)
        if limits is not None and pod_side is not None:
            rates = self.netlink.pod_shaping(netns, ifname)
            for direction in ("ingress", "egress"):
                shaper = getattr(limits, direction)
                if shaper is not None and rates[direction] != shaper.rate:
                    problems.append(f"{direction} limit is {rates[direction]} bytes/s, expected {shaper.rate}")
        prev_ips = [ip.get("address") for ip in (conf.prev_result or {}).get("ips", [])]
        if conf.prev_result is not None and f"{ep.ip}/32" not in prev_ips:
            problems.append(f"prevResult does not hold {ep.ip}/32")
        if problems:
            raise CniError(INTERFACE_MISMATCH, "pod network is not as membrane set it up", "; ".join(problems))

    def gc(self, conf: NetConf) -> dict[str, Any]:
        valid = conf.raw.get("cni.dev/valid-attachments") or []
        keep = {(a.get("containerID"), a.get("ifname")) for a in valid if isinstance(a, dict)}
        removed = [ep.key for ep in self.endpoints.list() if (ep.container_id, ep.ifname) not in keep]
        for ep in self.endpoints.list():
            if (ep.container_id, ep.ifname) not in keep:
                self.endpoints.delete(ep.container_id, ep.ifname)
        return {"removed": removed}
