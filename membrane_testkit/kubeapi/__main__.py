"""Run the stand-in API server as a process: `python -m membrane_testkit.kubeapi --port N`.

Prints `kubeapi listening on http://127.0.0.1:PORT` once it accepts connections (useful with
`--port 0`), and stops cleanly (saving `--state-file`) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .resources import DEFAULT_KUBERNETES_VERSION
from .serving import KubeApiServer


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until signalled."""
    parser = argparse.ArgumentParser(prog="python -m membrane_testkit.kubeapi", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--state-file", help="JSON file that keeps objects across runs")
    parser.add_argument("--history-limit", type=int, default=10_000, help="changes kept for watches")
    parser.add_argument("--bookmark-interval", type=float, default=60.0, help="seconds between bookmarks")
    parser.add_argument("--no-sync-writes", action="store_true", help="save the state file only on exit")
    parser.add_argument("--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION,
                        help="the minor version to pretend to be (schemas, served resources, /version)")
    parser.add_argument("--no-schema-validation", action="store_true",
                        help="accept writes without checking them against the version's OpenAPI schemas")
    args = parser.parse_args(argv)
    try:
        server = KubeApiServer(port=args.port, state_file=args.state_file, history_limit=args.history_limit,
                               bookmark_interval=args.bookmark_interval, sync_writes=not args.no_sync_writes,
                               kubernetes_version=args.kubernetes_version,
                               validate_schemas=not args.no_schema_validation)
    except ValueError as exc:
        parser.error(str(exc))
    done = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"kubeapi listening on {server.url}", flush=True)
    try:
        done.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
