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


@dataclass(frozen=True)
class Response:
    """A JSON (or plain text) answer."""

    code: int
    body: JSON | str
    headers: dict[str, str] = field(default_factory=dict)
