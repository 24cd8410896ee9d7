"""The agent's CNI configuration writer: atomic, never a broken file, idempotent, removable."""

from __future__ import annotations

from pathlib import Path

import pytest

from membrane.agent.cni_conf_writing import remove_conf, write_conf
from membrane.agent.config import load_config


def test_write_is_atomic_idempotent_and_removable(tmp_path: Path) -> None:
    source = tmp_path / "src.conflist"
    source.write_text('{"cniVersion": "1.0.0", "name": "membrane", "plugins": [{"type": "membrane-cni"}]}\n')
    dest = tmp_path / "net.d" / "05-membrane.conflist"
    assert write_conf(source, dest) is True
    assert dest.read_text() == source.read_text() and oct(dest.stat().st_mode & 0o777) == "0o644"
    assert write_conf(source, dest) is False  # unchanged: not rewritten
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary file left
    assert remove_conf(dest) is True and not dest.exists()
    assert remove_conf(dest) is False


def test_a_broken_source_is_never_written(tmp_path: Path) -> None:
    source = tmp_path / "src.conflist"
    source.write_text("{not json")
    dest = tmp_path / "05-membrane.conflist"
    with pytest.raises(ValueError):
        write_conf(source, dest)
    assert not dest.exists()


def test_flags(tmp_path: Path) -> None:
    cfg = load_config(["--write-cni-conf-when-ready", str(tmp_path / "a"), "--cni-conf-source", str(tmp_path / "b"),
                       "--cni-uninstall", "always"], environ={})
    assert cfg.cni_uninstall == "always" and cfg.write_cni_conf_when_ready == tmp_path / "a"
    for argv in (["--write-cni-conf-when-ready", "x"], ["--cni-uninstall", "sometimes"]):
        with pytest.raises(SystemExit):
            load_config(argv, environ={})
