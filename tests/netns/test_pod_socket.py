"""`pod_socket`: the calling thread joins a pod's network namespace for a socket and a few
sysctl writes, then is back in its own (CNI ADD configures the pod side without a thread per
pod). The socket acts on the pod's namespace, the sysctls written are the pod's, and the
thread is home again also when a write fails."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from membrane.agent.netlinking import pod_socket
from membrane.agent.rtnl import RtnlSocket
from membrane_testkit.lab import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def _here() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture
def pod() -> Iterator[Path]:
    name = f"mbt-psock{os.getpid()}"
    path = netns.create(name)
    try:
        netns.run(["ip", "-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        yield path
    finally:
        netns.delete(name)


def test_the_socket_and_sysctls_are_the_pods_and_the_thread_comes_back(pod: Path) -> None:
    home = _here()
    assert netns.exec_in(pod.name, ["cat", "/proc/sys/net/ipv6/conf/p0/disable_ipv6"]).stdout.strip() == "0"
    sock = pod_socket(str(pod), {"net.ipv6.conf.p0.disable_ipv6": "1"})
    try:
        assert _here() == home
        assert sock.link("p0") is not None  # the pod's interfaces, not the node's
        assert sock.link("lo") is not None
        sock.batch([RtnlSocket.set_up(name="p1")])
    finally:
        sock.close()
    assert netns.exec_in(pod.name, ["cat", "/proc/sys/net/ipv6/conf/p0/disable_ipv6"]).stdout.strip() == "1"
    assert "UP" in netns.exec_in(pod.name, ["ip", "-br", "link", "show", "p1"]).stdout
    assert not os.path.exists("/proc/sys/net/ipv6/conf/p0")  # the node has no such interface


def test_a_failed_write_raises_and_the_thread_is_back_home(pod: Path) -> None:
    home = _here()
    with pytest.raises(FileNotFoundError):
        pod_socket(str(pod), {"net.ipv6.conf.nosuch0.disable_ipv6": "1"})
    assert _here() == home
    with pytest.raises(OSError):
        pod_socket("/proc/self/status", {})  # not a namespace: refused before anything
    assert _here() == home


def test_other_threads_stay_home_while_one_is_in_a_pod(pod: Path) -> None:
    home, seen, stop = _here(), set(), threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(_here())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(50):
            pod_socket(str(pod), {"net.ipv6.conf.p0.disable_ipv6": "1"}).close()
    finally:
        stop.set()
        watcher.join()
    assert seen == {home}
