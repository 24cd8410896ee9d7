"""Metrics every exporter is expected to have (process_*, python_*, membrane_build_info) on
the agent and the operator, and content negotiation of /metrics: the Prometheus text format
by default, OpenMetrics for a scraper that asks for it. Checked with promtool and the
OpenMetrics parser."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from membrane import build_info as build_info_module
from membrane.agent.heap_freezing import GcPauses
from membrane.agent.metrics import AgentMetrics
from membrane.http_serving import HttpServer
from membrane.operator.metrics import OperatorMetrics

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.fixture(params=["agent", "operator"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    if request.param == "agent":
        agent_metrics = AgentMetrics()
        agent_metrics.add_gc_pauses(GcPauses())  # as the agent adds them (agent/node_agent.py)
        registry = agent_metrics.registry
    else:
        registry = OperatorMetrics().registry
    server = HttpServer("127.0.0.1", 0, registry, lambda: True, lambda: True, name="metrics-test")
    server.start()
    yield request.param, server.port
    server.stop()


def scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_text_format_by_default_with_process_and_build_info(served: tuple[str, int]) -> None:
    component, port = served
    ctype, body = scrape(port)
    assert ctype.startswith("text/plain; version=0.0.4")
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds", "python_info", "python_gc_objects_collected_total"):
        assert f"\n{name}" in body, name
    info = build_info_module.build_info()
    assert (f'membrane_build_info{{commit="{info.commit}",component="{component}",'
            f'python_version="{info.python_version}",version="{info.version}"}} 1.0') in body
    assert info.version != "unknown"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) missing")
def test_promtool_accepts_the_exposition(served: tuple[str, int]) -> None:
    _component, port = served
    _ctype, body = scrape(port)
    done = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_openmetrics_when_asked(served: tuple[str, int]) -> None:
    component, port = served
    for accept in (OPENMETRICS, "application/openmetrics-text", f"{OPENMETRICS};q=0.9, text/plain;q=0.5",
                   PROMETHEUS_ACCEPT):
        ctype, body = scrape(port, accept)
        assert ctype.startswith("application/openmetrics-text; version=1.0.0"), (accept, ctype)
        assert body.endswith("# EOF\n")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        info = families["membrane_build_info"]
        assert info.samples[0].labels["component"] == component and info.samples[0].value == 1
        assert "process_cpu_seconds" in families and families["process_cpu_seconds"].type == "counter"
    ctype, _ = scrape(port, "text/plain")
    assert ctype.startswith("text/plain")


def test_commit_from_environment_or_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build_info_module.COMMIT_ENV, "0123456789ab")
    assert build_info_module._commit() == "0123456789ab"
    monkeypatch.delenv(build_info_module.COMMIT_ENV)
    source = Path(build_info_module.__file__).resolve().parent.parent
    if (source / ".git").exists():
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert build_info_module._commit() == head
    else:
        assert build_info_module._commit() == "unknown"
