"""The NetworkPolicy engine: policies + pods + namespaces -> desired BPF policy state (pure).

Modules: `rules` (compiled policies), `inputs` (what the engine reads), `cidrs` (ipBlock CIDR
identities for the LPM ipcache), `computing` (one endpoint's entries), `resolving`
(incremental `PolicyResolver` and from-scratch `compute_policy`), `flattening` (LPM map
entries, rule table for flow logs), `tracing` (`membranectl policy trace`).
"""

from membrane.policy.cidrs import CidrTable, lpm_lookup
from membrane.policy.entries import (
    DesiredPolicy,
    Direction,
    EndpointDelta,
    EndpointPolicy,
    PolicyDelta,
    PolicyKey,
    PolicyValue,
    Protocol,
    RuleRef,
    Verdict,
)
from membrane.policy.flattening import (
    NOT_ISOLATED,
    FlatKey,
    FlatValue,
    RuleTable,
    flat_diff,
    flatten,
    flatten_endpoint,
    lookup_flat,
    port_range_prefixes,
)
from membrane.policy.inputs import NamespaceInfo, PodInfo, PolicyInputs
from membrane.policy.resolving import PolicyResolver, compute_policy
from membrane.policy.rules import CompiledPolicy, compile_policy
from membrane.policy.tracing import TraceResult, trace

__all__ = [
    "NOT_ISOLATED",
    "CidrTable",
    "CompiledPolicy",
    "DesiredPolicy",
    "Direction",
    "EndpointDelta",
    "EndpointPolicy",
    "FlatKey",
    "FlatValue",
    "NamespaceInfo",
    "PodInfo",
    "PolicyDelta",
    "PolicyInputs",
    "PolicyKey",
    "PolicyResolver",
    "PolicyValue",
    "Protocol",
    "RuleRef",
    "RuleTable",
    "TraceResult",
    "Verdict",
    "compile_policy",
    "compute_policy",
    "flat_diff",
    "flatten",
    "flatten_endpoint",
    "lookup_flat",
    "lpm_lookup",
    "port_range_prefixes",
    "trace",
]
