"""Label and field selectors in the query-string syntax of the Kubernetes API.

Labels: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a` (exists), `!a` (does not exist),
`a>3`, `a<3`; requirements are joined with commas and all must hold. Fields: `path=v`, `path==v`,
`path!=v` over the field labels a resource supports (a missing field reads as the empty string).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .statuses import ApiError, bad_request

JSON = dict[str, Any]
Predicate = Callable[[JSON], bool]

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\((.*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*({_KEY})\s*(==|!=|=|>|<)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One label requirement."""

    key: str
    op: str  # "in", "notin", "exists", "!", ">", "<"
    values: frozenset[str]

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a label map satisfies this requirement."""
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op == "in":
            return present and labels[self.key] in self.values
        if self.op == "notin":
            return not present or labels[self.key] not in self.values
        if not present:
            return False
        try:
            have, want = int(labels[self.key]), int(next(iter(self.values)))
        except ValueError:
            return False
        return have > want if self.op == ">" else have < want


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [p for p in (part.strip() for part in parts) if p]


def _bad_label(part: str, why: str) -> ApiError:
    return bad_request(f"unable to parse requirement: {why}: {part!r}")


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse a label selector; raises ApiError 400 on bad syntax."""
    requirements: list[Requirement] = []
    for part in _split_top(text):
        if match := _SET_RE.match(part):
            values = frozenset(v.strip() for v in match.group(4).split(",") if v.strip())
            if not all(_VALUE_RE.match(v) for v in values):
                raise _bad_label(part, "invalid label value")
            requirements.append(Requirement(match.group(1), match.group(3), values))
        elif part.startswith("!"):
            key = part[1:].strip()
            if not _KEY_RE.match(key):
                raise _bad_label(part, "invalid label key")
            requirements.append(Requirement(key, "!", frozenset()))
        elif match := _CMP_RE.match(part):
            key, op, value = match.group(1), match.group(3), match.group(4)
            if not _VALUE_RE.match(value) or (op in "<>" and not re.fullmatch(r"-?\d+", value)):
                raise _bad_label(part, "invalid label value")
            mapped = {"=": "in", "==": "in", "!=": "notin"}.get(op, op)
            requirements.append(Requirement(key, mapped, frozenset([value])))
        elif _KEY_RE.match(part):
            requirements.append(Requirement(part, "exists", frozenset()))
        else:
            raise _bad_label(part, "found unexpected token")
    return requirements


def label_predicate(text: str | None) -> Predicate:
    """A predicate over whole objects for a label selector (None or empty selects everything)."""
    if not text:
        return lambda _obj: True
    requirements = parse_label_selector(text)

    def matches(obj: JSON) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r.matches(labels) for r in requirements)

    return matches


def field_value(obj: JSON, path: str) -> str:
    """The string a field selector compares: booleans lowercase, a missing field the empty string."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return ""
        current = current[part]
    if isinstance(current, bool):
        return "true" if current else "false"
    if current is None:
        return ""
    if isinstance(current, dict):
        # `source` on core events compares the source component.
        return str(current.get("component", ""))
    return str(current)


def field_predicate(text: str | None, supported: tuple[str, ...], custom: bool = False) -> Predicate:
    """A predicate for a field selector; raises ApiError 400 for unsupported fields or bad syntax."""
    if not text:
        return lambda _obj: True
    terms: list[tuple[str, bool, str]] = []
    allowed = ("metadata.name", "metadata.namespace") + supported
    for part in _split_top(text):
        match = re.fullmatch(r"\s*([^=!\s]+)\s*(==|!=|=)\s*(.*?)\s*", part)
        if not match:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        path, op, value = match.groups()
        if path not in allowed:
            raise bad_request(f'"{path}" is not a known field selector: only "metadata.name", "metadata.namespace"'
                              if custom else f"field label not supported: {path}")
        terms.append((path, op == "!=", value))

    def matches(obj: JSON) -> bool:
        return all((field_value(obj, path) != value) if negate else (field_value(obj, path) == value)
                   for path, negate, value in terms)

    return matches
