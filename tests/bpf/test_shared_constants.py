"""C and Python constants agree at load: a drifted header stops the agent before anything is
compiled or pinned (naming the constant), and the compiled _Static_asserts catch a value that
differs from Python's in the program as clang sees it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from membrane.agent.datapath import loading
from membrane.agent.datapath.loading import DEFAULT_BPF_DIR, Datapath, DatapathError
from membrane.agent.datapath.shared_constants import expected, static_asserts


def test_a_drifted_header_refuses_to_load_naming_the_constant(tmp_path: Path, pin_root: Path) -> None:
    bpf_dir = tmp_path / "bpf"
    shutil.copytree(DEFAULT_BPF_DIR, bpf_dir)
    types_h = bpf_dir / "types.h"
    types_h.write_text(types_h.read_text().replace("MB_DROP_POLICY_INGRESS = 7,", "MB_DROP_POLICY_INGRESS = 17,"))
    with pytest.raises(DatapathError) as refused:
        Datapath(pin_root, bpf_dir=bpf_dir).load()
    assert "MB_DROP_POLICY_INGRESS is 17 in C but 7 in Python" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not pin_root.exists() or not any(pin_root.iterdir())  # nothing pinned


def test_the_compiler_checks_the_values_too(pin_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python says MB_CT_F_POLICY_INGRESS is 0x20: the header text check is bypassed (it reads the same
    header), so only the compiled _Static_assert can refuse, and it does."""
    wrong = {**expected(), "MB_CT_F_POLICY_INGRESS": 0x20}
    monkeypatch.setattr(loading, "static_asserts", lambda: static_asserts(wrong))
    with pytest.raises(DatapathError, match="compiling"):
        Datapath(pin_root).load()
