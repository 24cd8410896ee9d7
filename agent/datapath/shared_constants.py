"""The numbers C and Python must agree on, checked at every load (pure: text in, findings out).

Drop reasons, directions, conntrack / endpoint / ipcache flags, policy and event enums, reserved
identities and the event defaults are written twice: in bpf/types.h (and bpf/lib/events.h) for the
programs and as Python enums for the agent. Struct layouts are compared with the compiled program;
these numbers only exist in code, so they get two checks of their own:

- `drift(headers)` reads the C headers' text and returns every name whose value differs from
  Python's, or that one side lacks; the loader refuses to start on any, naming them (one line);
- `static_asserts()` is C text of `_Static_assert`s compiled together with the programs, so the
  compiler itself confirms each value, whatever a regular expression could miss.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping

from membrane import prefilter_rules
from membrane.identities import IDENTITY_ANY, LOCAL_IDENTITY_FLAG, ReservedIdentity

from .events import EVENTS_AGGREGATE_MS, EVENTS_BURST, EVENTS_RATE_PER_SEC
from .layout import (
    PREFILTER_ACTIVE_BANK,
    PREFILTER_ACTIVE_COUNT,
    CtFlag,
    Direction,
    EndpointFlag,
    EventConfigFlag,
    EventType,
    EventVerdict,
    FlowPath,
    IpcacheFlag,
    LbBackendFlag,
    LbClient,
    LbFlag,
    LbNatDir,
    LbNatFlag,
    LbScope,
    LbStat,
    PolicyVerdict,
    Reason,
)

# (C prefix, Python enum): every member of the enum is MB_<prefix><member name> in C, and every C
# name with that prefix is a member (so a constant added on one side only is found too).
FAMILIES: tuple[tuple[str, type[enum.IntEnum] | type[enum.IntFlag]], ...] = (
    ("MB_DIR_", Direction),
    ("MB_CT_F_", CtFlag),
    ("MB_ENDPOINT_F_", EndpointFlag),
    ("MB_IPCACHE_F_", IpcacheFlag),
    ("MB_POLICY_", PolicyVerdict),
    ("MB_EVENT_", EventType),
    ("MB_VERDICT_", EventVerdict),
    ("MB_PATH_", FlowPath),
    ("MB_EVENTS_F_", EventConfigFlag),
    ("MB_LB_SCOPE_", LbScope),
    ("MB_LB_F_", LbFlag),
    ("MB_LB_BACKEND_F_", LbBackendFlag),
    ("MB_LB_CLIENT_", LbClient),
    ("MB_LB_STAT_", LbStat),
    ("MB_LB_NAT_F_", LbNatFlag),
    ("MB_LB_NAT_", LbNatDir),
    ("MB_PF_ACTION_", prefilter_rules.Action),
    ("MB_PF_F_", prefilter_rules.Fact),
    ("MB_PF_R_", prefilter_rules.RuleFlag),
    ("MB_PF_BASE_", prefilter_rules.PayloadBase),
)


def expected() -> dict[str, int]:
    """C name -> the value Python uses."""
    want: dict[str, int] = {f"MB_{r.name}": int(r) for r in Reason}
    for prefix, family in FAMILIES:
        want.update({f"{prefix}{m.name}": int(m) for m in family})
    want.update({
        "MB_IDENTITY_ANY": IDENTITY_ANY,
        "MB_IDENTITY_HOST": int(ReservedIdentity.HOST),
        "MB_IDENTITY_WORLD": int(ReservedIdentity.WORLD),
        "MB_IDENTITY_REMOTE_NODE": int(ReservedIdentity.REMOTE_NODE),
        "MB_IDENTITY_LOCAL_FLAG": LOCAL_IDENTITY_FLAG,
        "MB_EVENTS_RATE": EVENTS_RATE_PER_SEC,
        "MB_EVENTS_BURST": EVENTS_BURST,
        "MB_EVENTS_AGGREGATE_MS": EVENTS_AGGREGATE_MS,
        "MB_PREFILTER_RULES_MAX": prefilter_rules.MAX_RULES,
        "MB_PREFILTER_REFS_MAX": prefilter_rules.MAX_REFS,
        "MB_PREFILTER_PAYLOAD_MAX": prefilter_rules.PAYLOAD_MAX,
        "MB_PF_ACTIVE_BANK": PREFILTER_ACTIVE_BANK,
        "MB_PF_ACTIVE_COUNT": PREFILTER_ACTIVE_COUNT,
    })
    return want


_ENUM = re.compile(r"enum\s+(\w+)\s*\{(.*?)\}\s*;", re.S)
_MEMBER = re.compile(r"^\s*(MB_\w+)\s*(?:=\s*(.+?))?\s*$", re.S)
_DEFINE = re.compile(r"^\s*#\s*define\s+(MB_\w+)\s+\(?\s*((?:0x[0-9a-fA-F]+|\d+)U?(?:\s*<<\s*\d+)?)\s*\)?", re.M)
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def _number(text: str) -> int:
    base, _, shift = text.replace("U", "").partition("<<")
    return int(base.strip(), 0) << (int(shift) if shift else 0)


def c_values(headers: Iterable[str]) -> dict[str, int]:
    """Numeric MB_* enum members and #defines found in C header text (enum members without '='
    count on from the previous one, as in C)."""
    found: dict[str, int] = {}
    for text in headers:
        text = _COMMENT.sub("", text)
        for _name, body in _ENUM.findall(text):
            nxt = 0
            for part in body.split(","):
                if member := _MEMBER.match(part):
                    try:
                        nxt = _number(member.group(2)) if member.group(2) else nxt
                    except ValueError:  # an expression: not a plain number, and what follows is unknown
                        break
                    found[member.group(1)] = nxt
                    nxt += 1
        for name, value in _DEFINE.findall(text):
            found.setdefault(name, _number(value))
    return found


def drift(headers: Iterable[str], want: Mapping[str, int] | None = None) -> list[str]:
    """Every disagreement between the headers and Python, one phrase each (empty when they agree)."""
    want = expected() if want is None else want
    have = c_values(headers)
    problems = [f"{name} is {have[name]} in C but {value} in Python" if name in have
                else f"{name} ({value} in Python) is missing in C"
                for name, value in sorted(want.items()) if have.get(name) != value]
    prefixes = ["MB_DROP_"] + [prefix for prefix, _ in FAMILIES]
    for name in sorted(have):
        if name not in want and any(name.startswith(p) for p in prefixes) and not _known_c_only(name):
            problems.append(f"{name} ({have[name]} in C) has no Python counterpart")
    return problems


def _known_c_only(name: str) -> bool:
    """C-side names that share a family prefix but are not numbers Python mirrors."""
    return name in {"MB_REASON_MAX", "MB_LB_STAT_COUNT"} or name.startswith(("MB_EVENT_STAT_", "MB_POLICY_MAX", "MB_EVENTS_F_MASK"))


def static_asserts(want: Mapping[str, int] | None = None) -> str:
    """C text that fails to compile when a constant differs from Python's value."""
    want = expected() if want is None else want
    return "".join(f'_Static_assert({name} == {value}U, "{name} must be {value} (agent/datapath Python side)");\n'
                   for name, value in sorted(want.items()))
