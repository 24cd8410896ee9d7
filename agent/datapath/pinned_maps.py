"""Generic typed access to the keyed pinned maps: one codec per map, one read/write path for all.

Each keyed map the agent writes (endpoints, ipcache, policy, cidr) has a ``MapCodec``: how its
Python keys and values (``EndpointEntry``, ``IpcacheEntry``, ``FlatKey``/``FlatValue``, CIDR
identities) become the ctypes structs of ``layout``. ``PinnedMap`` reads a whole map and
writes updates and deletes, with BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH where the kernel
has them for the map type (hash maps; LPM tries on recent kernels: one syscall per chunk,
learnt at the first batch write) and element by element where it has not, in the order given
either way (the kernel's batch ops write element by element, in order): the caller's order is
the gap-free plan's (membrane.map_plan).
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from membrane.agent.datapath.encoding import field_to_ip, struct_copy
from membrane.agent.datapath.endpoints import EndpointEntry, endpoint_key
from membrane.agent.datapath.ipcache import (
    cidr_key,
    cidr_value,
    ipcache_entry,
    ipcache_key,
    ipcache_value,
    prefix_from_cidr_key,
    prefix_from_key,
)
from membrane.agent.datapath.layout import (
    CidrKey,
    CidrValue,
    EndpointInfo,
    EndpointKey,
    IpcacheKey,
    IpcacheValue,
    Lb4Backend,
    Lb4BackendKey,
    Lb4Key,
    Lb4Maglev,
    Lb4MaglevKey,
    Lb4Member,
    Lb4MemberKey,
    Lb4Nat,
    Lb4NatKey,
    Lb4RevNat,
    Lb4RevNatKey,
    Lb4Service,
    PolicyKey,
    PolicyValue,
    PrefilterCidrKey,
    PrefilterCidrValue,
)
from membrane.agent.datapath.lb import (
    backend_key,
    backend_of,
    backend_value,
    lb_key,
    lb_key_of,
    lb_service,
    lb_service_of,
    maglev_key,
    maglev_key_of,
    maglev_value,
    member_key,
    member_key_of,
    nat_key_of,
    nat_of,
    nat_read_only,
    rev_nat_key,
    rev_nat_of,
    rev_nat_value,
)
from membrane.agent.datapath.policy import flat_key, flat_value, policy_key, policy_value
from membrane.agent.datapath.prefilter import cidr_key as prefilter_cidr_key
from membrane.agent.datapath.prefilter import cidr_value as prefilter_cidr_value
from membrane.agent.datapath.prefilter import prefix_of
from membrane.agent.datapath.syscalls import BatchUnsupported, map_delete_batch, map_update_batch

BATCH_CHUNK: Final = 4096  # elements per batch syscall (bounded buffers, bounded kernel time)


@dataclass(frozen=True)
class MapCodec:
    """Python key/value <-> the map's key/value structs."""

    key_struct: type[ctypes.Structure]
    value_struct: type[ctypes.Structure]
    encode_key: Callable[[Any], ctypes.Structure]
    decode_key: Callable[[Any], Hashable]
    encode_value: Callable[[Any], ctypes.Structure]
    decode_value: Callable[[Any], Any]


CODECS: Final[dict[str, MapCodec]] = {
    "endpoints": MapCodec(EndpointKey, EndpointInfo, endpoint_key, lambda k: field_to_ip(k.ip4),
                          lambda v: v.to_struct(), EndpointEntry.from_struct),
    "ipcache": MapCodec(IpcacheKey, IpcacheValue, ipcache_key, prefix_from_key,
                        ipcache_value, ipcache_entry),
    "policy": MapCodec(PolicyKey, PolicyValue, policy_key, flat_key, policy_value, flat_value),
    "cidr": MapCodec(CidrKey, CidrValue, cidr_key, prefix_from_cidr_key, cidr_value, lambda v: int(v.sec_identity)),
    # Services (membrane.lb_maps): slots and masters share lb_services.
    "lb_services": MapCodec(Lb4Key, Lb4Service, lb_key, lb_key_of, lb_service, lb_service_of),
    "lb_backends": MapCodec(Lb4BackendKey, Lb4Backend, backend_key, lambda k: int(k.backend_id),
                            backend_value, backend_of),
    "lb_rev_nat": MapCodec(Lb4RevNatKey, Lb4RevNat, rev_nat_key, lambda k: int(k.rev_nat_index),
                           rev_nat_value, rev_nat_of),
    "lb_maglev": MapCodec(Lb4MaglevKey, Lb4Maglev, maglev_key, maglev_key_of, maglev_value,
                          lambda v: int(v.backend_id)),
    "lb_members": MapCodec(Lb4MemberKey, Lb4Member, member_key, member_key_of,
                           lambda slot: Lb4Member(slot=slot), lambda v: int(v.slot)),
    "lb_nat": MapCodec(Lb4NatKey, Lb4Nat, nat_read_only, nat_key_of, nat_read_only, nat_of),
    # XDP prefilter deny lists: source prefix -> the list's counter slot.
    "prefilter_cidr": MapCodec(PrefilterCidrKey, PrefilterCidrValue, prefilter_cidr_key, prefix_of,
                               prefilter_cidr_value, lambda v: int(v.rule_ref)),
}


class PinnedMap:
    """One keyed map through its bcc table (element ops) and its fd (batch ops)."""

    def __init__(self, role: str, table: Any) -> None:
        self.role = role
        self.codec = CODECS[role]
        self.table = table
        self.batched: bool | None = None  # learnt on the first batch attempt

    def read(self) -> dict[Any, Any]:
        codec = self.codec
        return {codec.decode_key(struct_copy(codec.key_struct, key)):
                codec.decode_value(struct_copy(codec.value_struct, value))
                for key, value in self.table.items()}

    def update(self, entries: Iterable[tuple[Any, Any]]) -> int:
        """Write (key, value) pairs in the order given; returns how many."""
        codec, table = self.codec, self.table
        pairs = [(codec.encode_key(k), codec.encode_value(v)) for k, v in entries]  # validate all first
        if self.batched is not False and len(pairs) > 1:
            done = self._batch(pairs, True)
            if done is not None:
                return done
        for key, value in pairs:
            table[struct_copy(table.Key, key)] = struct_copy(table.Leaf, value)
        return len(pairs)

    def delete(self, keys: Sequence[Any]) -> int:
        """Delete keys in the order given; returns how many were there."""
        codec, table = self.codec, self.table
        structs = [codec.encode_key(k) for k in keys]
        if self.batched is not False and len(structs) > 1:
            done = self._batch([(s, None) for s in structs], False)
            if done is not None:
                return done
        removed = 0
        for key in structs:
            try:
                del table[struct_copy(table.Key, key)]
                removed += 1
            except KeyError:
                pass
        return removed

    def _batch(self, pairs: Sequence[tuple[ctypes.Structure, ctypes.Structure | None]], update: bool) -> int | None:
        """Batch syscalls, chunk by chunk; None when the map type has none (nothing written)."""
        fd = int(self.table.map_fd)
        done = 0
        for start in range(0, len(pairs), BATCH_CHUNK):
            chunk = pairs[start:start + BATCH_CHUNK]
            keys = b"".join(bytes(k) for k, _ in chunk)
            try:
                if update:
                    done += map_update_batch(fd, keys, b"".join(bytes(v) for _, v in chunk if v is not None),
                                             len(chunk))
                else:
                    done += map_delete_batch(fd, keys, len(chunk))
            except BatchUnsupported:
                if done:
                    raise  # cannot happen: the type supported the earlier chunks
                self.batched = False
                return None
            except OSError as exc:
                if update or exc.errno != errno_codes.ENOENT:
                    raise
                # A key already gone stops DELETE_BATCH: finish this chunk element by element.
                table = self.table
                for key, _ in chunk:
                    try:
                        del table[struct_copy(table.Key, key)]
                        done += 1
                    except KeyError:
                        pass
            self.batched = True
        return done


def write_delta(target: PinnedMap, upserts: Mapping[Any, Any], deletes: Sequence[Any]) -> None:
    """Updates first, then deletes (a moved key is never briefly absent)."""
    if upserts:
        target.update(upserts.items())
    if deletes:
        target.delete(deletes)
