"""The JSON-Patch diff: applying ``json_patch(old, new)`` to ``old`` gives ``new`` (RFC 6902)."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from hami.core.admission import json_patch
from hami.simulator.patching import json_patch as apply_json_patch

keys = st.text(alphabet=st.sampled_from("ab/~-0 "), min_size=0, max_size=4)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=3)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)
documents = st.dictionaries(keys, json_values, max_size=5)


@settings(max_examples=120, deadline=None)
@given(documents, documents)
def test_patch_turns_old_into_new(old, new):
    ops = json_patch(old, new)
    assert apply_json_patch(copy.deepcopy(old), ops) == new
    if old == new and _strict(old) == _strict(new):
        assert ops == []


@settings(max_examples=60, deadline=None)
@given(documents, st.data())
def test_patch_of_an_extension_only_adds(old, data):
    new = copy.deepcopy(old)
    new.update({k + "/x": v for k, v in data.draw(documents).items() if k + "/x" not in old})
    assert all(op["op"] == "add" for op in json_patch(old, new))


def _strict(value):
    """Equality that tells JSON true from 1 (Python's == does not)."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return (type(value).__name__ if isinstance(value, bool) else "n", value)


def test_escaping_and_json_types():
    assert json_patch({"a/b": 1, "c~d": 1}, {"a/b": 2, "c~d": 1}) == [
        {"op": "replace", "path": "/a~1b", "value": 2}
    ]
    assert json_patch({"c~d": 1}, {"c~d": 3}) == [{"op": "replace", "path": "/c~0d", "value": 3}]
    assert json_patch({"a": 1}, {"a": True}) == [{"op": "replace", "path": "/a", "value": True}]
    assert json_patch({"a": 1}, {"a": 1.0}) == []


def test_lists_append_by_index_and_shrink_by_replacement():
    assert json_patch({"env": [{"n": 1}]}, {"env": [{"n": 1}, {"n": 2}]}) == [
        {"op": "add", "path": "/env/1", "value": {"n": 2}}
    ]
    assert json_patch({"env": [1, 2]}, {"env": [1]}) == [{"op": "replace", "path": "/env", "value": [1]}]
    assert json_patch({"c": [{"x": 1}]}, {"c": [{"x": 1, "y": 2}]}) == [
        {"op": "add", "path": "/c/0/y", "value": 2}
    ]
