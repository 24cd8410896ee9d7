"""Kubernetes label and name syntax: the validation rules the API server applies (pure).

Each checker returns a list of human-readable reasons (empty when valid), like the Go
`validation.IsQualifiedName` family, so callers can prefix the field path themselves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME_MAX = 63
_PREFIX_MAX = 253
_PORT_NAME_MAX = 15

_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_PORT_NAME = re.compile(r"^[-a-z0-9]+$")

# The API server adds this label to every namespace (since 1.21); standalone mode adds it too
# so `namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}` works everywhere.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


SHOWN_MAX = 64  # characters of a value an error message repeats


def shown(value: str, limit: int = SHOWN_MAX, quote: bool = True) -> str:
    """A value as an error message shows it: quoted when short; a long one is named by its
    start and its length, never repeated whole (a 1 MB label must not come back twice)."""
    if len(value) <= limit:
        return repr(value) if quote else value
    head = value[: limit // 2]
    return f"{head!r}... ({len(value)} characters)" if quote else f"{head}... ({len(value)} characters)"


def dns_label_errors(value: str) -> list[str]:
    """RFC 1123 label (namespace names): lowercase alphanumerics and '-', at most 63."""
    errors: list[str] = []
    if len(value) > _NAME_MAX:
        errors.append(f"must be no more than {_NAME_MAX} characters")
    if not _DNS1123_LABEL.match(value):
        errors.append(
            "must consist of lower case alphanumeric characters or '-', and must start and "
            "end with an alphanumeric character"
        )
    return errors


def dns_subdomain_errors(value: str) -> list[str]:
    """RFC 1123 subdomain (most object names, label key prefixes): at most 253."""
    errors: list[str] = []
    if len(value) > _PREFIX_MAX:
        errors.append(f"must be no more than {_PREFIX_MAX} characters")
    if not _DNS1123_SUBDOMAIN.match(value):
        errors.append(
            "must consist of lower case alphanumeric characters, '-' or '.', and must start "
            "and end with an alphanumeric character"
        )
    return errors


def label_key_errors(key: str) -> list[str]:
    """A label key: optional DNS-subdomain prefix and '/', then a name of at most 63."""
    prefix, slash, name = key.rpartition("/")
    errors: list[str] = []
    if slash:
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors.extend(f"prefix part {reason}" for reason in dns_subdomain_errors(prefix))
    if not name:
        errors.append("name part must be non-empty")
        return errors
    if len(name) > _NAME_MAX:
        errors.append(f"name part must be no more than {_NAME_MAX} characters")
    if not _QUALIFIED_NAME.match(name):
        errors.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        )
    return errors


def label_value_errors(value: str) -> list[str]:
    """A label value: empty, or at most 63 alphanumerics, '-', '_', '.' (alnum at both ends)."""
    errors: list[str] = []
    if len(value) > _NAME_MAX:
        errors.append(f"must be no more than {_NAME_MAX} characters")
    if value and not _QUALIFIED_NAME.match(value):
        errors.append(
            "must be empty or consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        )
    return errors


def port_name_errors(name: str) -> list[str]:
    """IANA_SVC_NAME (container port names, named ports in policies)."""
    errors: list[str] = []
    if len(name) > _PORT_NAME_MAX:
        errors.append(f"must be no more than {_PORT_NAME_MAX} characters")
    if not _PORT_NAME.match(name):
        errors.append("must contain only lower-case alphanumeric characters (a-z, 0-9) or '-'")
    if not any("a" <= ch <= "z" for ch in name):
        errors.append("must contain at least one letter (a-z)")
    if "--" in name:
        errors.append("must not contain consecutive hyphens ('--')")
    if name.startswith("-") or name.endswith("-"):
        errors.append("must not begin or end with a hyphen")
    return errors


def label_errors(labels: Mapping[str, str]) -> list[str]:
    """All problems of a label map, each prefixed with the offending key."""
    errors: list[str] = []
    for key, value in labels.items():
        errors.extend(f"key {shown(key)}: {reason}" for reason in label_key_errors(key))
        errors.extend(
            f"value {shown(value)} of {shown(key)}: {reason}" for reason in label_value_errors(value)
        )
    return errors


def namespace_labels(name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """Namespace labels as the API server would store them (with the name label)."""
    result = dict(labels)
    result.setdefault(NAMESPACE_NAME_LABEL, name)
    return result
