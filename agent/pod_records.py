"""A pod as the agent's managers record it, whichever source it came from (pure).

Standalone mode's store holds Pod objects; the operator's stream carries endpoint records
(`EndpointState`). Both become one `PodRecord` at the source's edge, so the policy manager
takes records and never a Pod object rebuilt from a stream record and parsed again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from membrane.api.state_objects import EndpointState
from membrane.k8s_models import NamedPort, Pod


@dataclass(frozen=True)
class PodRecord:
    """What policy, identities and the ipcache need of a pod."""

    labels: tuple[tuple[str, str], ...] = ()
    ips: tuple[str, ...] = ()
    node_name: str | None = None
    host_ip: str | None = None  # standalone: where a remote pod runs, when the object says
    named_ports: tuple[NamedPort, ...] = ()
    host_network: bool = False

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def pod_record(pod: Pod) -> PodRecord:
    """A stored Pod object (standalone's source)."""
    return PodRecord(tuple(sorted(pod.metadata.labels.items())), pod.ips, pod.spec.node_name,
                     pod.status.host_ip or None, pod.named_ports(), pod.spec.host_network)


def endpoint_record(state: EndpointState) -> PodRecord:
    """A streamed endpoint (the operator's stream): taken as it is."""
    return PodRecord(tuple(state.labels), tuple(state.ips), state.node_name or None, None,
                     tuple(NamedPort(p.name, p.protocol or "TCP", p.port) for p in state.named_ports))


def as_record(pod: Pod | PodRecord | None) -> PodRecord | None:
    return pod_record(pod) if isinstance(pod, Pod) else pod


def namespace_labels_of(obj: object) -> Mapping[str, str] | None:
    """A Namespace object's labels, or the labels themselves (a streamed namespace record)."""
    if obj is None or isinstance(obj, Mapping):
        return obj
    return dict(obj.metadata.labels)  # type: ignore[attr-defined]  # a k8s_models.Namespace
