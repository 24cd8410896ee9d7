"""CNI plugin start-up: the Go binary vs the Python plugin it replaced, in one run.

The Python plugin is rebuilt from git (the last commit that had it) as scripts/install.sh
installed it: `python3 -I -S` launcher, only the package root on sys.path. Both plugins talk
to the same lab agent; calls are interleaved (Go, Python, Go, ...) so machine noise hits both.
VERSION is pure start-up; ADD and DEL add the agent's work (the same for both).

    python -m tests.bench.cni_startup [--repeats 40] [--out bench-results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, tool

from .stats import median, percentile, ratio

PYTHON_PLUGIN_COMMIT = "0829d2fad265c07b3907b6e04a55cb9eb38613ef"  # last main commit with cni/plugin.py
ROOT = Path(__file__).resolve().parents[2]


def python_plugin(workdir: Path) -> Path:
    """The old plugin from git, laid out as the install script's launcher ran it."""
    pkg = workdir / "membrane"
    (pkg / "cni").mkdir(parents=True)
    show = lambda path: subprocess.run(["git", "-C", str(ROOT), "show", f"{PYTHON_PLUGIN_COMMIT}:{path}"],  # noqa: E731
                                       check=True, capture_output=True).stdout
    (pkg / "__init__.py").write_text('"""membrane (CNI plugin subset)."""\n')
    (pkg / "cni_types.py").write_bytes(show("membrane/cni_types.py"))
    (pkg / "cni" / "__init__.py").write_bytes(show("cni/__init__.py"))
    (pkg / "cni" / "plugin.py").write_bytes(show("cni/plugin.py"))
    launcher = workdir / "membrane-cni-python"
    launcher.write_text(f"#!{sys.executable} -IS\nimport sys\nsys.path.append({str(workdir)!r})\n"
                        "from membrane.cni.plugin import main\nmain()\n")
    launcher.chmod(0o755)
    subprocess.run(["python3", "-m", "compileall", "-q", str(pkg)], check=True)  # as an install leaves it
    return launcher


def call(exe: str, command: str, conf: dict[str, Any], container: str = "", path: str = "") -> tuple[float, int, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": path, "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"}
    data = b"" if command == "VERSION" else json.dumps(conf).encode()
    start = time.perf_counter()
    done = subprocess.run([exe], input=data, env=env, capture_output=True, timeout=60)
    return time.perf_counter() - start, done.returncode, done.stdout.decode()


def run(repeats: int) -> dict[str, Any]:
    node = LabNode(f"cs{os.getpid() % 10000}", pod_cidr="10.211.0.0/24", prefix="mbbench")
    samples: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="mbbench-pycni-") as tmp:
        plugins = {"go": tool("membrane-cni"), "python": str(python_plugin(Path(tmp)))}
        samples = {name: {"VERSION": [], "ADD": [], "DEL": []} for name in plugins}
        try:
            node.create()
            node.start_agent()
            conf = node.net_conf()
            for name, exe in plugins.items():  # warm the page cache for both
                call(exe, "VERSION", conf)
            for i in range(repeats):
                for name, exe in plugins.items():
                    samples[name]["VERSION"].append(call(exe, "VERSION", conf)[0])
            for i in range(repeats):
                for name, exe in plugins.items():
                    pod = f"{name[:2]}{i}"
                    path = str(netns.create(f"{node.netns}-{pod}"))
                    seconds, code, out = call(exe, "ADD", conf, pod, path)
                    if code != 0:
                        raise RuntimeError(f"{name} ADD failed: {out}")
                    samples[name]["ADD"].append(seconds)
                    seconds, code, out = call(exe, "DEL", conf, pod, path)
                    if code != 0:
                        raise RuntimeError(f"{name} DEL failed: {out}")
                    samples[name]["DEL"].append(seconds)
                    netns.delete(f"{node.netns}-{pod}")
        finally:
            node.destroy()
    summary = {name: {cmd: {"p50_ms": median([s * 1000 for s in v]), "p90_ms": percentile([s * 1000 for s in v], 90),
                            "n": len(v)} for cmd, v in cmds.items()} for name, cmds in samples.items()}
    size = Path(plugins["go"]).stat().st_size
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "kernel": platform.release(),
            "cores": os.cpu_count(), "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "python": platform.python_version(), "go_binary_bytes": size, "repeats": repeats, "summary": summary,
            "python_plugin_commit": PYTHON_PLUGIN_COMMIT}


def markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = ["# CNI plugin start-up: Go binary vs the Python plugin it replaced", "",
             f"{r['date']}, kernel {r['kernel']}, {r['cores']} cores, load {' '.join(r['loadavg'])} (shared, noisy "
             f"machine), Python {r['python']}. {r['repeats']} calls of each kind per plugin, interleaved Go/Python; "
             "wall time of one exec as kubelet sees it (fork, exec, work, exit). Both plugins talk to the same "
             "lab agent; ADD/DEL include the agent's work (veth, addresses, maps), which is the same for both.", "",
             f"Go: `.venv/bin/membrane-cni`, static, {r['go_binary_bytes'] / 1e6:.1f} MB. Python: cni/plugin.py at "
             f"{r['python_plugin_commit'][:7]} run as the install script ran it (`python3 -I -S`, precompiled).", "",
             "| command | Go p50 (ms) | Python p50 (ms) | Go p90 | Python p90 | Python / Go (p50) |",
             "|---|---|---|---|---|---|"]
    for cmd in ("VERSION", "ADD", "DEL"):
        g, p = s["go"][cmd], s["python"][cmd]
        lines.append(f"| {cmd} | {g['p50_ms']:.1f} | {p['p50_ms']:.1f} | {g['p90_ms']:.1f} | {p['p90_ms']:.1f} | "
                     f"{ratio(p['p50_ms'], g['p50_ms']):.1f}x |")
    saved = s["python"]["ADD"]["p50_ms"] - s["go"]["ADD"]["p50_ms"]
    lines += ["", f"Per pod, ADD is {saved:.1f} ms shorter with the Go plugin (median); VERSION is the start-up "
              "cost alone.", ""]
    return "\n".join(lines)


def write(r: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cni_startup.json").write_text(json.dumps(r, indent=2) + "\n")
    text = markdown(r)
    (out / "cni_startup.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    print(write(run(args.repeats), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
