"""Flow observer throughput: decoded + enriched + stored, and served through GetFlows.

No root, no kernel: synthetic `struct mb_flow_event` records shaped like a busy node's (a few
hundred pods, some world traffic, drops and policy verdicts). Called by tests/bench/run.py;
also runnable alone: `python -m tests.bench.flows_rate`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from membrane.agent.observing import EndpointInfo, EventType, FlowObserver, StaticDirectory, encode_event
from membrane.flows import FlowFilter


def synthetic_events(n: int, pods: int = 200) -> tuple[list[bytes], StaticDirectory]:
    ips = [f"10.200.{i // 250}.{i % 250 + 1}" for i in range(pods)]
    directory = StaticDirectory(
        endpoints={ip: EndpointInfo(f"ns{i % 10}", f"pod-{i}", {"app": f"app{i % 20}"}, 256 + i % 50)
                   for i, ip in enumerate(ips)},
        rules={r: [f"ns{r % 10}/policy-{r}"] for r in range(1, 51)},
    )
    now = time.monotonic_ns()
    kinds = (EventType.TRACE_NEW, EventType.POLICY_VERDICT, EventType.DROP, EventType.TRACE_END)
    events = []
    for i in range(n):
        kind = kinds[i % 4]
        world = i % 7 == 0
        events.append(encode_event(
            ts_ns=now + i, saddr=ips[i % pods], daddr=f"93.184.{i % 200}.{i % 250}" if world else ips[(i * 7 + 3) % pods],
            sport=30000 + i % 30000, dport=(80, 443, 5432, 53)[i % 4], nexthdr=17 if i % 4 == 3 else 6,
            type=kind, verdict=1 if kind == EventType.DROP else 0, reason=7 if kind == EventType.DROP else 0,
            direction=i % 2, tcp_flags=0x02, src_identity=256 + i % 50, dst_identity=2 if world else 256 + (i * 3) % 50,
            rule_ref=i % 51, len=60 + i % 1400, count=1))
    return events, directory


def measure_ingest(n: int = 100_000, capacity: int = 4096) -> dict[str, Any]:
    """Flows/s through on_event (decode + enrich + count) and the ring (batched like the pump)."""
    events, directory = synthetic_events(n)
    obs = FlowObserver("bench", directory, capacity=capacity)
    obs._batching = True
    started = time.perf_counter()
    for i, record in enumerate(events):
        obs.on_event(record)
        if i % 64 == 63:  # a ring buffer poll typically hands over tens of records
            obs.flush()
    obs.flush()
    elapsed = time.perf_counter() - started
    assert obs.ring.seen == n
    return {"flows": n, "seconds": round(elapsed, 3), "flows_per_second": round(n / elapsed)}


def measure_serving(n: int = 4096, rounds: int = 5, with_filter: bool = False, batch: bool = True) -> dict[str, Any]:
    """Flows/s a GetFlows client receives (decoded back into Flows) from a full ring over a unix
    socket. Client and server share this process (and its GIL), so a separate membranectl
    process gets somewhat more."""
    from membrane.agent.observing import ObserverServer
    from membrane.ctl.observe import fetch_flows

    events, directory = synthetic_events(n)
    obs = FlowObserver("bench", directory, capacity=n)
    for record in events:
        obs.on_event(record)
    allow = [FlowFilter(namespace=["ns1", "ns2"], protocol=["tcp"])] if with_filter else []
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "observer.sock"
        server = ObserverServer(obs, sock)
        server.start()
        try:
            total, started = 0, time.perf_counter()
            for _ in range(rounds):
                total += sum(1 for _ in fetch_flows(f"unix://{sock}", allow=allow, timeout=60, batch=batch))
            elapsed = time.perf_counter() - started
        finally:
            server.stop(0.1)
    scanned = n * rounds
    return {"flows_received": total, "flows_scanned": scanned, "seconds": round(elapsed, 3),
            "flows_per_second": round(total / elapsed), "scanned_per_second": round(scanned / elapsed)}


def run(n: int = 100_000) -> dict[str, Any]:
    return {"ingest": measure_ingest(n), "serve_all": measure_serving(),
            "serve_filtered": measure_serving(with_filter=True),
            "serve_unbatched": measure_serving(rounds=1, batch=False)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
