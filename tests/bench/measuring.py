"""Traffic measurements between two pods: sockperf TCP ping-pong latency and iperf3 throughput.

Servers are started inside the server pod's namespace and always stopped by their own PID.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass

from membrane_testkit.lab import netns

from .setups import Endpoint


@dataclass(frozen=True)
class Latency:
    """sockperf ping-pong result, microseconds. sockperf reports half the round trip."""

    avg_us: float
    p50_us: float
    p99_us: float
    observations: int


@dataclass(frozen=True)
class Throughput:
    """iperf3 TCP result: receiver goodput and sender retransmits."""

    gbps: float
    retransmits: int


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_sockperf(text: str) -> Latency:
    """Parse the summary of `sockperf pp` (average, percentile 50 and 99, observation count)."""
    clean = _ANSI.sub("", text)
    avg = re.search(r"avg-latency=([\d.]+)", clean)
    p50 = re.search(r"percentile 50\.000 =\s*([\d.]+)", clean)
    p99 = re.search(r"percentile 99\.000 =\s*([\d.]+)", clean)
    count = re.search(r"Total (\d+) observations", clean)
    if not (avg and p50 and p99 and count):
        raise ValueError(f"unexpected sockperf output:\n{clean[-2000:]}")
    return Latency(float(avg.group(1)), float(p50.group(1)), float(p99.group(1)), int(count.group(1)))


def parse_iperf3(text: str) -> Throughput:
    """Parse `iperf3 -J` client output."""
    data = json.loads(text)
    if "error" in data:
        raise ValueError(f"iperf3: {data['error']}")
    end = data["end"]
    return Throughput(end["sum_received"]["bits_per_second"] / 1e9, int(end["sum_sent"].get("retransmits", 0)))


def _wait_listening(ep: Endpoint, port: int, server: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server in {ep.netns} exited {server.returncode}")
        listening = netns.exec_in(ep.netns, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if listening.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"server in {ep.netns} not listening on {port} after {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _client_server(server: Endpoint, client: Endpoint, port: int, server_cmd: list[str],
                   client_cmd: list[str], timeout: float) -> str:
    """Start the server in its pod, run the client in the other, return the client's stdout."""
    proc = netns.popen_in(server.netns, server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL)
    try:
        _wait_listening(server, port, proc)
        return netns.exec_in(client.netns, client_cmd, timeout=timeout).stdout
    finally:
        _stop(proc)


def latency(server: Endpoint, client: Endpoint, seconds: int = 5, port: int = 11111) -> Latency:
    """TCP ping-pong with sockperf for `seconds` (one connection, 14-byte messages)."""
    out = _client_server(server, client, port,
                         ["sockperf", "sr", "--tcp", "-i", server.ip, "-p", str(port)],
                         ["sockperf", "pp", "--tcp", "-i", server.ip, "-p", str(port), "-t", str(seconds)],
                         timeout=seconds + 30)
    return parse_sockperf(out)


def throughput(server: Endpoint, client: Endpoint, seconds: int = 5, port: int = 5201) -> Throughput:
    """Single-stream TCP bulk transfer with iperf3 for `seconds`."""
    out = _client_server(server, client, port,
                         ["iperf3", "-s", "-1", "-B", server.ip, "-p", str(port)],
                         ["iperf3", "-c", server.ip, "-p", str(port), "-t", str(seconds), "-J"],
                         timeout=seconds + 30)
    return parse_iperf3(out)
