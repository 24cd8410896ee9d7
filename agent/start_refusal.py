"""Why the agent will not start: one line naming the cause and the fix, never a traceback.

Raised for conditions an operator must act on (a damaged state file the kernel cannot rebuild,
no bpffs that outlives the agent); `main` prints the message alone and exits 1.
"""

from __future__ import annotations


class StartRefused(RuntimeError):
    """The agent refuses to start; str(exc) is the whole, single-line explanation."""
