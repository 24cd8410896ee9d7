"""The agent's socket API keeps its request threads (agent/api_serving.py): a connection goes
to an idle thread or a new one, never queued behind a busy one; sequential requests reuse one
thread; a burst leaves at most `max_idle` threads; a failing handler is answered and its thread
serves on; a stopped server leaves no thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from membrane.agent.api_serving import ApiServer, _Server
from membrane.ctl.client import AgentError, request


def _request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "api-request"]


def test_requests_reuse_threads_and_never_wait_for_a_busy_one(tmp_path: Path) -> None:
    burst = 40
    barrier = threading.Barrier(burst, timeout=20)
    served_by: list[int] = []

    def together(req: dict[str, Any]) -> int:
        barrier.wait()  # every request of the burst in flight at once, or none returns
        return threading.get_native_id()

    def alone(req: dict[str, Any]) -> int:
        served_by.append(threading.get_native_id())
        return len(served_by)

    def broken(req: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    sock = tmp_path / "agent.sock"
    server = ApiServer(sock, {"together": together, "alone": alone, "broken": broken})
    server.start()
    try:
        for _ in range(30):
            request("alone", str(sock))
        assert len(set(served_by)) == 1  # one thread served them all, one after the other
        with pytest.raises(AgentError, match="handler bug"):
            request("broken", str(sock))
        assert request("alone", str(sock)) == 31 and served_by[-1] == served_by[0]
        with ThreadPoolExecutor(burst) as pool:
            threads = list(pool.map(lambda _: request("together", str(sock), timeout=30), range(burst)))
        assert len(set(threads)) == burst
        deadline = time.monotonic() + 10
        while len(_request_threads()) > _Server.max_idle and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 1 <= len(_request_threads()) <= _Server.max_idle  # the burst left no crowd
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while _request_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _request_threads()
