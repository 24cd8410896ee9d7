"""The request and response values passed between the HTTP layer and the verbs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class Request:
    """An HTTP request as the verbs see it (query parameters keep their last value)."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    body: bytes = b""
    user: User | None = None  # who sent it (from the bearer token); None: the admin


@dataclass(frozen=True)
class User:
    """An authenticated user, as the API server's authenticators describe one."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)


ADMIN = User("kubernetes-admin", ("system:masters", "system:authenticated"))


@dataclass(frozen=True)
class Response:
    """A JSON (or plain text) answer."""

    code: int
    body: JSON | str
    headers: dict[str, str] = field(default_factory=dict)
