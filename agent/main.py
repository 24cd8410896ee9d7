"""membrane-agent's entry point: configuration, logging, then the start.

Kept light on purpose: the start's first steps (agent/starting_ahead.py) set the datapath
compiling on a thread of its own before the rest of the agent (agent/node_agent.py, most of
the import time) is even imported, so the imports overlap the compile.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from .config import load_config
from .heap_freezing import hold_collections
from .logging_setup import setup_logging
from .start_refusal import StartRefused

log = logging.getLogger("membrane.agent")


def main(argv: list[str] | None = None) -> None:
    started = time.monotonic()
    hold_collections()  # until the start's state is built and frozen (agent/heap_freezing.py)
    config = load_config(argv)
    setup_logging(config.log_level, config.log_format, config.node_name)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    ahead = None
    try:
        from .starting_ahead import start_ahead

        ahead = start_ahead(config, started)
        from .node_agent import Agent  # the bulk of the imports, while the datapath compiles

        agent = Agent(config, ahead)
        agent.start()
    except BaseException as exc:
        if ahead is not None:
            ahead.loading.settle()
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, StartRefused):  # the operator's move: one line, the cause and the fix
            raise SystemExit(f"membrane-agent: {exc}") from None
        if not isinstance(exc, Exception):
            raise
        log.exception("agent failed to start")
        raise SystemExit(f"membrane-agent: failed to start: {exc}") from exc
    done.wait()
    agent.stop()


if __name__ == "__main__":
    main()
