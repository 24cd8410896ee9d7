"""`membrane-operator`: run the cluster control plane until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

from membrane.operator.config import parse_config
from membrane.operator.running import Operator


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    operator = Operator(config).start()
    try:
        done.wait()
    finally:
        # Graceful: hand the lease back so a standby takes over at once, not after expiry.
        operator.stop(release=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
