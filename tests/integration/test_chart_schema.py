"""values.schema.json: helm refuses wrong types, ranges and unknown keys before rendering,
naming the value; the schema and values.yaml describe the same keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from membrane_testkit import chart

SCHEMA = json.loads((chart.CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((chart.CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def helm() -> str:
    try:
        return chart.helm_binary()
    except chart.HelmUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("sets, where", [
    ({"agent.mtu": "abc"}, "/agent/mtu"),
    ({"agent.mtu": 100}, "/agent/mtu"),
    ({"agnet.mtu": 1450}, "agnet"),
    ({"agent.http.port": 70000}, "/agent/http/port"),
    ({"ipam.mode": "magic"}, "/ipam/mode"),
    ({"clusterCIDR": "banana"}, "/clusterCIDR"),
    ({"agent.extraEnv[0].name": "X", "agent.extraEnv[0].value": 1}, "/agent/extraEnv/0/value"),
    ({"agent.privileged": "yes"}, "/agent/privileged"),
    ({"operator.replicas": 0}, "/operator/replicas"),
    ({"agent.seccompProfile": "Strict"}, "/agent/seccompProfile"),
    ({"image.digest": "sha256:abc"}, "/image/digest"),
    ({"prometheus.prometheusRule.mapPressure": 2}, "/prometheus/prometheusRule/mapPressure"),
], ids=lambda v: str(v) if isinstance(v, str) else None)
def test_bad_values_are_refused_by_name(helm: str, sets: dict[str, Any], where: str) -> None:
    proc = chart.template(helm, sets)
    assert proc.returncode != 0, f"{sets} rendered"
    assert "schema" in proc.stderr and where in proc.stderr, proc.stderr


@pytest.mark.parametrize("sets", [{"agent.mtu": 1450}, {"agent.mtu": None}, {"k8sServicePort": 6443},
                                  {"image.tag": "1.2.3"}, {"agent.tunnel": "disabled"},
                                  {"kubeProxyReplacement": True}])
def test_good_values_pass(helm: str, sets: dict[str, Any]) -> None:
    proc = chart.template(helm, sets)
    assert proc.returncode == 0, proc.stderr


def _undescribed(values: Any, schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Keys of values.yaml the schema does not describe (free-form maps are not walked)."""
    out: set[str] = set()
    props = schema.get("properties")
    if not isinstance(values, dict) or props is None:
        return out
    for key, value in values.items():
        if key not in props:
            out.add(prefix + key)
        else:
            out |= _undescribed(value, props[key], prefix + key + ".")
    return out


def _unused(schema: dict[str, Any], values: Any, prefix: str = "") -> set[str]:
    """Keys the schema describes that values.yaml does not have."""
    out: set[str] = set()
    for key, sub in (schema.get("properties") or {}).items():
        if not isinstance(values, dict) or key not in values:
            out.add(prefix + key)
        else:
            out |= _unused(sub, values[key], prefix + key + ".")
    return out


def test_schema_and_values_name_the_same_keys() -> None:
    assert _undescribed(VALUES, SCHEMA) == set(), "values.yaml keys missing from values.schema.json"
    optional = {"global", "agent.livenessProbe.successThreshold", "agent.livenessProbe.initialDelaySeconds",
                "agent.readinessProbe.successThreshold", "agent.readinessProbe.initialDelaySeconds"}
    assert _unused(SCHEMA, VALUES) <= optional, "values.schema.json describes keys values.yaml does not have"
