"""Label selector semantics (apimachinery LabelSelectorAsSelector)."""

from __future__ import annotations

import pytest

from membrane.k8s_models import LabelSelector
from membrane.selectors import Operator, Requirement, Selector, compile_selector, parse_selector


def test_empty_selector_matches_everything() -> None:
    selector = parse_selector({})
    assert selector.is_everything
    assert selector.matches({}) and selector.matches({"a": "b"})


def test_null_selector_matches_nothing() -> None:
    assert not parse_selector(None).matches({})
    assert not compile_selector(None).matches({"a": "b"})


def test_match_labels_all_must_match() -> None:
    s = parse_selector({"matchLabels": {"app": "web", "tier": "fe"}})
    assert s.matches({"app": "web", "tier": "fe", "x": "y"})
    assert not s.matches({"app": "web"})
    assert not s.matches({"app": "web", "tier": "be"})


@pytest.mark.parametrize(
    ("expr", "labels", "expected"),
    [
        ({"key": "env", "operator": "In", "values": ["a", "b"]}, {"env": "a"}, True),
        ({"key": "env", "operator": "In", "values": ["a", "b"]}, {"env": "c"}, False),
        ({"key": "env", "operator": "In", "values": ["a"]}, {}, False),
        ({"key": "env", "operator": "NotIn", "values": ["a"]}, {"env": "b"}, True),
        ({"key": "env", "operator": "NotIn", "values": ["a"]}, {"env": "a"}, False),
        ({"key": "env", "operator": "NotIn", "values": ["a"]}, {}, True),  # absent key matches
        ({"key": "env", "operator": "Exists"}, {"env": ""}, True),
        ({"key": "env", "operator": "Exists"}, {}, False),
        ({"key": "env", "operator": "DoesNotExist"}, {}, True),
        ({"key": "env", "operator": "DoesNotExist"}, {"env": "a"}, False),
    ],
)
def test_match_expressions(expr: dict[str, object], labels: dict[str, str], expected: bool) -> None:
    assert parse_selector({"matchExpressions": [expr]}).matches(labels) is expected


def test_labels_and_expressions_are_anded() -> None:
    s = parse_selector(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}],
        }
    )
    assert s.matches({"app": "web", "env": "prod"})
    assert s.matches({"app": "web"})
    assert not s.matches({"app": "web", "env": "dev"})
    assert not s.matches({"env": "prod"})


def test_canonical_form_is_hashable_and_order_independent() -> None:
    a = parse_selector(
        {"matchLabels": {"x": "1", "y": "2"},
         "matchExpressions": [{"key": "z", "operator": "In", "values": ["b", "a", "a"]}]}
    )
    b = parse_selector(
        {"matchExpressions": [{"key": "z", "operator": "In", "values": ["a", "b"]}],
         "matchLabels": {"y": "2", "x": "1"}}
    )
    assert a == b and hash(a) == hash(b)
    # matchLabels x=1 is the same requirement as `x In (1)`.
    c = Selector.of({}, [Requirement("x", Operator.IN, ("1",))])
    assert c == Selector.of({"x": "1"})
    assert Selector.nothing() != Selector.everything()


def test_string_form() -> None:
    s = parse_selector(
        {"matchLabels": {"app": "web"},
         "matchExpressions": [
             {"key": "env", "operator": "NotIn", "values": ["dev", "test"]},
             {"key": "gpu", "operator": "Exists"},
             {"key": "spot", "operator": "DoesNotExist"},
             {"key": "zone", "operator": "In", "values": ["a", "b"]}]}
    )
    assert str(s) == "app=web,env notin (dev,test),gpu,spot,zone in (a,b)".replace("spot", "!spot")
    assert str(Selector.everything()) == "<all>" and str(Selector.nothing()) == "<none>"


def test_compile_from_model() -> None:
    model = LabelSelector.model_validate({"matchLabels": {"a": "b"}})
    assert compile_selector(model) == Selector.of({"a": "b"})
