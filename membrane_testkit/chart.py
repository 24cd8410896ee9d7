"""The Helm chart as tests see it: a real `helm` (scripts/get-helm.sh), rendering with value
sets, and the bits of kubelet a rendered pod needs to be started outside a cluster (service
environment variables, `$(VAR)` expansion).

Nothing here knows what the chart should contain; the tests decide that.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "membrane"
GET_HELM = ROOT / "scripts" / "get-helm.sh"
NAMESPACE = "kube-system"

Doc = dict[str, Any]


class HelmUnavailable(RuntimeError):
    """scripts/get-helm.sh could not provide a helm binary."""


def helm_binary() -> str:
    """$MEMBRANE_HELM, else the pinned helm from scripts/get-helm.sh (downloaded once)."""
    if os.environ.get("MEMBRANE_HELM"):
        return os.environ["MEMBRANE_HELM"]
    proc = subprocess.run(["bash", str(GET_HELM), "--path"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise HelmUnavailable(f"scripts/get-helm.sh exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


def set_args(sets: dict[str, Any]) -> list[str]:
    """`--set`/`--set-string` arguments; image tags stay strings, booleans become true/false."""
    args: list[str] = []
    for key, value in sets.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif value is None:
            value = "null"
        args += ["--set-string" if isinstance(value, str) and key.startswith("image.tag") else "--set",
                 f"{key}={value}"]
    return args


def template(helm: str, sets: dict[str, Any] | None = None, kube_version: str | None = None,
             namespace: str = NAMESPACE, extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart; the completed process (check returncode yourself)."""
    cmd = [helm, "template", "membrane", str(CHART), "--namespace", namespace, *set_args(sets or {})]
    if kube_version:
        cmd += ["--kube-version", kube_version]
    return subprocess.run(cmd + (extra or []), capture_output=True, text=True, timeout=120)


def render(helm: str, sets: dict[str, Any] | None = None, kube_version: str | None = None,
           namespace: str = NAMESPACE, extra: list[str] | None = None) -> list[Doc]:
    """The rendered objects; fails with helm's message when rendering fails."""
    proc = template(helm, sets, kube_version, namespace, extra)
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]  # rendered YAML of known shape


def container(spec: Doc, name: str, init: bool = False) -> Doc:
    items = spec.get("initContainers" if init else "containers") or []
    matches = [c for c in items if c["name"] == name]
    assert matches, f"no {'init ' if init else ''}container {name}: {[c['name'] for c in items]}"
    return matches[0]  # type: ignore[no-any-return]  # rendered YAML of known shape


# --- what kubelet does to a container's command line and environment ------------------------

def service_env(service: Doc, cluster_ip: str) -> dict[str, str]:
    """The environment variables kubelet gives pods in a Service's namespace (service links)."""
    prefix = service["metadata"]["name"].upper().replace("-", "_").replace(".", "_")
    ports = service["spec"]["ports"]
    env = {f"{prefix}_SERVICE_HOST": cluster_ip, f"{prefix}_SERVICE_PORT": str(ports[0]["port"])}
    for port in ports:
        if port.get("name"):
            env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
    return env


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes, the rest stays."""
    def one_ref(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REF.sub(one_ref, value)


def container_env(c: Doc, fields: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """A container's environment as kubelet builds it: `base` (service links), then each `env`
    entry in order, `value`s expanded against what is defined so far, `fieldRef`s from `fields`
    (e.g. {"spec.nodeName": "node-a"}). A fieldRef not in `fields` fails the test."""
    env = dict(base or {})
    for item in c.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif "valueFrom" in item and "fieldRef" in item["valueFrom"]:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in fields, f"env {item['name']}: no value for fieldRef {path}"
            env[item["name"]] = fields[path]
        else:
            raise AssertionError(f"env {item['name']}: unsupported source {item}")
    return env


def command_line(c: Doc, env: dict[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded as kubelet does."""
    return [expand(str(part), env) for part in (c.get("command") or []) + (c.get("args") or [])]
