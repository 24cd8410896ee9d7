"""Kubernetes `Status` error bodies and the exception that carries them to the HTTP layer."""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]

_REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_body(
    code: int,
    message: str,
    reason: str | None = None,
    details: JSON | None = None,
) -> JSON:
    """A `metav1.Status` failure object as the API server encodes it."""
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason if reason is not None else _REASONS.get(code, ""),
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def success_body(details: JSON) -> JSON:
    """The `Status` a delete of a resource that does not return the deleted object answers."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


class ApiError(Exception):
    """A request failed; `body` is the Status the server answers with HTTP `code`."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: JSON | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = status_body(code, message, reason, details)
        self.headers = headers or {}


def qualified(plural: str, group: str) -> str:
    """`pods` or `leases.coordination.k8s.io`, as the server names a resource in messages."""
    return f"{plural}.{group}" if group else plural


def _details(name: str, plural: str, group: str, causes: list[JSON] | None = None) -> JSON:
    details: JSON = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    if causes:
        details["causes"] = causes
    return details


def not_found(plural: str, group: str, name: str) -> ApiError:
    """404 NotFound for one object."""
    return ApiError(404, f'{qualified(plural, group)} "{name}" not found', "NotFound",
                    _details(name, plural, group))


def already_exists(plural: str, group: str, name: str) -> ApiError:
    """409 AlreadyExists on create."""
    return ApiError(409, f'{qualified(plural, group)} "{name}" already exists', "AlreadyExists",
                    _details(name, plural, group))


def conflict(plural: str, group: str, name: str) -> ApiError:
    """409 Conflict: the precondition on metadata.resourceVersion (or uid) failed."""
    message = (f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": the object has been '
               "modified; please apply your changes to the latest version and try again")
    return ApiError(409, message, "Conflict", _details(name, plural, group))


def invalid(kind: str, plural: str, group: str, name: str, field: str, detail: str,
            value: Any = None, cause: str = "FieldValueInvalid") -> ApiError:
    """422 Invalid with one field cause, worded like apimachinery's field errors."""
    human = {"FieldValueRequired": "Required value", "FieldValueInvalid": "Invalid value",
             "FieldValueForbidden": "Forbidden", "FieldValueDuplicate": "Duplicate value"}.get(cause, "Invalid value")
    text = f"{human}: {detail}" if cause != "FieldValueInvalid" else f"Invalid value: {value!r}: {detail}"
    subject = f"{kind}.{group}" if group else kind
    message = f'{subject} "{name}" is invalid: {field}: {text}'
    causes = [{"reason": cause, "message": text, "field": field}]
    return ApiError(422, message, "Invalid", {**_details(name, plural, group, causes), "kind": kind})


def gone(message: str) -> ApiError:
    """410 Expired: the requested resourceVersion has been compacted away."""
    return ApiError(410, message, "Expired")


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, message, "BadRequest")
