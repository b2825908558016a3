"""Patch algorithms of the simulated server (pure functions)."""

from __future__ import annotations

import pytest

from hami.simulator.patching import json_patch, merge_patch, strategic_merge_patch
from hami.simulator.statuses import StatusError

POD = {
    "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x/one"]},
    "spec": {
        "containers": [
            {
                "name": "main",
                "image": "img:1",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            },
            {"name": "side", "image": "side:1"},
        ],
        "tolerations": [{"key": "t1"}],
    },
}


def test_merge_patch_rfc7386():
    assert merge_patch(POD, {"metadata": {"labels": {"a": None, "c": "3"}}})["metadata"]["labels"] == {
        "b": "2",
        "c": "3",
    }
    assert merge_patch(POD, {"metadata": {"finalizers": ["x/two"]}})["metadata"]["finalizers"] == ["x/two"]
    assert merge_patch({"a": {"b": 1}}, {"a": 5}) == {"a": 5}


def test_strategic_merge_keyed_lists_sets_and_directives():
    patched = strategic_merge_patch(
        POD,
        {
            "metadata": {"finalizers": ["x/two"]},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "img:2",
                        "env": [{"name": "B", "$patch": "delete"}, {"name": "C", "value": "3"}],
                    },
                    {"name": "side", "$patch": "delete"},
                ],
                "tolerations": [{"key": "t2"}],
            },
        },
    )
    assert patched["metadata"]["finalizers"] == ["x/one", "x/two"]  # a merged set
    [main] = patched["spec"]["containers"]
    assert main["image"] == "img:2" and [e["name"] for e in main["env"]] == ["A", "C"]
    assert patched["spec"]["tolerations"] == [{"key": "t2"}]  # no merge key: replaced
    assert POD["spec"]["containers"][0]["image"] == "img:1"  # the input is untouched

    replaced = strategic_merge_patch(
        POD, {"spec": {"containers": [{"name": "only", "image": "x"}, {"$patch": "replace"}]}}
    )
    assert replaced["spec"]["containers"] == [{"name": "only", "image": "x"}]
    assert strategic_merge_patch(POD, {"metadata": {"labels": {"$patch": "replace", "z": "9"}}})["metadata"][
        "labels"
    ] == {"z": "9"}
    assert (
        "labels" not in strategic_merge_patch(POD, {"metadata": {"labels": {"$patch": "delete"}}})["metadata"]
    )
    ordered = strategic_merge_patch(
        POD, {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "main"}]}}
    )
    assert [c["name"] for c in ordered["spec"]["containers"]] == ["side", "main"]
    removed = strategic_merge_patch(POD, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x/one"]}})
    assert removed["metadata"]["finalizers"] == []
    retained = strategic_merge_patch(POD, {"spec": {"$retainKeys": ["containers"], "containers": []}})
    assert set(retained["spec"]) == {"containers"}


def test_json_patch_rfc6902():
    ops = [
        {"op": "add", "path": "/metadata/annotations", "value": {}},
        {"op": "add", "path": "/metadata/annotations/hami.io~1node-handshake", "value": "Requesting"},
        {"op": "replace", "path": "/spec/containers/0/image", "value": "img:3"},
        {"op": "add", "path": "/spec/tolerations/-", "value": {"key": "t9"}},
        {"op": "copy", "from": "/metadata/labels/a", "path": "/metadata/labels/c"},
        {"op": "move", "from": "/metadata/labels/b", "path": "/metadata/labels/d"},
        {"op": "remove", "path": "/spec/containers/1"},
        {"op": "test", "path": "/metadata/labels/d", "value": "2"},
    ]
    patched = json_patch(POD, ops)
    assert patched["metadata"]["annotations"] == {"hami.io/node-handshake": "Requesting"}
    assert patched["metadata"]["labels"] == {"a": "1", "c": "1", "d": "2"}
    assert [c["name"] for c in patched["spec"]["containers"]] == ["main"]
    assert patched["spec"]["tolerations"][-1] == {"key": "t9"}
    for bad in (
        [{"op": "test", "path": "/metadata/labels/a", "value": "x"}],
        [{"op": "add", "path": "/metadata/annotations/k", "value": "v"}],  # missing parent map
        [{"op": "remove", "path": "/spec/containers/7"}],
    ):
        with pytest.raises(StatusError) as failed:
            json_patch(POD, bad)
        assert failed.value.code == 422
        assert failed.value.message == "the server rejected our request due to an error in our request"
    with pytest.raises(StatusError) as undecodable:
        json_patch(POD, {"op": "add"})
    assert undecodable.value.code == 400
