"""Service map records <-> the lb4 structs of ``layout`` (pure conversions).

The records themselves (`membrane.lb_maps`) are pure: the desired contents are computed there.
"""

from __future__ import annotations

from membrane.agent.datapath.encoding import field_to_ip, field_to_port, ip_to_field, port_to_field
from membrane.agent.datapath.layout import (
    Lb4Backend,
    Lb4BackendKey,
    Lb4Key,
    Lb4Maglev,
    Lb4MaglevKey,
    Lb4MemberKey,
    Lb4Nat,
    Lb4NatKey,
    Lb4RevNat,
    Lb4RevNatKey,
    Lb4Service,
)
from membrane.lb_maps import LbBackend, LbFrontendAddr, LbKey, LbMaglevKey, LbMemberKey, LbService


def lb_key(key: LbKey) -> Lb4Key:
    return Lb4Key(address=ip_to_field(key.address), dport=port_to_field(key.port), slot=key.slot,
                  proto=key.protocol, scope=key.scope)


def lb_key_of(raw: Lb4Key) -> LbKey:
    return LbKey(field_to_ip(raw.address), field_to_port(raw.dport), raw.proto, raw.slot, raw.scope)


def lb_service(value: LbService) -> Lb4Service:
    return Lb4Service(backend_id=value.backend_id, affinity_timeout_s=value.affinity_timeout_s, count=value.count,
                      rev_nat_index=value.rev_nat_index, flags=value.flags)


def lb_service_of(raw: Lb4Service) -> LbService:
    return LbService(raw.backend_id, raw.count, raw.rev_nat_index, raw.flags, raw.affinity_timeout_s)


def backend_key(backend_id: int) -> Lb4BackendKey:
    if not 0 < backend_id <= 0xFFFF_FFFF:
        raise ValueError(f"backend id {backend_id} must be a non-zero u32")
    return Lb4BackendKey(backend_id=backend_id)


def backend_value(value: LbBackend) -> Lb4Backend:
    return Lb4Backend(address=ip_to_field(value.address), port=port_to_field(value.port), proto=value.protocol,
                      flags=value.flags)


def backend_of(raw: Lb4Backend) -> LbBackend:
    return LbBackend(field_to_ip(raw.address), field_to_port(raw.port), raw.proto, raw.flags)


def rev_nat_key(index: int) -> Lb4RevNatKey:
    if not 0 < index <= 0xFFFF:
        raise ValueError(f"frontend id {index} must be a non-zero u16")
    return Lb4RevNatKey(rev_nat_index=index)


def rev_nat_value(front: LbFrontendAddr) -> Lb4RevNat:
    return Lb4RevNat(address=ip_to_field(front.address), port=port_to_field(front.port), proto=front.protocol)


def rev_nat_of(raw: Lb4RevNat) -> LbFrontendAddr:
    return LbFrontendAddr(field_to_ip(raw.address), field_to_port(raw.port), raw.proto)


def member_key(key: LbMemberKey) -> Lb4MemberKey:
    return Lb4MemberKey(backend_id=key.backend_id, rev_nat_index=key.rev_nat_index)


def member_key_of(raw: Lb4MemberKey) -> LbMemberKey:
    return LbMemberKey(raw.backend_id, raw.rev_nat_index)


def maglev_key(key: LbMaglevKey) -> Lb4MaglevKey:
    return Lb4MaglevKey(rev_nat_index=key.rev_nat_index, index=key.index)


def maglev_key_of(raw: Lb4MaglevKey) -> LbMaglevKey:
    return LbMaglevKey(raw.rev_nat_index, raw.index)


def maglev_value(backend_id: int) -> Lb4Maglev:
    return Lb4Maglev(backend_id=backend_id)


# mb_lb4_nat_v1 is written by the datapath only (bpf/lib/nodeport.h): read for `membranectl bpf lb`.
NatKey = tuple[str, int, str, int, int, int]  # (saddr, sport, daddr, dport, proto, dir)


def nat_key_of(raw: Lb4NatKey) -> NatKey:
    return (str(field_to_ip(raw.saddr)), field_to_port(raw.sport), str(field_to_ip(raw.daddr)),
            field_to_port(raw.dport), int(raw.proto), int(raw.dir))


def nat_of(raw: Lb4Nat) -> dict[str, int | str]:
    return {"to": f"{field_to_ip(raw.saddr)}:{field_to_port(raw.sport)} -> "
                  f"{field_to_ip(raw.daddr)}:{field_to_port(raw.dport)}",
            "backend_id": int(raw.backend_id), "id": int(raw.rev_nat_index), "flags": int(raw.flags)}


def nat_read_only(_: object) -> Lb4NatKey:
    raise ValueError("lb_nat is written by the datapath only")
