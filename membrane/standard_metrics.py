"""The metrics every Prometheus exporter is expected to have, added to a component's registry:
`process_*` (CPU, memory, open files, start time), `python_info`, `python_gc_*`, and
`membrane_build_info{version,commit,python_version,component}` (always 1; join on it).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, GCCollector, PlatformCollector, ProcessCollector

from membrane.build_info import build_info


def add_standard_metrics(registry: CollectorRegistry, component: str) -> None:
    """Register the process, platform and GC collectors and the build-info gauge."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = build_info()
    Gauge("membrane_build_info", "membrane build running in this process (always 1)",
          ["version", "commit", "python_version", "component"], registry=registry) \
        .labels(info.version, info.commit, info.python_version, component).set(1)
