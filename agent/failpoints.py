"""Failpoints: make one step of a CNI ADD or a store batch fail on purpose, to test that nothing
is left behind and that a crash leaves all or nothing.

Off unless the agent runs with MEMBRANE_FAILPOINTS=1 (tests only; never in the chart). Then a
request may arm one failpoint through its CNI_ARGS, `MEMBRANE_FAILPOINT=<name>[:<action>]`:
the step named raises (`error`, the default) or the agent exits at once without answering
(`exit`, as a crash or an OOM kill would). Armed per request (a context variable: each API
request runs on its own thread), so concurrent requests are not affected. Without the
environment switch the argument is ignored like any other unknown CNI_ARGS key.

Steps that no CNI request carries (a store batch runs on the applier thread) are armed for the
whole process by the same `MEMBRANE_FAILPOINT=<name>[:<action>]` in the agent's environment.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator

from membrane.cni_types import INVALID_ENVIRONMENT, CniError

log = logging.getLogger("membrane.failpoints")

ENV = "MEMBRANE_FAILPOINTS"
ARG = "MEMBRANE_FAILPOINT"
ACTIONS = ("error", "exit")
# Every step of an ADD, in order (see EndpointManager.add, Netlink.create_pod_link, CniHandler.add).
ADD_STEPS = ("add.after-ipam", "add.after-veth", "add.after-pod-side", "add.after-host-side", "add.after-policy",
             "add.after-map", "add.after-attach", "add.after-save", "add.after-shape")
# A store batch (ObjectStore._commit): half its rows written, not committed; committed, the
# kernel's witness not yet moved and nothing enforced.
STORE_STEPS = ("store.in-batch", "store.after-commit")

_armed: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("failpoint", default=None)


class FailpointError(RuntimeError):
    """The failure a failpoint injects."""


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


def parse(value: str) -> tuple[str, str]:
    """`name[:action]` -> (name, action); ValueError for an unknown name or action."""
    name, _, action = value.partition(":")
    action = action or "error"
    if name not in ADD_STEPS + STORE_STEPS:
        raise ValueError(f"unknown failpoint {name!r} (known: {', '.join(ADD_STEPS + STORE_STEPS)})")
    if action not in ACTIONS:
        raise ValueError(f"unknown failpoint action {action!r} (known: {', '.join(ACTIONS)})")
    return name, action


@contextlib.contextmanager
def armed(args: dict[str, str]) -> Iterator[None]:
    """Arm the failpoint a request's CNI_ARGS name, for the duration of the block."""
    value = args.get(ARG) if enabled() else None
    try:
        point = parse(value) if value else None
    except ValueError as exc:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS {ARG}: {exc}") from exc
    token = _armed.set(point)
    try:
        yield
    finally:
        _armed.reset(token)


def process_point() -> tuple[str, str] | None:
    """The failpoint armed for the whole process (its environment); ValueError if unknown."""
    value = os.environ.get(ARG) if enabled() else None
    return parse(value) if value else None


def hit(name: str) -> None:
    """A step boundary: fail here when this failpoint is armed for the current request or the
    process."""
    current = _armed.get()
    if current is None and enabled():
        try:
            current = process_point()
        except ValueError as exc:  # a test's typo: said, and nothing armed
            log.warning("failpoint not armed", extra={"fields": {"error": str(exc)}})
            current = None
    if current is None or current[0] != name:
        return
    log.warning("failpoint hit", extra={"fields": {"failpoint": name, "action": current[1]}})
    if current[1] == "exit":
        os._exit(70)  # no cleanup, no answer: what kubelet sees when the agent dies mid-ADD
    raise FailpointError(f"failpoint {name}")
