"""membrane: an eBPF Kubernetes CNI agent.

This package is the shared core (models, selectors, identities, policy engine, IPAM
arithmetic): pure code with no I/O. The agent, the CNI plugin and the operator live in
the repository's top-level folders `agent/`, `cni/` and `operator/`; the agent and the
operator are installed as `membrane.agent` and `membrane.operator`, the plugin is a Go binary.
"""

import os as _os

# `operator/` has no __init__.py on purpose: a package named `operator` on sys.path would
# shadow the standard library. It is a namespace portion of this package instead; an
# installed wheel has it under membrane/operator, a source checkout needs the tree root.
_tree = _os.path.dirname(_os.path.dirname(_os.path.realpath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "operator")) and \
        _os.path.isdir(_os.path.join(_tree, "operator")):
    __path__.append(_tree)

__version__ = "0.1.0"
