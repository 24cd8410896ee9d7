"""Raw JSON requests through the official client's `ApiClient` (writes and reads by path).

The generated `patch_*` methods pick `application/json-patch+json` for a dict body; we want
merge patches, and one helper for built-in and custom resources alike, so writes go through
`call_api` with explicit content types. Errors stay `kubernetes.client.rest.ApiException`,
exported here as `ApiError` so a writer need not import the client itself.

Every write asks for `fieldValidation=Strict`: a field the server's version does not know is
an error the operator logs and counts, not something the server silently drops.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException as ApiError

__all__ = ["JSON", "MERGE_PATCH", "ApiError", "Rest"]

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
TIMEOUT = (5, 30)
STRICT = ("fieldValidation", "Strict")


class Rest:
    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json",
                query: list[tuple[str, str]] | None = None) -> JSON:
        params = list(query or [])
        if method in ("POST", "PUT", "PATCH"):
            params.append(STRICT)
        response = self.api.call_api(
            path, method, query_params=params, body=body,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"], _preload_content=False,
            _return_http_data_only=True, _request_timeout=TIMEOUT)
        try:
            data = response.data
        finally:
            response.release_conn()
        return json.loads(data) if data else {}

    def get(self, path: str) -> JSON:
        return self.request("GET", path)

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body)

    def replace(self, path: str, body: JSON) -> JSON:
        return self.request("PUT", path, body)

    def merge_patch(self, path: str, body: JSON) -> JSON:
        return self.request("PATCH", path, body, MERGE_PATCH)

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self.request("DELETE", path, body)
