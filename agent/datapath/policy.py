"""Policy map records: the policy engine's flat entries <-> the LPM trie structs (pure).

The map's keys and values are exactly ``membrane.policy.flattening``'s
``FlatKey`` / ``FlatValue`` (that module's docstring is the layout
contract), so the agent can ``diff(flatten(...), datapath.policy())`` and
hand the delta to ``Datapath.apply_delta("policy", ...)``. The numbers of Direction
(INGRESS 0, EGRESS 1) and Verdict (ALLOW 1, DENY 2) are the datapath's
own; tests/bpf/test_policy_programs.py checks that they stay so.
"""

from __future__ import annotations

from membrane.agent.datapath.encoding import field_to_port, port_to_field
from membrane.agent.datapath.layout import PolicyKey, PolicyValue
from membrane.policy.entries import Protocol
from membrane.policy.flattening import LPM_FIXED_BITS, LPM_PROTOCOL_BITS, PORT_BITS, FlatKey, FlatValue

_U32_MAX = 0xFFFF_FFFF
_PORT_PREFIX_BASE = LPM_FIXED_BITS + LPM_PROTOCOL_BITS  # 80: prefixlen of "this protocol, any port"


class ForeignPolicyEntry(ValueError):
    """A map entry that no FlatKey describes (written by something else than this adapter)."""


def policy_key(key: FlatKey) -> PolicyKey:
    if not 0 <= key.endpoint_id <= _U32_MAX or not 0 <= key.identity <= _U32_MAX:
        raise ValueError(f"endpoint id or identity out of u32 range: {key}")
    if key.direction not in (0, 1) or not 0 <= key.protocol <= 0xFF:
        raise ValueError(f"bad direction or protocol: {key}")
    if key.protocol == Protocol.ANY:
        if key.port or key.port_prefix:
            raise ValueError(f"protocol ANY takes no port: {key}")
    elif not 0 <= key.port_prefix <= PORT_BITS or key.port != key.port >> (PORT_BITS - key.port_prefix) << (
        PORT_BITS - key.port_prefix
    ):
        # The trie keeps the bits beyond prefixlen as written: unaligned ports would list back differently.
        raise ValueError(f"port {key.port} is not aligned to a /{key.port_prefix} block: {key}")
    return PolicyKey(
        prefixlen=key.prefixlen,
        endpoint_id=key.endpoint_id,
        identity=key.identity,
        direction=key.direction,
        protocol=key.protocol,
        dport=port_to_field(key.port),
    )


def flat_key(key: PolicyKey) -> FlatKey:
    if key.prefixlen == LPM_FIXED_BITS and key.protocol == Protocol.ANY:
        return FlatKey(key.endpoint_id, key.identity, key.direction, Protocol.ANY, 0, 0)
    port_prefix = key.prefixlen - _PORT_PREFIX_BASE
    if not 0 <= port_prefix <= PORT_BITS or key.protocol == Protocol.ANY:
        raise ForeignPolicyEntry(f"policy map entry with prefixlen {key.prefixlen}, protocol {key.protocol}")
    shift = PORT_BITS - port_prefix
    port = field_to_port(key.dport) >> shift << shift
    return FlatKey(key.endpoint_id, key.identity, key.direction, key.protocol, port, port_prefix)


def policy_value(value: FlatValue) -> PolicyValue:
    if not 0 <= value.verdict <= 0xFF or not 0 <= value.rule_ref <= _U32_MAX:
        raise ValueError(f"bad policy value {value}")
    return PolicyValue(verdict=value.verdict, rule_ref=value.rule_ref)


def flat_value(value: PolicyValue) -> FlatValue:
    return FlatValue(value.verdict, value.rule_ref)
