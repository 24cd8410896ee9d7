"""membrane: an eBPF Kubernetes CNI agent.

This package is the shared core (models, selectors, identities, policy engine, IPAM
arithmetic): pure code with no I/O. The agent, the CNI plugin and the operator live in
the repository's top-level folders `agent/`, `cni/` and `operator/`, installed as
`membrane.agent`, `membrane.cni` and `membrane.operator`.
"""

from pathlib import Path as _Path

# `operator/` has no __init__.py on purpose: a package named `operator` on sys.path would
# shadow the standard library. It is a namespace portion of this package instead; an
# installed wheel has it under membrane/operator, a source checkout needs the tree root.
_tree = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "operator").is_dir() and (_tree / "operator").is_dir():
    __path__.append(str(_tree))  # noqa: F821 - __path__ is defined for packages

__version__ = "0.1.0"
