"""The C constants of bpf/types.h and their Python mirrors agree (no root, no compiler).

The struct layouts are checked against the compiled program at every load; numbers that only
appear in code (drop reasons, flag bits) are not, so this test reads them from the header.
"""

from __future__ import annotations

import re
from pathlib import Path

from membrane.agent.datapath.layout import CtFlag, Direction, EndpointFlag, IpcacheFlag, Reason

TYPES_H = Path(__file__).resolve().parents[2] / "bpf" / "types.h"


def _enum(name: str) -> dict[str, int]:
    body = re.search(r"enum %s \{(.*?)\};" % name, TYPES_H.read_text(), re.S)
    assert body, f"enum {name} not found in {TYPES_H}"
    values = {}
    for member, value in re.findall(r"^\s*(MB_\w+)\s*=\s*(\d+)\s*,", body.group(1), re.M):
        values[member] = int(value)
    return values


def _defines(prefix: str) -> dict[str, int]:
    return {name: int(value, 0) for name, value in
            re.findall(r"^#define (%s\w+)\s+(0x[0-9a-fA-F]+|\d+)" % prefix, TYPES_H.read_text(), re.M)}


def test_drop_reasons_match() -> None:
    c = {name.removeprefix("MB_"): value for name, value in _enum("mb_reason").items()}
    assert c == {r.name: r.value for r in Reason}
    assert len(set(c.values())) == len(c)  # stable, distinct numbers


def test_trust_reasons_have_their_agreed_numbers() -> None:
    """Dashboards and flows name these: the numbers are part of the interface."""
    assert (Reason.DROP_POD_TO_TUNNEL_PORT, Reason.DROP_UNKNOWN_TUNNEL_PEER,
            Reason.DROP_TUNNEL_SOURCE_NOT_OWNED) == (11, 12, 13)


def test_directions_match() -> None:
    assert {k.removeprefix("MB_DIR_"): v for k, v in _enum("mb_direction").items()} == \
        {d.name: d.value for d in Direction}


def test_flag_bits_match() -> None:
    assert {k.removeprefix("MB_IPCACHE_F_"): v for k, v in _defines("MB_IPCACHE_F_").items()} == \
        {f.name: f.value for f in IpcacheFlag}
    assert {k.removeprefix("MB_ENDPOINT_F_"): v for k, v in _defines("MB_ENDPOINT_F_").items()} == \
        {f.name: f.value for f in EndpointFlag}
    assert {k.removeprefix("MB_CT_F_"): v for k, v in _defines("MB_CT_F_").items()} == \
        {f.name: f.value for f in CtFlag}
