"""`membrane-operator --help` describes every option. Helpers adding an OperatorConfig field
must add its line to operator/config.py HELP: this test fails until they do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from membrane.operator.config import HELP, OperatorConfig


def test_every_option_has_a_description() -> None:
    fields = set(OperatorConfig.model_fields)
    missing = sorted(name for name in fields if len(HELP.get(name, "").strip()) < 10)
    assert not missing, f"options without a description in operator/config.py HELP: {missing}"
    stale = sorted(set(HELP) - fields)
    assert not stale, f"HELP entries for options that do not exist: {stale}"


def test_help_output_shows_each_flag_with_its_description_default_and_environment() -> None:
    tool = Path(sys.executable).parent / "membrane-operator"
    done = subprocess.run([str(tool), "--help"], capture_output=True, text=True, timeout=60,
                          env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for name in OperatorConfig.model_fields:
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert " ".join(HELP[name].split()) in text, name
        assert f"env MEMBRANE_{name.upper()}" in text, name
