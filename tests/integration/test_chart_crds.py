"""The chart ships the CRDs the operator generates (deploy/crds is their source of truth), as
templates Helm upgrades, kept on uninstall."""

from __future__ import annotations

from pathlib import Path

import pytest

from membrane.operator.crds import CRDS
from membrane_testkit import chart

ROOT = Path(__file__).resolve().parents[2]


def test_chart_crds_match_generated_ones() -> None:
    source = {p.name: p.read_text() for p in (ROOT / "deploy/crds").glob("*.yaml")}
    shipped = {p.name: p.read_text() for p in (ROOT / "deploy/helm/membrane/files/crds").glob("*.yaml")}
    assert source and shipped == source, "copy deploy/crds/*.yaml into deploy/helm/membrane/files/crds/"
    assert not (ROOT / "deploy/helm/membrane/crds").exists(), \
        "crds/ is installed once and never upgraded by Helm, and would clash with the templates"


@pytest.fixture(scope="module")
def helm() -> str:
    try:
        return chart.helm_binary()
    except chart.HelmUnavailable as exc:
        pytest.skip(str(exc))


def test_crds_rendered_as_templates_and_kept(helm: str) -> None:
    docs = chart.render(helm)
    rendered = {d["metadata"]["name"]: d for d in chart.find(docs, "CustomResourceDefinition")}
    assert set(rendered) == {c["metadata"]["name"] for c in CRDS}
    for crd in CRDS:
        got = rendered[crd["metadata"]["name"]]
        assert got["spec"] == crd["spec"], "the rendered CRD differs from operator/crds.py"
        assert got["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert got["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert not chart.find(chart.render(helm, {"crds.install": False}), "CustomResourceDefinition")
    dropped = chart.one(chart.render(helm, {"crds.keep": False}), "CustomResourceDefinition",
                        "membraneidentities.membrane.io")
    assert "helm.sh/resource-policy" not in (dropped["metadata"].get("annotations") or {})
