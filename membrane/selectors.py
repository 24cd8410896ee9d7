"""Label selectors compiled into hashable matchers (pure).

`Selector` is the frozen, canonical form of a Kubernetes `LabelSelector`: `matchLabels` become
`In` requirements with one value, requirements are sorted and deduplicated, so two spellings
of the same selector compare (and hash) equal. That lets the policy engine cache "selector ->
matching identities" the way Cilium's SelectorCache does.

Semantics (apimachinery `LabelSelectorAsSelector`): all requirements must hold; `NotIn` and
`DoesNotExist` match objects that lack the key; the empty selector `{}` matches everything;
a null selector matches nothing (`Selector.nothing()`); callers where null means something
else (NetworkPolicy peers) decide that before compiling.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from membrane.k8s_models import LabelSelector


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, order=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is Operator.IN:
            return labels.get(self.key) in self.values
        if self.operator is Operator.NOT_IN:
            # Absent key: "not in" holds, as in Kubernetes.
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator is Operator.EXISTS:
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        if self.operator is Operator.EXISTS:
            return self.key
        if self.operator is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        if self.operator is Operator.IN and len(self.values) == 1:
            return f"{self.key}={self.values[0]}"
        word = "in" if self.operator is Operator.IN else "notin"
        return f"{self.key} {word} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """A conjunction of requirements; `matches_nothing` models the null selector."""

    requirements: tuple[Requirement, ...] = ()
    matches_nothing: bool = False

    @classmethod
    def everything(cls) -> Selector:
        return cls()

    @classmethod
    def nothing(cls) -> Selector:
        return cls(matches_nothing=True)

    @classmethod
    def of(
        cls,
        match_labels: Mapping[str, str] | None = None,
        requirements: Iterable[Requirement] = (),
    ) -> Selector:
        reqs = {Requirement(k, Operator.IN, (v,)) for k, v in (match_labels or {}).items()}
        reqs.update(
            Requirement(r.key, r.operator, tuple(sorted(set(r.values)))) for r in requirements
        )
        return cls(tuple(sorted(reqs)))

    @property
    def is_everything(self) -> bool:
        return not self.requirements and not self.matches_nothing

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.matches_nothing:
            return False
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __str__(self) -> str:
        if self.matches_nothing:
            return "<none>"
        if not self.requirements:
            return "<all>"
        return ",".join(str(r) for r in self.requirements)


def compile_selector(selector: LabelSelector | None) -> Selector:
    """A validated `LabelSelector` model as a matcher; None (null) matches nothing."""
    if selector is None:
        return Selector.nothing()
    return Selector.of(
        selector.match_labels,
        (
            Requirement(e.key, Operator(e.operator), tuple(e.values))
            for e in selector.match_expressions
        ),
    )


def parse_selector(data: Mapping[str, object] | None) -> Selector:
    """A Kubernetes-format selector dict (validated) as a matcher."""
    if data is None:
        return Selector.nothing()
    return compile_selector(LabelSelector.model_validate(dict(data)))
