"""The chart ships the CRDs the operator generates (deploy/crds is their source of truth)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_chart_crds_match_generated_ones() -> None:
    source = {p.name: p.read_text() for p in (ROOT / "deploy/crds").glob("*.yaml")}
    shipped = {p.name: p.read_text() for p in (ROOT / "deploy/helm/membrane/crds").glob("*.yaml")}
    assert source and shipped == source, "copy deploy/crds/*.yaml into deploy/helm/membrane/crds/"
