"""The operator's one door to the Kubernetes API: the only operator module that imports the
`kubernetes` client (or urllib3 below it). Controllers, the watcher and leader election call
`KubeClient` with a `Resource` and a name, get plain JSON dicts, and see two error types:

- `KubeError`: the API server answered with an error status (`status`, `reason`, the Status
  object's `message`, a `Retry-After` if it sent one); `not_found`/`conflict`/`gone` name the
  three a controller acts on (404, 409, 410).
- `KubeUnreachable`: no answer (connection refused, timeout, a stream cut mid-read). Kept
  apart on purpose: a controller that tolerates a failed write (`except KubeError`) still ends
  its pass when the API server is gone, instead of timing out once per object.

Requests go through the official client's `ApiClient.call_api` on raw paths with
`_preload_content=False`: one code path for built-in and custom resources, raw JSON instead of
generated models, and merge patches with an explicit content type (the generated `patch_*`
methods pick `application/json-patch+json` for a dict body). Every write asks for
`fieldValidation=Strict`: a field the server's version does not know is an error the operator
logs and counts, not something the server silently drops.

A new kind is a `Resource` in operator/resources.py; nothing here changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from membrane.operator.resources import Resource

__all__ = ["JSON", "MERGE_PATCH", "KubeClient", "KubeError", "KubeUnreachable", "WatchStream", "connect"]

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
TIMEOUT = (5, 30)  # (connect, read) seconds for a single request
STRICT = ("fieldValidation", "Strict")
# Transport failures below the client: urllib3's errors and the socket's.
_TRANSPORT = (urllib3.exceptions.HTTPError, OSError)


class KubeError(Exception):
    """The API server refused a request with an error status."""

    def __init__(self, status: int, reason: str, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: already exists, or the resourceVersion we wrote against is stale."""
        return self.status == 409

    @property
    def gone(self) -> bool:
        """410: a watch's resourceVersion fell out of the server's history."""
        return self.status == 410

    @classmethod
    def from_api_exception(cls, exc: ApiException) -> KubeError:
        message = ""
        try:
            message = str(json.loads(exc.body or "{}").get("message") or "")
        except (ValueError, AttributeError):
            pass
        value = (exc.headers or {}).get("Retry-After") if exc.headers else None
        try:
            retry_after = float(value) if value is not None else None
        except ValueError:
            retry_after = None
        return cls(int(exc.status or 0), str(exc.reason or ""), message, retry_after)


class KubeUnreachable(Exception):
    """No answer from the API server; the message names the transport error."""

    @classmethod
    def wrap(cls, exc: BaseException) -> KubeUnreachable:
        return cls(f"{type(exc).__name__}: {exc}")


def connect(api_server: str | None = None, kubeconfig: str | None = None, pool_size: int = 32) -> KubeClient:
    """A client for `api_server` (plain URL, no credentials: tests and local stand-ins), else
    `kubeconfig`, else the pod's in-cluster service account."""
    configuration = k8s_client.Configuration()
    if api_server:
        configuration.host = api_server
        configuration.verify_ssl = False
        configuration.api_key = {}
    elif kubeconfig:
        k8s_config.load_kube_config(kubeconfig, client_configuration=configuration)
    else:
        k8s_config.load_incluster_config(client_configuration=configuration)
    # The long-lived watches plus writes share the pool.
    configuration.connection_pool_maxsize = pool_size
    return KubeClient(k8s_client.ApiClient(configuration))


class WatchStream:
    """One open watch response: `lines()` yields its events' JSON lines as they arrive;
    `shutdown()` (from another thread) ends a read blocked on a quiet stream; `close()` hands
    the connection back."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def lines(self) -> Iterator[str]:
        try:
            yield from iter_resp_lines(self._response)
        except _TRANSPORT as exc:
            raise KubeUnreachable.wrap(exc) from exc

    def shutdown(self) -> None:
        try:
            self._response.shutdown()
        except Exception:  # noqa: BLE001 - best effort: the read timeout ends the read anyway
            pass

    def close(self) -> None:
        self._response.release_conn()


class KubeClient:
    def __init__(self, api: k8s_client.ApiClient) -> None:
        self.api = api

    # --- one object ---------------------------------------------------------------------------
    def get(self, resource: Resource, name: str, namespace: str | None = None) -> JSON:
        return self._json("GET", resource.object_path(name, namespace))

    def create(self, resource: Resource, body: JSON, namespace: str | None = None) -> JSON:
        return self._json("POST", resource.collection_path(namespace), body)

    def replace(self, resource: Resource, name: str, body: JSON, namespace: str | None = None,
                subresource: str | None = None) -> JSON:
        """PUT; a `metadata.resourceVersion` in `body` makes it conditional (409 when stale)."""
        return self._json("PUT", resource.object_path(name, namespace, subresource), body)

    def merge_patch(self, resource: Resource, name: str, patch: JSON, namespace: str | None = None,
                    subresource: str | None = None) -> JSON:
        """A JSON merge patch (RFC 7386): a null value removes the key."""
        return self._json("PATCH", resource.object_path(name, namespace, subresource), patch, MERGE_PATCH)

    def delete(self, resource: Resource, name: str, namespace: str | None = None) -> JSON:
        return self._json("DELETE", resource.object_path(name, namespace))

    # --- collections and discovery ------------------------------------------------------------
    def discover(self, resource: Resource) -> JSON:
        """The APIResourceList of `resource`'s group version (which resources and subresources
        this server serves)."""
        return self._json("GET", resource.group_path)

    def list_page(self, resource: Resource, limit: int, continue_token: str = "",
                  timeout: tuple[float, float] = (5, 60)) -> JSON:
        """One page of the collection across all namespaces; `metadata.continue` names the next."""
        query = [("limit", str(limit))] + ([("continue", continue_token)] if continue_token else [])
        body = json.loads(self._read(self._call("GET", resource.path, None, None, query, timeout)))
        if not isinstance(body, dict):  # an empty or odd body is a failure, never an empty list
            raise ValueError(f"list of {resource} is not an object")
        return body

    def watch(self, resource: Resource, resource_version: str, timeout_seconds: int,
              read_timeout: float) -> WatchStream:
        """Watch the collection from `resource_version`, with bookmarks; the server ends the
        watch after `timeout_seconds`, the client gives up on a read after `read_timeout`."""
        query = [("watch", "true"), ("resourceVersion", resource_version),
                 ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_seconds))]
        return WatchStream(self._call("GET", resource.path, None, None, query, (5, read_timeout)))

    def close(self) -> None:
        self.api.close()

    # --- the wire -----------------------------------------------------------------------------
    def _json(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
              query: list[tuple[str, str]] | None = None, timeout: tuple[float, float] = TIMEOUT) -> JSON:
        params = list(query or [])
        if method in ("POST", "PUT", "PATCH"):
            params.append(STRICT)
        data = self._read(self._call(method, path, body, content_type, params, timeout))
        return json.loads(data) if data else {}

    @staticmethod
    def _read(response: Any) -> bytes:
        try:
            return bytes(response.data)
        except _TRANSPORT as exc:
            raise KubeUnreachable.wrap(exc) from exc
        finally:
            response.release_conn()

    def _call(self, method: str, path: str, body: Any, content_type: str | None, query: list[tuple[str, str]],
              timeout: tuple[float, float]) -> Any:
        headers = {"Accept": "application/json"} | ({"Content-Type": content_type} if content_type else {})
        try:
            return self.api.call_api(
                path, method, query_params=query, body=body, header_params=headers,
                auth_settings=["BearerToken"], _preload_content=False,
                _return_http_data_only=True, _request_timeout=timeout)
        except ApiException as exc:
            raise KubeError.from_api_exception(exc) from exc
        except _TRANSPORT as exc:
            raise KubeUnreachable.wrap(exc) from exc
