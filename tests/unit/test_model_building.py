"""The Kubernetes object models build their validators at first use, not at import (an agent
start imports them all before it starts its datapath compile), and validate the same then."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import membrane.k8s_models as m
from membrane.k8s_meta import Model
from membrane.k8s_models import parse_object
models = [cls for cls in vars(m).values() if isinstance(cls, type) and issubclass(cls, Model)]
assert len(models) > 10
built = [cls for cls in models if cls.__pydantic_complete__]
pod = parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "n"},
                    "status": {"podIP": "10.0.0.1"}})
print(len(built), type(pod).__name__, pod.metadata.name, type(pod).__pydantic_complete__)
"""


def test_models_import_unbuilt_and_build_at_first_use() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["0", "Pod", "a", "True"], done.stdout + done.stderr
