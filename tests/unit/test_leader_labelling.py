"""The leader's own-pod label (what the chart's Service selects): written only when it changes,
removed on stepping down (and on a first pass as standby, for a label a previous container
left), a failed write retried after a pause."""

from __future__ import annotations

from typing import Any

from membrane.operator.kube_client import KubeError
from membrane.operator.leader_labelling import LABEL, RETRY_SECONDS, LeaderLabeller
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.resources import Resource


class FakeKube:
    def __init__(self) -> None:
        self.patches: list[tuple[str, Any]] = []
        self.fail = False

    def merge_patch(self, resource: Resource, name: str, body: Any, namespace: str | None = None) -> Any:
        if self.fail:
            raise KubeError(500, "Internal Server Error")
        self.patches.append((resource.object_path(name, namespace), body))
        return {}


def test_label_follows_leadership_and_is_written_once() -> None:
    rest, now = FakeKube(), [0.0]
    labeller = LeaderLabeller(rest, "kube-system", "op-a", OperatorMetrics(),  # type: ignore[arg-type]
                              clock=lambda: now[0])
    assert labeller.sync(False)  # first pass as standby: any stale label removed
    assert labeller.sync(False)
    assert labeller.sync(True) and labeller.sync(True)
    assert labeller.sync(False)
    path = "/api/v1/namespaces/kube-system/pods/op-a"
    assert rest.patches == [(path, {"metadata": {"labels": {LABEL: None}}}),
                            (path, {"metadata": {"labels": {LABEL: "true"}}}),
                            (path, {"metadata": {"labels": {LABEL: None}}})]


def test_failed_write_is_retried_after_a_pause() -> None:
    rest, now, metrics = FakeKube(), [0.0], OperatorMetrics()
    labeller = LeaderLabeller(rest, "ns", "op", metrics, clock=lambda: now[0])  # type: ignore[arg-type]
    rest.fail = True
    assert not labeller.sync(True)
    rest.fail = False
    now[0] = RETRY_SECONDS / 2
    assert not labeller.sync(True) and rest.patches == []  # not hammering the API
    now[0] = RETRY_SECONDS
    assert labeller.sync(True) and len(rest.patches) == 1
    assert metrics.registry.get_sample_value("membrane_operator_api_write_errors_total",
                                             {"what": "leader_label"}) == 1
