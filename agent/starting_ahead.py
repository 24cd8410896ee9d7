"""The start's first steps: the checks that must come before the datapath compile, then the
compile itself on a thread of its own, while the agent's main thread goes on.

Compiling the C datapath (clang, inside bcc) is the longest step of a start, and bcc's compile
and program loads are ctypes calls that release the GIL: so the main thread imports the rest of
the agent, opens its servers' state and computes the restored state meanwhile, and waits for the
compile (`DatapathLoading.wait_maps`) only right before anything reads or writes a map. The
programs are loaded (the kernel's verifier) after the compile on the same thread, while the
main thread restores the maps; it waits for them (`wait`) before anything is attached.

Kept in order, before the compile starts (it creates or reopens the pinned maps, retires old
layouts and resized maps):

- the state directory's modes repaired, the state database opened (a damaged one that cannot be
  rebuilt refuses the start);
- the bpffs pin root found (refused when none outlives the agent), the witness opened;
- standalone: the object store read and checked against the witness (a store that cannot be
  trusted refuses the start, nothing in the kernel changed, every pod still wired).

Kept as it was: one compile per start; a compile error ends the start with the same one-line
error and exit code, before any map is read or written; nothing is attached before the programs
loaded. (A program the verifier refuses ends the start the same way, after the restore wrote the
maps the state the attached programs should enforce anyway.)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bpffs import ensure_bpffs
from .config import AgentConfig
from .datapath.loading import families_for
from .datapath.witness import Witness
from .datapath_port import DatapathPort
from .object_store import ObjectStore
from .persisting import make_private
from .state_storing import OpenedState, open_state

log = logging.getLogger("membrane.agent")


class DatapathLoading:
    """The datapath compiled (maps), then its programs loaded, on its own thread, started at once."""

    def __init__(self, datapath: DatapathPort, pin_root: Path) -> None:
        self.datapath = datapath
        self.pin_root = pin_root
        self.waited_seconds = 0.0  # how long the main thread waited for it (not overlapped)
        self._error: BaseException | None = None
        self._maps = threading.Event()  # compiled (or failed)
        self._done = False
        self._thread = threading.Thread(target=self._run, name="datapath-compile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.datapath.compile(self.pin_root)
            self._maps.set()
            self.datapath.load_programs()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by the waits
            self._error = exc
        finally:
            self._maps.set()

    def wait_maps(self) -> DatapathPort:
        """Compiled: the maps can be read and written (the programs may still be loading). The
        compile's error, raised here in the caller's thread."""
        if not self._maps.is_set():
            started = time.perf_counter()
            self._maps.wait()
            self.waited_seconds += time.perf_counter() - started
        if self._error is not None and not self.datapath.dp.loaded:
            raise self._error
        return self.datapath

    def wait(self) -> DatapathPort:
        """Compiled and programs loaded; their error, raised here in the caller's thread."""
        if not self._done:
            started = time.perf_counter()
            self._thread.join()
            self.waited_seconds += time.perf_counter() - started
            self._done = True
        if self._error is not None:
            raise self._error
        return self.datapath

    def settle(self) -> None:
        """A start that failed: let the compile end first (never exit in the middle of a bcc
        call). Nothing was attached by it; pins stay, as after any start."""
        self._thread.join()
        self._done = True


@dataclass
class StartedAhead:
    """What the first steps opened, for the agent to take over."""

    started: float  # time.monotonic() when main() began
    state: OpenedState
    pin_root: Path
    witness: Witness
    datapath: DatapathPort
    loading: DatapathLoading
    store: ObjectStore | None = None  # standalone: read and trusted
    store_report: dict[str, Any] = field(default_factory=dict)


def start_ahead(config: AgentConfig, started: float) -> StartedAhead:
    """The checks that must come first, then the compile started in the background."""
    # Pod IPs, MACs, netns paths and identities: root-only, also when an older version or
    # an admin left the modes open.
    repaired = make_private(config.state_dir)
    if repaired:
        log.warning("state directory modes repaired", extra={"fields": {
            "state_dir": str(config.state_dir), "changed": repaired}})
    # One transactional store for endpoints, IPAM, identities, the object store and the
    # cluster cache (upgraded from the JSON files of earlier releases on first start; a
    # damaged one is rebuilt from the kernel, or refused where it held the object store:
    # standalone, whose objects exist nowhere else).
    standalone = config.mode != "kubernetes"
    state = open_state(config.state_dir, keep_damaged=standalone and not config.accept_state_loss)
    pin_root = ensure_bpffs(config.bpffs_root)
    # State files are checked against the kernel's witness before anything is changed (or
    # compiled): a store that cannot be trusted stops the start here, every pod still wired.
    # (The cluster cache of Kubernetes mode is checked at restore: a damaged one is set aside.)
    pin_root.mkdir(parents=True, exist_ok=True)
    witness = Witness(pin_root)
    store, report = None, {}
    if standalone:
        store = ObjectStore(state.db)
        report = store.load(witness, config.accept_state_loss)
        log.info("object store loaded", extra={"fields": report})
    # Only the program families this node attaches are compiled (maps are all there).
    datapath = DatapathPort(pin_root, config.kernel_headers, config.map_sizes, config.lb_maglev_table_size,
                            families_for(bool(config.devices), config.cgroup_root is not None))
    return StartedAhead(started, state, pin_root, witness, datapath, DatapathLoading(datapath, pin_root), store, report)
