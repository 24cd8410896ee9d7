"""Watch streams: replay changes after a resourceVersion as newline-delimited JSON events.

Like the watch cache of kube-apiserver: a change that makes an object start matching the
selectors is sent as ADDED, one that makes it stop matching as DELETED (with the previous
state), bookmarks carry only a resourceVersion, and a start version older than the history
window gets a single ERROR event holding a 410 Expired Status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .resources import ResourceType
from .statuses import ApiError, status_body
from .storing import Change, Key, Store, stamp

JSON = dict[str, Any]


@dataclass(frozen=True)
class WatchSpec:
    """What one watch request asks for."""

    rtype: ResourceType
    namespace: str | None
    matches: Callable[[JSON], bool]
    since: int | None  # None: start with synthetic ADDED events for the current state
    timeout: float
    bookmarks: bool
    initial_events_end: bool  # sendInitialEvents=true: mark the end of the initial events with a bookmark


def present(obj: JSON, rtype: ResourceType) -> JSON:
    """The object as served through `rtype` (its apiVersion and kind)."""
    return {**obj, "apiVersion": rtype.api_version, "kind": rtype.kind}


def event_line(kind: str, obj: JSON) -> bytes:
    """One watch event as a line of JSON."""
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _relevant(spec: WatchSpec, key: Key) -> bool:
    return (key[0], key[1]) == spec.rtype.storage_key and (spec.namespace is None or key[2] == spec.namespace)


def translate(spec: WatchSpec, change: Change) -> tuple[str, JSON] | None:
    """The event a change means to this watcher, if any."""
    if not _relevant(spec, change.key):
        return None
    now = spec.matches(change.obj)
    if change.type != "MODIFIED":
        return (change.type, change.obj) if now else None
    before = change.prev is not None and spec.matches(change.prev)
    if now:
        return ("MODIFIED" if before else "ADDED", change.obj)
    if before and change.prev is not None:
        return ("DELETED", stamp(change.prev, change.rv))
    return None


def _bookmark(spec: WatchSpec, rv: int, end_of_initial: bool = False) -> bytes:
    metadata: JSON = {"resourceVersion": str(rv)}
    if end_of_initial:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    return event_line("BOOKMARK", {"kind": spec.rtype.kind, "apiVersion": spec.rtype.api_version,
                                   "metadata": metadata})


def _initial(store: Store, spec: WatchSpec) -> tuple[int, list[bytes]]:
    with store.cond:
        rv = store.rv
        items = store.items(spec.rtype.group, spec.rtype.plural, spec.namespace)
    lines = [event_line("ADDED", present(obj, spec.rtype)) for _key, obj in items if spec.matches(obj)]
    return rv, lines


def run_watch(store: Store, spec: WatchSpec, write: Callable[[bytes], None], alive: Callable[[], bool],
              stopping: Callable[[], bool], bookmark_interval: float) -> str:
    """Stream events until timeout, close or disconnect. Returns why it ended: "timeout", "closed",
    "abrupt" (close_watches(abrupt=True): drop the connection), "gone" or "disconnected"."""
    deadline = time.monotonic() + spec.timeout
    with store.cond:
        epoch, bookmark_epoch = store.watch_epoch, store.bookmark_epoch
        if spec.since is not None and spec.since > store.rv:
            store.cond.wait_for(lambda: store.rv >= (spec.since or 0), timeout=1.0)
            if spec.since > store.rv:
                write(event_line("ERROR", status_body(
                    504, f"Timeout: Too large resource version: {spec.since}, current: {store.rv}", "Timeout",
                    {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                     "retryAfterSeconds": 1})))
                return "gone"
        if spec.since is not None and spec.since < store.history_start:
            write(event_line("ERROR", status_body(
                410, f"too old resource version: {spec.since} ({store.history_start + 1})", "Expired")))
            return "gone"
    if spec.since is None:
        cursor, lines = _initial(store, spec)
        for line in lines:
            write(line)
        if spec.initial_events_end:
            write(_bookmark(spec, cursor, end_of_initial=True))
    else:
        cursor = spec.since
    last_bookmark = time.monotonic()
    while True:
        with store.cond:
            while True:
                if store.watch_epoch != epoch:
                    return "abrupt" if store.abrupt_close else "closed"
                if stopping():
                    return "closed"
                try:
                    changes = store.changes_after(cursor)
                except ApiError:
                    return "closed"  # fell behind the history window: the client re-watches and gets 410
                now = time.monotonic()
                bookmark_due = spec.bookmarks and (store.bookmark_epoch != bookmark_epoch
                                                   or now - last_bookmark >= bookmark_interval)
                if changes or bookmark_due:
                    break
                if now >= deadline:
                    return "timeout"
                wait = min(deadline - now, 0.5)
                if spec.bookmarks:
                    wait = min(wait, last_bookmark + bookmark_interval - now)
                store.cond.wait(timeout=max(wait, 0.01))
                if not alive():
                    return "disconnected"
            bookmark_epoch = store.bookmark_epoch
        for change in changes:
            event = translate(spec, change)
            if event is not None:
                write(event_line(event[0], present(event[1], spec.rtype)))
        if changes:
            cursor = changes[-1].rv
        if bookmark_due:
            write(_bookmark(spec, cursor))
            last_bookmark = time.monotonic()
