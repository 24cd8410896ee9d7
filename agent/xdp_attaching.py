"""Attaching the XDP prefilter to the node's devices (--devices), and saying how.

- **Mode.** `--xdp-mode auto` (the default) asks for native XDP (run by the driver, before an skb
  exists) and falls back to generic XDP (at the start of the stack) when the driver has none;
  `native` or `generic` insist. A device that already carries the prefilter keeps its mode, so
  a restarted agent replaces its own program in place. The mode per device is logged, shown by
  `membranectl status` and exported as `membrane_xdp_attached{device,mode}`.
- **Replace.** Attaching over an attached program swaps the kernel's pointer to it: every
  packet is judged by the old program or the new one, none is dropped or passed unjudged by the
  swap. Programs stay attached when the agent stops (or is killed), like the tc programs, and
  keep reading the pinned maps, so filtering goes on while no agent runs.
- **Detach.** A device that carries the prefilter (a program of this name) but is no longer in
  --devices is detached at start; traffic then flows unfiltered.

Devices are names in the agent's network namespace (the node's). A name that is not there
stops the start with one line naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("membrane.xdp")

PROGRAM_NAME = "xdp_prefilter"
MODES = ("auto", "native", "generic")


class XdpAttachError(RuntimeError):
    """A device that cannot carry the prefilter (missing, or no XDP in the mode asked for)."""


class XdpNetlink(Protocol):
    def ifindex(self, name: str) -> int | None: ...
    def xdp_program(self, ifindex: int) -> tuple[str | None, int]: ...
    def set_xdp(self, ifindex: int, fd: int, mode: str) -> None: ...
    def host_links(self, prefix: str) -> dict[str, int]: ...


@dataclass(frozen=True)
class Attachment:
    device: str
    ifindex: int
    mode: str  # "native" or "generic"
    program_id: int


class XdpAttacher:
    def __init__(self, netlink: XdpNetlink, devices: Sequence[str], mode: str = "auto",
                 program_name: Callable[[int], str | None] = lambda _id: None) -> None:
        if mode not in MODES:
            raise XdpAttachError(f"--xdp-mode {mode!r}: one of {', '.join(MODES)}")
        self.netlink = netlink
        self.devices = tuple(devices)
        self.mode = mode
        self.program_name = program_name
        self.attached: dict[str, Attachment] = {}

    def attach(self, fd: int) -> list[Attachment]:
        """Attach (or replace in place) the program on every device; raises XdpAttachError naming
        the device when one cannot carry it (devices before it keep theirs)."""
        done = []
        for device in self.devices:
            ifindex = self.netlink.ifindex(device)
            if ifindex is None:
                raise XdpAttachError(f"--devices: no device {device!r} in the node's network namespace")
            current, _ = self.netlink.xdp_program(ifindex)
            mode = self._attach_one(device, ifindex, fd, current)
            found_mode, program = self.netlink.xdp_program(ifindex)
            attachment = Attachment(device, ifindex, found_mode or mode, program)
            self.attached[device] = attachment
            done.append(attachment)
            log.info("XDP prefilter attached", extra={"fields": {
                "device": device, "mode": attachment.mode, "program_id": program,
                "replaced": current is not None}})
        return done

    def _attach_one(self, device: str, ifindex: int, fd: int, current: str | None) -> str:
        if self.mode != "auto" and current not in (None, self.mode):
            # Asked for another mode than the device runs: the old program must go first (the
            # kernel keeps one mode per device). Filtering pauses for that instant; traffic flows.
            log.warning("XDP mode changes: detaching first", extra={"fields": {
                "device": device, "from": current, "to": self.mode}})
            self.netlink.set_xdp(ifindex, -1, current or "generic")
            current = None
        if current in ("native", "generic"):
            candidates = [current]
        elif self.mode == "auto":
            candidates = ["native", "generic"]
        else:
            candidates = [self.mode]
        errors = []
        for mode in candidates:
            try:
                self.netlink.set_xdp(ifindex, fd, mode)
                return mode
            except Exception as exc:  # noqa: BLE001 - NetlinkError from the adapter; the next mode may work
                errors.append(f"{mode}: {exc}")
        raise XdpAttachError(f"--devices: cannot attach XDP to {device!r} ({'; '.join(errors)})")

    def detach_others(self, prefix: str = "") -> list[str]:
        """Detach the prefilter from devices not in --devices (the setting changed)."""
        detached = []
        for name, ifindex in sorted(self.netlink.host_links(prefix).items()):
            if name in self.devices:
                continue
            mode, program = self.netlink.xdp_program(ifindex)
            if mode in ("native", "generic") and self.program_name(program) == PROGRAM_NAME:
                self.netlink.set_xdp(ifindex, -1, mode)
                detached.append(name)
                log.info("XDP prefilter detached (no longer in --devices)", extra={"fields": {"device": name}})
        return detached

    def detach(self) -> None:
        """Detach from every device of --devices (tests, and an operator's clean removal)."""
        for device in self.devices:
            ifindex = self.netlink.ifindex(device)
            if ifindex is None:
                continue
            mode, _ = self.netlink.xdp_program(ifindex)
            if mode in ("native", "generic"):
                self.netlink.set_xdp(ifindex, -1, mode)
            self.attached.pop(device, None)

    def status(self) -> list[dict[str, object]]:
        return [{"device": a.device, "ifindex": a.ifindex, "mode": a.mode, "program_id": a.program_id}
                for a in self.attached.values()]
