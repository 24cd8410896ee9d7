from membrane.delta import diff


def test_diff_writes_only_differences() -> None:
    d = diff({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 9, "z": 0})
    assert d.upserts == {"b": 2, "c": 3} and d.deletes == ["z"]
    assert not diff({"a": 1}, {"a": 1})
