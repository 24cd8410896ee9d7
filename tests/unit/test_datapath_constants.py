"""The C constants of bpf/types.h and their Python mirrors agree (no root, no compiler).

The struct layouts are checked against the compiled program at every load; numbers that only
appear in code (drop reasons, flag bits) are not, so this test reads them from the header.
"""

from __future__ import annotations

import re
from pathlib import Path

from membrane.agent.datapath.layout import CtFlag, Direction, EndpointFlag, IpcacheFlag, Reason
from membrane.agent.datapath.shared_constants import c_values, drift, expected, static_asserts

TYPES_H = Path(__file__).resolve().parents[2] / "bpf" / "types.h"


def _enum(name: str) -> dict[str, int]:
    body = re.search(rf"enum {name} \{{(.*?)\}};", TYPES_H.read_text(), re.S)
    assert body, f"enum {name} not found in {TYPES_H}"
    values = {}
    for member, value in re.findall(r"^\s*(MB_\w+)\s*=\s*(\d+)\s*,", body.group(1), re.M):
        values[member] = int(value)
    return values


def _defines(prefix: str) -> dict[str, int]:
    return {name: int(value, 0) for name, value in
            re.findall(rf"^#define ({prefix}\w+)\s+(0x[0-9a-fA-F]+|\d+)", TYPES_H.read_text(), re.M)}


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


# ---- the load-time check (agent/datapath/shared_constants.py) ----------------------------------

EVENTS_H = TYPES_H.parent / "lib" / "events.h"


def headers(types_h: str | None = None) -> list[str]:
    return [TYPES_H.read_text() if types_h is None else types_h, EVENTS_H.read_text()]


def test_the_shipped_headers_agree_with_python() -> None:
    assert drift(headers()) == []
    have = c_values(headers())
    # Every kind of shared number is covered: reasons, flags, reserved identities, event defaults.
    for name in ("MB_DROP_TUNNEL_SOURCE_NOT_OWNED", "MB_CT_F_DENIED_INGRESS", "MB_IPCACHE_F_NODE",
                 "MB_IDENTITY_WORLD", "MB_IDENTITY_LOCAL_FLAG", "MB_EVENTS_RATE", "MB_EVENT_TRACE_END"):
        assert have[name] == expected()[name], name


def test_a_changed_drop_reason_is_named() -> None:
    text = TYPES_H.read_text().replace("MB_DROP_NO_ROUTE = 9,", "MB_DROP_NO_ROUTE = 19,")
    assert drift(headers(text)) == ["MB_DROP_NO_ROUTE is 19 in C but 9 in Python"]


def test_a_changed_flag_a_missing_and_an_extra_constant_are_named() -> None:
    text = (TYPES_H.read_text().replace("#define MB_CT_F_SEEN_REPLY 0x1", "#define MB_CT_F_SEEN_REPLY 0x80")
            .replace("#define MB_IDENTITY_WORLD 2\n", "\n")
            .replace("#define MB_IPCACHE_F_NODE 0x1", "#define MB_IPCACHE_F_NODE 0x1\n#define MB_IPCACHE_F_NEW 0x2"))
    assert drift(headers(text)) == ["MB_CT_F_SEEN_REPLY is 128 in C but 1 in Python",
                                    "MB_IDENTITY_WORLD (2 in Python) is missing in C",
                                    "MB_IPCACHE_F_NEW (2 in C) has no Python counterpart"]


def test_a_python_side_change_is_named_too() -> None:
    assert drift(headers(), {**expected(), "MB_EVENTS_BURST": 4000}) == ["MB_EVENTS_BURST is 2000 in C but 4000 in Python"]


def test_enum_members_without_a_value_count_on_as_in_c() -> None:
    assert c_values(["enum e { MB_A = 3, MB_B, /* c */ MB_C = 0x10, MB_D };"]) == \
        {"MB_A": 3, "MB_B": 4, "MB_C": 16, "MB_D": 17}


def test_static_asserts_cover_every_shared_constant() -> None:
    text = static_asserts()
    assert all(f"_Static_assert({name} == {value}U" in text for name, value in expected().items())
