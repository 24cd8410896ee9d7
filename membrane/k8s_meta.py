"""The pieces every Kubernetes-format model shares (pure): the model base, ObjectMeta, ObjectRef.

Split from membrane/k8s_models.py so the kinds' modules (k8s_models: Namespace, Node, Pod,
NetworkPolicy; service_models: Service, EndpointSlice) build on one base without importing
each other.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from membrane.labels import dns_label_errors, dns_subdomain_errors, label_errors, shown

DEFAULT_NAMESPACE = "default"
Protocol = Literal["TCP", "UDP", "SCTP"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ObjectRef(NamedTuple):
    """Key of an object: (namespace, name); cluster-scoped objects have namespace ""."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def parse(cls, text: str) -> ObjectRef:
        """`ns/name` -> (ns, name); a bare `name` is cluster-scoped."""
        namespace, _, name = text.rpartition("/")
        return cls(namespace, name)


def none_as_empty(value: Any) -> Any:
    # YAML `labels:` with nothing under it arrives as null; the API server treats it as empty.
    return {} if value is None else value


def none_as_empty_list(value: Any) -> Any:
    return [] if value is None else value


StrMap = Annotated[dict[str, str], BeforeValidator(none_as_empty)]


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        # Validators are built at a model's first use, not at import: importing the object
        # models (an agent start imports them all before its datapath compile starts) costs
        # a fraction; a kind never seen never builds. Validation is the same.
        defer_build=True,
    )


def raise_errors(errors: list[str]) -> None:
    if errors:
        raise ValueError("; ".join(errors))


def named_as_dns_subdomain(metadata: ObjectMeta) -> ObjectMeta:
    """The name check of kinds named as DNS subdomains (Node, NetworkPolicy)."""
    if not metadata.name:
        raise ValueError("name: required")
    raise_errors([f"name: {shown(str(metadata.name))} {r}" for r in dns_subdomain_errors(metadata.name)][:1])
    return metadata


# --- metadata -----------------------------------------------------------------------------


class ObjectMeta(Model):
    name: str = ""
    namespace: str | None = None
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        raise_errors(label_errors(labels))
        return labels

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, namespace: str | None) -> str | None:
        if namespace:
            raise_errors(dns_label_errors(namespace))
        return namespace
