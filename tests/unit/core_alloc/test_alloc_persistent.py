"""Persistent snapshot containers (NodeTable, NodeOrder) against plain models, and the ledger's
snapshots built from them: old versions never change, new versions equal a rebuild."""

from __future__ import annotations

from typing import cast

import pytest
from alloc_builders import cd, gpu, ledger_with
from hypothesis import given, settings
from hypothesis import strategies as st

from hami.core.errors import LedgerError
from hami.core.ids import NodeName
from hami.core.model import NVIDIA
from hami.core.snapshot import NodeOrder, NodeSnapshot, NodeTable, OrderKey

NAMES = [NodeName(f"n{i:03d}") for i in range(300)]


def view(name: str, score: float = 0.0) -> NodeSnapshot:
    return NodeSnapshot(name=NodeName(name), generation=0, devices=(), score=score)


# (name index, score or None for a removal); many steps so that buckets grow and shrink and
# chunks split and merge.
steps = st.lists(
    st.tuples(st.integers(0, len(NAMES) - 1), st.none() | st.integers(0, 20)), min_size=1, max_size=900
)


@settings(max_examples=40, deadline=None)
@given(steps, st.integers(1, 60))
def test_node_table_is_a_persistent_dict(ops: list[tuple[int, int | None]], every: int) -> None:
    model: dict[NodeName, NodeSnapshot] = {}
    table = NodeTable()
    versions: list[tuple[NodeTable, dict[NodeName, NodeSnapshot]]] = [(table, {})]
    editor = table.edit()
    for i, (k, score) in enumerate(ops):
        name = NAMES[k]
        if score is None:
            editor.discard(name)
            model.pop(name, None)
        else:
            editor[name] = model[name] = view(name, score)
        if i % every == 0:
            table = editor.finish()
            versions.append((table, dict(model)))
            editor = table.edit()
    versions.append((editor.finish(), dict(model)))
    for version, expected in versions:  # every version still reads as it was built
        assert len(version) == len(expected)
        assert list(version) == sorted(expected)
        assert version.names == frozenset(expected)
        assert dict(version.items()) == expected
        for name in NAMES[:40]:
            assert (name in version) == (name in expected)
            assert version.get(name) is expected.get(name)
    with pytest.raises(KeyError):
        NodeTable()[NodeName("missing")]


@settings(max_examples=40, deadline=None)
@given(steps, st.integers(1, 60))
def test_node_order_is_a_persistent_sorted_sequence(ops: list[tuple[int, int | None]], every: int) -> None:
    keys: dict[NodeName, OrderKey] = {}
    order = NodeOrder()
    versions: list[tuple[NodeOrder, tuple[NodeName, ...]]] = [(order, ())]
    editor = order.edit()
    for i, (k, score) in enumerate(ops):
        name = NAMES[k]
        old = keys.pop(name, None)
        if old is not None:
            editor.remove(old)
        if score is not None:
            keys[name] = (float(-score), name)
            editor.insert(keys[name], name)
        if i % every == 0:
            order = editor.finish()
            versions.append((order, tuple(n for _, n in sorted(keys.values()))))
            editor = order.edit()
    versions.append((editor.finish(), tuple(n for _, n in sorted(keys.values()))))
    for version, expected in versions:
        assert version == expected and tuple(version) == expected and len(version) == len(expected)
        if expected:
            assert version[0] == expected[0] and version[-1] == expected[-1]
            assert version[len(expected) // 2] == expected[len(expected) // 2]
            assert version[1:4] == expected[1:4]
            assert expected[0] in version
    final, expected = versions[-1]
    assert final == NodeOrder.of((key, name) for name, key in keys.items())
    assert hash(final) == hash(expected)


def test_node_order_rejects_what_it_does_not_hold() -> None:
    order = NodeOrder.of([((1.0, "a"), NodeName("a")), ((2.0, "b"), NodeName("b"))])
    editor = order.edit()
    with pytest.raises(KeyError):
        editor.remove((1.5, "x"))
    with pytest.raises(KeyError):
        editor.remove((9.0, "z"))
    with pytest.raises(IndexError):
        order[2]
    assert order != ("a",) and order != ["a", "b"] and order == ("a", "b")


def test_ledger_snapshots_are_persistent_and_equal_a_rebuild() -> None:
    nodes = {f"n{i:02d}": [gpu(f"G{i}-{g}", index=g) for g in range(2)] for i in range(70)}
    ledger = ledger_with(nodes)
    history = []
    for i in range(120):
        snap = ledger.snapshot()
        history.append((snap, {n: v for n, v in snap.nodes.items()}, tuple(snap.binpack_order)))
        node = f"n{i * 7 % 70:02d}"
        device = f"G{i * 7 % 70}-{i % 2}"
        try:
            ledger.assume(f"p{i}", node, {NVIDIA: ((cd(device, 500, 5),),)})  # type: ignore[arg-type]
        except LedgerError:
            continue
        if i % 3 == 0:
            ledger.forget(f"p{i // 2}")
        if i == 60:
            ledger.remove_node("n05")
    for snap, nodes_then, order_then in history:  # nothing a later change did shows in an old snapshot
        assert {n: v for n, v in snap.nodes.items()} == nodes_then
        assert tuple(snap.binpack_order) == order_then
    last = ledger.snapshot()
    table = cast(NodeTable, last.nodes)
    assert "n05" not in table and len(table) == 69
    scores = {n: v.score for n, v in last.nodes.items()}
    assert tuple(last.binpack_order) == tuple(sorted(scores, key=lambda n: (-scores[n], n)))
    assert tuple(last.spread_order) == tuple(sorted(scores, key=lambda n: (scores[n], n)))
