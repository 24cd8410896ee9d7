"""Netlink adapter: the only module that imports pyroute2.

Creates and removes pod veth pairs, sets addresses, routes and permanent neighbours on both
sides, and attaches the datapath programs to a host-side veth with tc (clsact + bpf filter in
direct-action mode); creates the node's VXLAN device and attaches its program the same way. Every call acts on the agent's own network namespace (the node) or on a
pod namespace given by path; nothing else.

Sockets: pyroute2 0.9 opens a netlink socket per calling thread and keeps it until the
IPRoute is closed, and the API serves every CNI request on a new thread, so calling it
from there leaked one socket per ADD, CHECK and DEL. One thread owns the IPRoute and makes
every pyroute2 call (`_owned`); the hot path uses pooled raw sockets (rtnl.py); a pod-side
socket lives as long as the one call that needs it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from membrane.bandwidth import BandwidthLimits, Shaper

from . import failpoints
from .rtnl import RtnlError, RtnlSocket, SocketPool

GATEWAY = IPv4Address("169.254.1.1")  # the pod's next hop: answered by the host veth's MAC
INGRESS_PARENT = "ffff:fff2"  # clsact ingress: packets the pod sends
EGRESS_PARENT = "ffff:fff3"  # clsact egress: packets the host stack sends to the pod
FILTER_PRIO = 1
FILTER_HANDLE = 1
_ENOENT = 2
_ENODEV = 19
_INGRESS, _EGRESS = 0xFFFFFFF2, 0xFFFFFFF3  # INGRESS_PARENT, EGRESS_PARENT as numbers
_CLONE_NEWNET = 0x40000000
_EEXIST, _EINVAL = 17, 22
_ETH_P_ALL = 0x0003
_ROOT_HANDLE, _INGRESS_HANDLE = 0x10000, 0xFFFF0000  # "1:" and "ffff:"
# IFLA_XDP_ATTACHED as pyroute2 names it -> ours; our modes -> XDP_FLAGS_DRV_MODE / XDP_FLAGS_SKB_MODE.
_XDP_ATTACHED = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload", "xdpmulti": "native"}
_XDP_FLAGS = {"native": 1 << 2, "generic": 1 << 1}
IFB_PREFIX = "mb-ifb-"  # the pod's ingress shaper device, in the pod namespace

_NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): which kind of namespace a file descriptor is

T = TypeVar("T")


class LinkExists(OSError):
    """An interface of the name a pod needs exists already; `side` is "host" or "pod"."""

    def __init__(self, side: str, name: str, where: str) -> None:
        super().__init__(errno.EEXIST, f"interface {name} already exists in {where}")
        self.side, self.name, self.where = side, name, where


def netns_problem(path: str) -> str | None:
    """Why `path` cannot be a pod's network namespace (None when it can): missing, not a
    namespace file (a regular file, a directory, another kind of namespace), or the node's
    own namespace (a pod wired there would take over the node's interfaces)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be opened: {os.strerror(exc.errno or 0)}"
    try:
        st = os.fstat(fd)
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            what = "a directory" if stat.S_ISDIR(st.st_mode) else \
                "a regular file" if stat.S_ISREG(st.st_mode) else "not a namespace file"
            return f"is not a network namespace ({what})"
        if kind != _CLONE_NEWNET:
            return "is a namespace, but not a network namespace"
        own = os.stat("/proc/self/ns/net")
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            return "is the node's own network namespace, not a pod's"
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class PodLink:
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_ifname: str
    pod_mac: str


_LIBC = ctypes.CDLL(None, use_errno=True)
_THREAD_NETNS = "/proc/thread-self/ns/net"


def _setns(fd: int, what: str) -> None:
    if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns {what}: {os.strerror(code)}")


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that has joined the network namespace at path (for /proc/sys)."""
    box: dict[str, object] = {}

    def runner() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            _setns(fd, path)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=runner, name="netns-worker")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]  # the worker stored an exception
    return box["value"]  # type: ignore[return-value]  # the worker stored fn's result


def pod_socket(path: str, sysctls: dict[str, str], procfs: Path = Path("/proc")) -> RtnlSocket:
    """A netlink socket of the network namespace at `path`, with those of its sysctls written
    first. The calling thread joins the namespace for just that (a socket and a few writes)
    and returns to its own; the socket keeps acting on the pod's namespace wherever it is used.
    No thread per pod (`in_netns` starts one: on a busy node its start was ~1 ms of an ADD).

    A thread that could not return would do the node's wiring inside the pod: the agent aborts
    rather (a restart recovers from its durable state, as after kill -9)."""
    own = os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, path)
        finally:
            os.close(target)
        try:
            sock = RtnlSocket()
            try:
                for name, value in sysctls.items():
                    write_sysctl(name, value, procfs)
            except BaseException:
                sock.close()
                raise
        finally:
            try:
                _setns(own, "back to the agent's own network namespace")
            except OSError as exc:
                os.write(2, f"membrane-agent: fatal: {exc}\n".encode())
                os.abort()
    finally:
        os.close(own)
    return sock


def write_sysctl(name: str, value: str, procfs: Path = Path("/proc")) -> None:
    """Write a sysctl of the calling thread's network namespace. `procfs` is where a procfs
    with a writable sys/net is mounted: a container's own /proc/sys is read-only unless it is
    privileged, so the chart mounts the node's /proc/sys/net elsewhere (--procfs). Entries
    under sys/net always belong to the network namespace of the thread that opens them."""
    with open(procfs / "sys" / name.replace(".", "/"), "w") as handle:
        handle.write(value)


class Netlink:
    """Operations on the node namespace (the agent's own) and on pod namespaces."""

    def __init__(self, procfs: Path = Path("/proc")) -> None:
        self.procfs = procfs
        # The one thread that creates, uses and closes the IPRoute (see the module docstring).
        self._owner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._ipr: IPRoute = self._owner.submit(IPRoute).result()
        # The CNI hot path (create, delete, look up, attach) uses plain rtnetlink sockets:
        # one per concurrent request, no lock shared between pods.
        self._rtnl = SocketPool()

    def _owned(self, fn: Callable[[IPRoute], T]) -> T:
        """Run fn(ipr) on the owner thread (which also serialises the calls)."""
        return self._owner.submit(fn, self._ipr).result()

    def close(self) -> None:
        self._owner.submit(self._ipr.close).result()
        self._owner.shutdown()
        self._rtnl.close()

    def ifindex(self, name: str) -> int | None:
        found = self._rtnl.link(name)  # by name: one round trip, never a dump of every link
        return found[0] if found else None

    def create_pod_link(self, host_ifname: str, netns: str, pod_ifname: str, address: IPv4Address,
                        mtu: int) -> PodLink:
        """veth pair with the peer born inside the pod namespace under its final name, both
        sides configured: three batches of netlink messages on the node side, two in the pod."""
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _, host = self._rtnl.batch([RtnlSocket.add_veth(host_ifname, pod_ifname, fd, mtu),
                                        RtnlSocket.get_link(host_ifname)])
        except RtnlError as exc:
            if exc.code == errno.EEXIST:  # nothing was created: say which side's name is taken
                self._name_taken(host_ifname, netns, pod_ifname)
            raise
        finally:
            os.close(fd)
        failpoints.hit("add.after-veth")
        assert host is not None
        host_ifindex, host_mac = RtnlSocket.parse_link(host)
        # The host side never talks IPv6 and must not answer for anything by itself.
        write_sysctl(f"net.ipv6.conf.{host_ifname}.disable_ipv6", "1", self.procfs)
        pod_mac = self._configure_pod_side(netns, pod_ifname, address, host_mac, self.procfs)
        failpoints.hit("add.after-pod-side")
        self._rtnl.batch([RtnlSocket.set_up(host_ifindex),
                          RtnlSocket.replace_route(address, 32, host_ifindex),
                          RtnlSocket.replace_neighbour(host_ifindex, address, pod_mac)])
        failpoints.hit("add.after-host-side")
        return PodLink(host_ifname, host_ifindex, host_mac, pod_ifname, pod_mac)

    def _name_taken(self, host_ifname: str, netns: str, pod_ifname: str) -> None:
        """After EEXIST from the veth creation: raise LinkExists for the side that has the name."""
        if self._rtnl.link(host_ifname) is not None:
            raise LinkExists("host", host_ifname, "the node's namespace")

        def lookup() -> tuple[int, str] | None:
            sock = RtnlSocket()
            try:
                return sock.link(pod_ifname)
            finally:
                sock.close()
        if in_netns(netns, lookup) is not None:
            raise LinkExists("pod", pod_ifname, netns)

    @staticmethod
    def _configure_pod_side(netns: str, pod_ifname: str, address: IPv4Address, host_mac: str, procfs: Path) -> str:
        """The pod's interface: IPv6 off, its address, routes through the gateway, the gateway's
        neighbour entry (sysctl and socket are the pod namespace's)."""
        sock = pod_socket(netns, {f"net.ipv6.conf.{pod_ifname}.disable_ipv6": "1"}, procfs)
        try:
            (reply,) = sock.batch([RtnlSocket.get_link(pod_ifname)])
            assert reply is not None
            idx, pod_mac = RtnlSocket.parse_link(reply)
            sock.batch([RtnlSocket.set_up(name="lo"),
                        RtnlSocket.add_address(idx, address, 32),
                        RtnlSocket.set_up(idx),
                        RtnlSocket.replace_route(GATEWAY, 32, idx),
                        RtnlSocket.replace_route(IPv4Address("0.0.0.0"), 0, idx, gateway=GATEWAY),
                        RtnlSocket.replace_neighbour(idx, GATEWAY, host_mac)])
            return pod_mac
        finally:
            sock.close()

    def set_alias(self, ifindex: int, alias: str) -> None:
        """Put `alias` on a link of the node (who owns a host veth: see EndpointManager)."""
        if alias:
            self._rtnl.batch([RtnlSocket.set_alias(ifindex, alias)])

    def delete_link(self, name: str) -> bool:
        """Remove a host veth (its peer goes with it). False when it was already gone."""
        try:
            self._rtnl.batch([RtnlSocket.del_link(name)])  # by name: one round trip
        except OSError as exc:
            if exc.errno not in (_ENOENT, _ENODEV):
                raise
            return False
        return True

    def attach(self, ifindex: int, from_container: tuple[int, str], to_container: tuple[int, str]) -> None:
        """Attach (or atomically replace) both programs; never a second filter."""
        self._rtnl.batch([RtnlSocket.add_clsact(ifindex)] + [  # EEXIST after an agent restart: fine
            RtnlSocket.replace_bpf_filter(ifindex, parent, FILTER_HANDLE, FILTER_PRIO, fd, name)
            for parent, (fd, name) in ((_INGRESS, from_container), (_EGRESS, to_container))])

    def attach_ingress(self, ifindex: int, program: tuple[int, str]) -> None:
        """Attach (or atomically replace) one program at tc ingress (the tunnel device)."""
        self._attach_one(ifindex, program, INGRESS_PARENT)

    def attach_egress(self, ifindex: int, program: tuple[int, str]) -> None:
        """Attach (or atomically replace) one program at tc egress (the tunnel device)."""
        self._attach_one(ifindex, program, EGRESS_PARENT)

    def _attach_one(self, ifindex: int, program: tuple[int, str], parent: str) -> None:
        fd, name = program

        def attach(ipr: IPRoute) -> None:
            try:
                ipr.tc("add", "clsact", ifindex)
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST: already there after an agent restart
                    raise
            ipr.tc("replace-filter", "bpf", ifindex, FILTER_HANDLE, fd=fd, name=name, parent=parent,
                   classid=1, direct_action=True, prio=FILTER_PRIO)
        self._owned(attach)

    def route_to_tunnel(self, ifindex: int, cidr: IPv4Network, source: IPv4Address | None) -> None:
        """The node's stack routes `cidr` (the cluster's pods; local pods keep their /32 routes)
        into the tunnel device, preferring `source` as its own address there. The device does no
        ARP: the frame's addresses are never looked at by the receiver, whose from_overlay
        delivers it. Idempotent (replace)."""
        def route(ipr: IPRoute) -> None:
            ipr.link("set", index=ifindex, arp=False)
            ipr.route("replace", dst=str(cidr), oif=ifindex, scope=253,  # link: no gateway
                      **({"prefsrc": str(source)} if source is not None else {}))
        self._owned(route)

    def ensure_vxlan(self, name: str, port: int, mtu: int) -> int:
        """The node's VXLAN device in external (collect-metadata) mode, created if missing; its ifindex.

        Idempotent: an agent restart keeps the existing device (and the program attached to it),
        only its MTU and state are set again. A link of that name with another kind is an error.
        """
        def ensure(ipr: IPRoute) -> int:
            found = ipr.link_lookup(ifname=name)
            if found:
                info = ipr.get_links(found[0])[0].get_attr("IFLA_LINKINFO")
                kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
                if kind != "vxlan":
                    raise RuntimeError(f"link {name} exists and is a {kind}, not a vxlan device")
            else:
                # No VNI, remote or local: every packet brings its own (bpf_skb_set_tunnel_key).
                # No learning: the datapath addresses remote nodes, never the FDB.
                ipr.link("add", ifname=name, kind="vxlan", vxlan_collect_metadata=1,
                         vxlan_port=port, vxlan_learning=0, mtu=mtu)
                found = ipr.link_lookup(ifname=name)
            index = int(found[0])
            ipr.link("set", index=index, mtu=mtu, state="up")
            return index
        ifindex = self._owned(ensure)
        # Nothing but the datapath's own packets cross it: no IPv6 autoconf chatter.
        write_sysctl(f"net.ipv6.conf.{name}.disable_ipv6", "1", self.procfs)
        return ifindex

    def underlay(self, node_ip: IPv4Address | None) -> tuple[IPv4Address | None, int | None]:
        """(node IP, MTU of its link): the link holding node_ip, else the default route's link
        and its preferred source. (None, None) when neither exists (a bare lab node)."""
        def find(ipr: IPRoute) -> tuple[IPv4Address | None, int | None]:
            if node_ip is not None:
                for addr in ipr.get_addr(family=2):
                    if addr.get("IFA_ADDRESS") == str(node_ip):
                        return node_ip, int(ipr.get_links(addr["index"])[0].get("IFLA_MTU"))
                return node_ip, None
            for route in ipr.get_routes(family=2, dst_len=0, table=254):
                oif = route.get_attr("RTA_OIF")
                if oif is None:
                    continue
                mtu = int(ipr.get_links(oif)[0].get("IFLA_MTU"))
                src = route.get_attr("RTA_PREFSRC")
                if src is None:
                    addrs = ipr.get_addr(family=2, index=oif)
                    src = addrs[0].get("IFA_ADDRESS") if addrs else None
                return (IPv4Address(src) if src else None), mtu
            return None, None
        return self._owned(find)

    # --- XDP (the prefilter on the node's devices) ----------------------------------------------
    def xdp_program(self, ifindex: int) -> tuple[str | None, int]:
        """(mode, program id) of the XDP program on a device: mode "native", "generic",
        "offload" or None when there is none."""
        def look(ipr: IPRoute) -> tuple[str | None, int]:
            link = ipr.get_links(ifindex)[0]
            xdp = link.get_attr("IFLA_XDP")
            if xdp is None:
                return None, 0
            mode = _XDP_ATTACHED.get(xdp.get_attr("IFLA_XDP_ATTACHED"))
            return mode, int(xdp.get_attr("IFLA_XDP_PROG_ID") or 0) if mode else 0
        return self._owned(look)

    def set_xdp(self, ifindex: int, fd: int, mode: str) -> None:
        """Attach, or atomically replace, the device's XDP program in `mode` ("native" or
        "generic"); fd -1 detaches. The kernel swaps the program pointer: no packet goes
        unjudged or is lost by a replacement. NetlinkError when the mode is refused."""
        # The nested attribute spelled out: pyroute2's xdp_fd= shorthand would drop the flags.
        xdp = {"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", _XDP_FLAGS[mode])]}
        self._owned(lambda ipr: ipr.link("set", index=ifindex, xdp=xdp))

    def attached_programs(self, ifindex: int) -> dict[str, list[str]]:
        """Names of bpf filters per hook ("ingress"/"egress"), to check and to count."""
        def names(ipr: IPRoute) -> dict[str, list[str]]:
            found: dict[str, list[str]] = {}
            for hook, parent in (("ingress", 0xFFFFFFF2), ("egress", 0xFFFFFFF3)):
                try:
                    filters = ipr.get_filters(ifindex, parent=parent)
                except NetlinkError:
                    filters = []
                found[hook] = [str(opts.get_attr("TCA_BPF_NAME")) for flt in filters
                               if (opts := flt.get_attr("TCA_OPTIONS")) is not None]
            return found
        return self._owned(names)

    def pod_addresses(self, netns: str, ifname: str) -> tuple[str, list[str]] | None:
        """(MAC, addresses) of the pod interface, or None when it is missing."""
        def look(_: IPRoute) -> tuple[str, list[str]] | None:
            try:
                pod = NetNS(netns)
            except (OSError, NetlinkError):
                return None
            try:
                found = pod.link_lookup(ifname=ifname)
                if not found:
                    return None
                link = pod.get_links(found[0])[0]
                addrs = [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in pod.get_addr(index=found[0], family=2)]
                return str(link.get("address")), addrs
            finally:
                pod.close()
        return self._owned(look)  # its sockets, too, are per thread

    # --- bandwidth limits (membrane.bandwidth), applied inside the pod namespace -----------
    # Egress: a TBF as the pod interface's root qdisc, so everything the pod sends waits in
    # the bucket before it reaches the host veth (where from_container redirects it). Ingress:
    # traffic into the pod arrives by bpf_redirect_peer straight at the pod interface's
    # ingress, past any host-side qdisc; an ingress qdisc there sends it through an IFB device
    # whose root TBF shapes it. The host veth's clsact (membrane's hook) is not touched.

    @staticmethod
    def ifb_name(ifname: str) -> str:
        return (IFB_PREFIX + ifname)[:15]

    @staticmethod
    def _tbf(pod: NetNS, ifindex: int, shaper: Shaper) -> None:
        pod.tc("replace", "tbf", ifindex, _ROOT_HANDLE, rate=shaper.rate, burst=shaper.burst, limit=shaper.limit)

    def shape_pod(self, netns: str, ifname: str, limits: BandwidthLimits) -> tuple[str, str] | None:
        """Apply (or re-apply) the limits; returns the IFB's (name, MAC) when ingress is shaped."""
        return self._owned(lambda _: self._shape(netns, ifname, limits))  # NetNS sockets are per thread

    def _shape(self, netns: str, ifname: str, limits: BandwidthLimits) -> tuple[str, str] | None:
        pod = NetNS(netns)
        try:
            (idx,) = pod.link_lookup(ifname=ifname)
            if limits.egress is not None:
                self._tbf(pod, idx, limits.egress)
            if limits.ingress is None:
                return None
            ifb = self.ifb_name(ifname)
            if not pod.link_lookup(ifname=ifb):
                pod.link("add", ifname=ifb, kind="ifb")
            (ifb_idx,) = pod.link_lookup(ifname=ifb)
            pod.link("set", index=ifb_idx, state="up")
            self._tbf(pod, ifb_idx, limits.ingress)
            try:  # a fresh ingress qdisc: its one filter is ours (ADD may be repeated)
                pod.tc("del", "ingress", idx, _INGRESS_HANDLE)
            except NetlinkError as exc:
                if exc.code not in (_ENOENT, _EINVAL):
                    raise
            pod.tc("add", "ingress", idx, _INGRESS_HANDLE)
            pod.tc("add-filter", "u32", idx, parent=_INGRESS_HANDLE, prio=1, protocol=_ETH_P_ALL,
                   target=_ROOT_HANDLE, keys=["0x0/0x0+0"],
                   action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": ifb_idx})
            return ifb, str(pod.get_links(ifb_idx)[0].get("address"))
        finally:
            pod.close()

    def unshape_pod(self, netns: str, ifname: str) -> None:
        """Remove the pod's IFB (the qdiscs go with the pod interface); nothing if it is gone.
        Every DEL calls this: one raw rtnetlink delete by name in the pod, no pyroute2 NetNS."""
        ifb = self.ifb_name(ifname)

        def delete() -> None:
            sock = RtnlSocket()
            try:
                sock.batch([RtnlSocket.del_link(ifb)])
            except OSError as exc:
                if exc.errno not in (_ENOENT, _ENODEV):
                    raise
            finally:
                sock.close()

        in_netns(netns, delete)

    def pod_shaping(self, netns: str, ifname: str) -> dict[str, int | None]:
        """TBF rates (bytes/s) in force for the pod: {"egress": ..., "ingress": ...}."""
        def rate(pod: NetNS, name: str) -> int | None:
            found = pod.link_lookup(ifname=name)
            if not found:
                return None
            for qdisc in pod.get_qdiscs(index=found[0]):
                if qdisc.get_attr("TCA_KIND") == "tbf" and qdisc["parent"] == 0xFFFFFFFF:
                    return int(qdisc.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["rate"])
            return None

        def look(_: IPRoute) -> dict[str, int | None]:
            try:
                pod = NetNS(netns)
            except (OSError, NetlinkError):
                return {"egress": None, "ingress": None}
            try:
                return {"egress": rate(pod, ifname), "ingress": rate(pod, self.ifb_name(ifname))}
            finally:
                pod.close()
        return self._owned(look)

    def host_addresses(self) -> list[str]:
        """The node's own IPv4 addresses (its identity is HOST), loopback aside."""
        # Read at every policy and LB apply (never stale): one raw dump (~50 us), not pyroute2's
        # parse of every attribute on its owner thread (~0.5 ms, twice per CNI ADD).
        found = (RtnlSocket.parse_address(m) for m in self._rtnl.dump(RtnlSocket.dump_ipv4_addresses()))
        return sorted(str(a) for a in found if a is not None and not str(a).startswith("127."))

    def host_link_aliases(self, prefix: str) -> dict[str, tuple[int, str, str]]:
        """Host veths by name prefix -> (ifindex, MAC, alias; "" when it has none)."""
        return self._owned(lambda ipr: {
            str(ln.get("ifname")): (int(ln["index"]), str(ln.get("address") or ""), str(ln.get_attr("IFLA_IFALIAS") or ""))
            for ln in ipr.get_links() if str(ln.get("ifname", "")).startswith(prefix)})

    def host_links(self, prefix: str) -> dict[str, int]:
        """Host veths the agent created (by name prefix) -> ifindex."""
        return self._owned(lambda ipr: {str(ln.get("ifname")): int(ln["index"]) for ln in ipr.get_links()
                                        if str(ln.get("ifname", "")).startswith(prefix)})
