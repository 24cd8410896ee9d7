"""Shared fixtures of the Kubernetes-mode end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from membrane_testkit.lab import netns
from membrane_testkit.lab.cluster import KubeLab


@pytest.fixture
def lab() -> Iterator[KubeLab]:
    kube = KubeLab(identity_wait=1.0)
    try:
        kube.start()
        yield kube
    finally:
        nodes = [n.netns for n in kube.nodes.values()]
        kube.close()
        assert not [n for prefix in nodes for n in netns.listed(prefix)], "lab namespaces left behind"
