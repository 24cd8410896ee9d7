"""List+watch of one resource into the `ObjectCache` (a client-go Reflector in small).

- List (paginated) to get the state and a resourceVersion; watch from it with
  `allowWatchBookmarks`, so quiet resources still advance the version and a re-watch after a
  timeout or a dropped connection resumes where it was instead of relisting.
- 410 Gone (the version fell out of the server's history, e.g. after compaction): relist, and
  let `ObjectCache.replace` turn the new list into the events that were missed.
- Any other failure (connection refused, 5xx, 429): exponential backoff with jitter, honouring
  Retry-After; the backoff resets once a list or watch succeeds.

Requests go through operator/kube_client.py (raw JSON on the resource's path, one code path for
built-in and custom resources); its `KubeError` is an answer with an error status, its
`KubeUnreachable` no answer at all.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from membrane.api.backoff import Backoff
from membrane.operator.cache import ObjectCache
from membrane.operator.kube_client import KubeClient, KubeError, KubeUnreachable, WatchStream
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


class ResourceWatcher:
    """Keeps `cache` in sync with one resource until `stop()`; runs in its own thread."""

    def __init__(self, kube: KubeClient, resource: Resource, cache: ObjectCache,
                 metrics: OperatorMetrics, backoff: Callable[[], Backoff] = Backoff,
                 watch_timeout: int = 300, read_timeout: float = 90.0) -> None:
        self.kube = kube
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
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"watch:{self.resource}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.shutdown()  # wakes the thread blocked reading the stream
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
            except KubeError as exc:
                if exc.gone:
                    self.resource_version, reason = None, "expired"
                    continue
                self._failed(exc.status, str(exc), exc.retry_after)
            except (KubeUnreachable, ValueError) as exc:
                if self._stop.is_set():
                    break
                self._failed(0, str(exc) if isinstance(exc, KubeUnreachable) else f"{type(exc).__name__}: {exc}",
                             None)

    def _failed(self, code: int, message: str, retry_after: float | None) -> None:
        self.metrics.watch_errors.labels(str(self.resource), str(code)).inc()
        delay = self.backoff.next()
        if retry_after is not None:
            delay = max(delay, retry_after)
        log.warning("watch %s failed (%s), retrying in %.2fs", self.resource, message, delay)
        self._stop.wait(delay)

    # --- requests -----------------------------------------------------------------------------
    def _list(self, reason: str) -> str:
        """List every page; replace the cache content; return the list's resourceVersion."""
        items: list[JSON] = []
        token = ""
        while True:
            body = self.kube.list_page(self.resource, LIST_PAGE, token)
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
        self.metrics.watch_restarts.labels(str(self.resource)).inc()
        stream = self.kube.watch(self.resource, resource_version, self.watch_timeout, self.read_timeout)
        self._stream = stream
        got = False
        try:
            if self._stop.is_set():
                return got
            for line in stream.lines():
                got = True
                self._handle(json.loads(line))
                if self._stop.is_set():
                    break
        finally:
            self._stream = None
            stream.close()
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

