"""List+watch of one resource into the `ObjectCache` (a client-go Reflector in small).

- List (paginated) to get the state and a resourceVersion; watch from it with
  `allowWatchBookmarks`, so quiet resources still advance the version and a re-watch after a
  timeout or a dropped connection resumes where it was instead of relisting.
- 410 Gone (the version fell out of the server's history, e.g. after compaction): relist, and
  let `ObjectCache.replace` turn the new list into the events that were missed.
- Any other failure (connection refused, 5xx, 429): exponential backoff with jitter, honouring
  Retry-After; the backoff resets once a list or watch succeeds.

Uses the official client's `ApiClient.call_api` on raw paths with `_preload_content=False`:
one code path for built-in and custom resources, raw JSON dicts instead of generated models.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from membrane.api.backoff import Backoff
from membrane.operator.cache import ObjectCache
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.resources import Resource

log = logging.getLogger(__name__)

JSON = dict[str, Any]
LIST_PAGE = 500


class Expired(Exception):
    """The resourceVersion we watch from is too old (410 Gone): relist."""


class WatchFailed(Exception):
    def __init__(self, code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.retry_after = retry_after


def _retry_after(exc: ApiException) -> float | None:
    value = (exc.headers or {}).get("Retry-After") if exc.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class ResourceWatcher:
    """Keeps `cache` in sync with one resource until `stop()`; runs in its own thread."""

    def __init__(self, api: ApiClient, resource: Resource, cache: ObjectCache,
                 metrics: OperatorMetrics, backoff: Callable[[], Backoff] = Backoff,
                 watch_timeout: int = 300, read_timeout: float = 90.0) -> None:
        self.api = api
        self.resource = resource
        self.cache = cache
        self.metrics = metrics
        self.backoff = backoff()
        # Server-side watch length; the client read timeout must exceed the bookmark interval
        # (about a minute on kube-apiserver) or quiet watches would be cut for nothing.
        self.watch_timeout = watch_timeout
        self.read_timeout = read_timeout
        self.resource_version: str | None = None
        self._stop = threading.Event()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"watch:{self.resource}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # wakes the thread blocked reading the stream
            except Exception:  # noqa: BLE001 - best effort: the read timeout ends it anyway
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        reason = "initial"
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self.resource_version = self._list(reason)
                    self.backoff.reset()
                got_events = self._watch(self.resource_version)
                self.backoff.reset()
                if not got_events:
                    # A watch that ends at once with nothing (a misbehaving proxy) must not spin.
                    self._stop.wait(0.05)
            except Expired:
                log.info("watch %s: resourceVersion %s expired, relisting", self.resource,
                         self.resource_version)
                self.resource_version, reason = None, "expired"
            except WatchFailed as exc:
                self._failed(exc.code, str(exc), exc.retry_after)
            except ApiException as exc:
                if exc.status == 410:
                    self.resource_version, reason = None, "expired"
                    continue
                self._failed(exc.status or 0, f"{exc.status} {exc.reason}", _retry_after(exc))
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break
                self._failed(0, f"{type(exc).__name__}: {exc}", None)

    def _failed(self, code: int, message: str, retry_after: float | None) -> None:
        self.metrics.watch_errors.labels(str(self.resource), str(code)).inc()
        delay = self.backoff.next()
        if retry_after is not None:
            delay = max(delay, retry_after)
        log.warning("watch %s failed (%s), retrying in %.2fs", self.resource, message, delay)
        self._stop.wait(delay)

    # --- requests -----------------------------------------------------------------------------
    def _get(self, query: list[tuple[str, str]], timeout: Any) -> urllib3.BaseHTTPResponse:
        response: urllib3.BaseHTTPResponse = self.api.call_api(
            self.resource.path, "GET", query_params=query,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
            _preload_content=False, _return_http_data_only=True, _request_timeout=timeout)
        return response

    def _list(self, reason: str) -> str:
        """List every page; replace the cache content; return the list's resourceVersion."""
        items: list[JSON] = []
        token = ""
        while True:
            query = [("limit", str(LIST_PAGE))] + ([("continue", token)] if token else [])
            response = self._get(query, (5, 60))
            try:
                body = json.loads(response.data)
            finally:
                response.release_conn()
            for item in body.get("items") or []:
                item.setdefault("apiVersion", self.resource.api_version)
                item.setdefault("kind", self.resource.kind)
                items.append(item)
            meta = body.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                break
        changes = self.cache.replace(self.resource, items)
        self.metrics.watch_lists.labels(str(self.resource), reason).inc()
        log.info("listed %d %s at resourceVersion %s (%d changes)", len(items), self.resource,
                 meta.get("resourceVersion"), changes)
        return str(meta.get("resourceVersion") or "0")

    def _watch(self, resource_version: str) -> bool:
        """Stream events until the server ends the watch; returns whether any arrived."""
        query = [("watch", "true"), ("resourceVersion", resource_version),
                 ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(self.watch_timeout))]
        self.metrics.watch_restarts.labels(str(self.resource)).inc()
        response = self._get(query, (5, self.read_timeout))
        self._response = response
        got = False
        try:
            if self._stop.is_set():
                return got
            for line in iter_resp_lines(response):
                got = True
                self._handle(json.loads(line))
                if self._stop.is_set():
                    break
        finally:
            self._response = None
            response.release_conn()
        return got

    def _handle(self, event: JSON) -> None:
        kind = event.get("type", "")
        obj = event.get("object") or {}
        self.metrics.watch_events.labels(str(self.resource), kind).inc()
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise Expired(obj.get("message", "gone"))
            details = obj.get("details") or {}
            raise WatchFailed(code, obj.get("message", "watch error"),
                              details.get("retryAfterSeconds"))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            obj.setdefault("apiVersion", self.resource.api_version)
            obj.setdefault("kind", self.resource.kind)
            self.cache.apply(self.resource, kind, obj)
        # BOOKMARK: nothing changed, only the version moves on.
        if rv:
            self.resource_version = rv

