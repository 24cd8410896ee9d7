"""The agent compiles its datapath against a header tree of its own (the image's), with nothing
from the node: /lib/modules and /usr/src are hidden in a private mount namespace, the headers
come from a non-standard directory laid out by deploy/image/kernel-headers.sh (as the image
build does), and a pod then gets a working datapath. Without the tree the same agent cannot
compile, which shows the host paths really were hidden."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from membrane_testkit.lab.node import LabNode

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = ROOT / "deploy" / "image" / "kernel-headers.sh"

# Every place bcc could find headers on its own: the modules tree, the sources, and the
# kernel's built-in archive (CONFIG_IKHEADERS). Empty directories/files are bound over them.
HIDE = """set -e
empty=$(mktemp -d /tmp/mbt-empty.XXXXXX); emptyf=$(mktemp /tmp/mbt-empty.XXXXXX)
for d in /lib/modules /usr/src; do [ -d "$d" ] && mount --bind "$empty" "$d"; done
[ -e /sys/kernel/kheaders.tar.xz ] && mount --bind "$emptyf" /sys/kernel/kheaders.tar.xz
rmdir "$empty"; rm -f "$emptyf"   # the binds stay; nothing is left in /tmp
test -z "$(ls -A /usr/src)"
exec "$@"
"""
# slave: the node's later mounts (pod netns files under /run/netns) still reach the agent, the
# binds made here never reach the node.
HIDDEN = ["unshare", "-m", "--propagation", "slave", "sh", "-c", HIDE, "hide-host-headers"]


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image's header layout, in a directory bcc would never look at by itself."""
    base = tmp_path_factory.mktemp("mbt-image")
    tree = base / "opt" / "membrane" / "kernel-headers"
    tree.parent.mkdir(parents=True)
    subprocess.run(["sh", str(LAYOUT), str(tree)], check=True, capture_output=True, timeout=300)
    yield tree
    shutil.rmtree(base, ignore_errors=True)


def test_header_tree_is_self_contained(headers: Path) -> None:
    assert (headers / "include/linux/kconfig.h").is_file()
    assert (headers / "include/generated/autoconf.h").is_file()
    assert (headers / "arch/x86/include/generated/uapi/asm/unistd_64.h").is_file()
    outside = [p for p in headers.rglob("*") if p.is_symlink() and not p.resolve().is_relative_to(headers)]
    assert outside == [], outside[:5]


def test_agent_compiles_with_its_own_headers_and_host_paths_hidden(make_node: Any, headers: Path) -> None:
    node: LabNode = make_node(start=False, wrapper=HIDDEN, extra_args=["--kernel-headers", str(headers)])
    node.start_agent()
    status = node.api("status")
    assert status["ready"], status
    pod = node.add_pod("a")
    other = node.add_pod("b")
    done = pod.exec(["ping", "-c", "1", "-W", "2", other.ip], check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_without_the_tree_the_hidden_agent_cannot_compile(make_node: Any) -> None:
    node: LabNode = make_node(start=False, wrapper=HIDDEN)
    with pytest.raises(RuntimeError, match="exited"):
        node.start_agent(timeout=120)
    assert "compiling" in node.log_tail(40)


def test_environment_variable_and_bad_tree(make_node: Any, headers: Path, tmp_path: Path) -> None:
    node: LabNode = make_node(start=False, wrapper=["env", f"MEMBRANE_KERNEL_HEADERS={headers}", *HIDDEN])
    node.start_agent()
    assert node.api("status")["ready"]
    node.stop_agent()
    node.wrapper = []
    node.extra_args = ["--kernel-headers", str(tmp_path)]
    with pytest.raises(RuntimeError, match="exited"):
        node.start_agent()
    assert "kernel_headers" in node.log_tail() and "kconfig.h" in node.log_tail()
