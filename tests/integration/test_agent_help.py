"""`membrane-agent --help` describes every option. Helpers adding an AgentConfig field must
add its flag (agent/config.py _FLAGS, or a --no-... flag for a boolean) and its HELP line:
this test fails until they do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from membrane.agent.config import HELP, AgentConfig


def test_every_option_has_a_description() -> None:
    fields = set(AgentConfig.model_fields)
    missing = sorted(name for name in fields if len(HELP.get(name, "").strip()) < 10)
    assert not missing, f"options without a description in agent/config.py HELP: {missing}"
    assert not set(HELP) - fields, f"HELP entries for options that do not exist: {sorted(set(HELP) - fields)}"


def test_help_output_has_a_described_flag_for_every_option() -> None:
    tool = Path(sys.executable).parent / "membrane-agent"
    done = subprocess.run([str(tool), "--help"], capture_output=True, text=True, timeout=60,
                          env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    # one entry per option: its line and the indented lines that continue it
    entries: list[str] = []
    for line in done.stdout.splitlines():
        if line.startswith("  -"):
            entries.append(line.strip())
        elif line.startswith("    ") and entries:
            entries[-1] += " " + line.strip()
    lines = [" ".join(entry.split()) for entry in entries]
    for name, field in AgentConfig.model_fields.items():
        flag = "--" + ("no-" if field.annotation is bool else "") + name.replace("_", "-")
        described = [line for line in lines if line.startswith(flag + " ")]
        assert described, f"{flag} missing from membrane-agent --help"
        assert f"MEMBRANE_{name.upper()}" in described[0], name
        text = HELP[name].partition(": ")[2] if field.annotation is bool else HELP[name]
        assert " ".join(text.split()) in described[0], name
