from __future__ import annotations

import asyncio

import pytest

from hami.cache.informer import Delta, Informer
from hami.cache.store import BY_NODE, BY_UID, POD_INDEXERS, MutationDetected, Store
from hami.cache.transforms import strip_managed_fields
from hami.core.errors import DecodeError
from hami.k8s.objects import PODS, RawObject
from hami.k8s.watch import Bookmark, Change, Listed


def pod(name: str, rv: str, node: str | None = None, uid: str | None = None, **annotations: str) -> RawObject:
    meta = {"name": name, "namespace": "ns", "resourceVersion": rv, "uid": uid or f"uid-{name}"}
    if annotations:
        meta["annotations"] = {k.replace("_", "/"): v for k, v in annotations.items()}
    obj: RawObject = {"metadata": meta, "spec": {}}  # type: ignore[typeddict-item]
    if node:
        obj["spec"]["nodeName"] = node
    return obj


class NotAnApi:
    """The informer's sync core never touches the API."""


def make_informer(**kwargs) -> Informer:
    return Informer(NotAnApi(), PODS, indexers=POD_INDEXERS, **kwargs)  # type: ignore[arg-type]


def test_store_indexes_follow_updates_and_removals():
    store: Store[None] = Store(indexers=POD_INDEXERS)
    store.upsert(pod("a", "1", node="n1"))
    store.upsert(pod("b", "1", node="n1"))
    store.upsert(pod("c", "1"))
    assert store.index_keys(BY_NODE, "n1") == {"ns/a", "ns/b"}
    assert [o["metadata"]["name"] for o in store.by_index(BY_UID, "uid-c")] == ["c"]
    store.upsert(pod("b", "2", node="n2"))
    assert store.index_keys(BY_NODE, "n1") == {"ns/a"}
    assert store.index_keys(BY_NODE, "n2") == {"ns/b"}
    store.remove("ns/a")
    assert store.index_keys(BY_NODE, "n1") == frozenset()
    assert sorted(store.index_values(BY_NODE)) == ["n2"]
    assert len(store) == 2 and "ns/c" in store
    with pytest.raises(KeyError, match="no index"):
        store.index_keys("by-color", "red")


def test_mutation_detector_names_mutated_objects():
    store: Store[None] = Store(detect_mutations=True)
    store.upsert(pod("a", "1"))
    store.upsert(pod("b", "1"))
    store.check_mutations()
    obj = store.get("ns/a")
    assert obj is not None
    obj["metadata"]["labels"] = {"oops": "1"}
    with pytest.raises(MutationDetected) as err:
        store.check_mutations()
    assert err.value.keys == ("ns/a",)


def test_transform_strips_managed_fields_without_touching_the_input():
    raw = pod("a", "1")
    raw["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    slim = strip_managed_fields(raw)
    assert "managedFields" not in slim["metadata"]
    assert "managedFields" in raw["metadata"]
    plain = pod("b", "1")
    assert strip_managed_fields(plain) is plain


def test_list_then_changes_produce_deltas_and_sync():
    inf = make_informer()
    seen: list[Delta] = []
    inf.add_handler(seen.append)
    deltas = inf.apply(Listed(objects=(pod("a", "1"), pod("b", "2")), resource_version="2"))
    assert [(d.type, d.key) for d in deltas] == [("added", "ns/a"), ("added", "ns/b")]
    assert inf.has_synced.is_set()
    inf.apply(Change(type="MODIFIED", object=pod("a", "3", node="n1"), resource_version="3"))
    inf.apply(Change(type="DELETED", object=pod("b", "4"), resource_version="4"))
    inf.apply(Bookmark(resource_version="9"))
    assert [(d.type, d.key) for d in seen] == [
        ("added", "ns/a"),
        ("added", "ns/b"),
        ("updated", "ns/a"),
        ("deleted", "ns/b"),
    ]
    assert seen[2].old is not None and seen[2].old["metadata"]["resourceVersion"] == "1"
    assert seen[3].final_state_unknown is False
    assert inf.store.resource_version == "9"
    assert inf.store.index_keys(BY_NODE, "n1") == {"ns/a"}
    assert inf.store.keys() == ["ns/a"]


def test_relist_synthesises_deletes_for_vanished_keys():
    inf = make_informer()
    inf.apply(Listed(objects=(pod("a", "1"), pod("b", "2"), pod("c", "3")), resource_version="3"))
    seen: list[Delta] = []
    inf.add_handler(seen.append)
    seen.clear()  # drop the replay a late handler receives
    deltas = inf.apply(Listed(objects=(pod("b", "2"), pod("c", "5"), pod("d", "6")), resource_version="6"))
    assert [(d.type, d.key, d.final_state_unknown) for d in deltas] == [
        ("deleted", "ns/a", True),
        ("updated", "ns/c", False),
        ("added", "ns/d", False),
    ]  # b is unchanged (same RV): no delta
    assert seen == deltas
    assert sorted(inf.store.keys()) == ["ns/b", "ns/c", "ns/d"]
    assert inf.store.resource_version == "6"


def test_late_handlers_replay_the_cache():
    inf = make_informer()
    inf.apply(Listed(objects=(pod("a", "1"),), resource_version="1"))
    seen: list[Delta] = []
    inf.add_handler(seen.append)
    assert [(d.type, d.key) for d in seen] == [("added", "ns/a")]


def decode_gpu(obj: RawObject) -> int:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get("hami.io/gpus", "0")
    if not value.isdigit():
        raise DecodeError("hami.io/gpus", value, "not a number")
    return int(value)


def test_decoder_runs_once_at_ingest_and_bad_values_never_crash():
    calls: list[str] = []

    def decoder(obj: RawObject) -> int:
        calls.append(obj["metadata"]["name"])
        return decode_gpu(obj)

    errors: list[tuple[str, Exception]] = []
    inf = make_informer(decoder=decoder, on_decode_error=lambda k, exc: errors.append((k, exc)))
    seen: list[Delta] = []
    inf.add_handler(seen.append)
    inf.apply(
        Listed(
            objects=(pod("a", "1", **{"hami.io_gpus": "2"}), pod("b", "1", **{"hami.io_gpus": "x"})),
            resource_version="1",
        )
    )
    assert calls == ["a", "b"]
    assert inf.store.decoded("ns/a") == 2
    assert inf.store.decoded("ns/b") is None
    assert isinstance(inf.store.decode_error("ns/b"), DecodeError)
    assert inf.store.get("ns/b") is not None  # still cached
    assert inf.decode_failures == 1 and errors[0][0] == "ns/b"
    assert seen[0].decoded == 2
    # fixing the annotation clears the error; the old decoded value travels with the delta
    inf.apply(Change(type="MODIFIED", object=pod("b", "2", **{"hami.io_gpus": "4"}), resource_version="2"))
    assert inf.store.decode_error("ns/b") is None and inf.store.decoded("ns/b") == 4
    inf.apply(Change(type="MODIFIED", object=pod("a", "3", **{"hami.io_gpus": "1"}), resource_version="3"))
    assert (seen[-1].old_decoded, seen[-1].decoded) == (2, 1)
    inf.apply(Change(type="DELETED", object=pod("a", "4"), resource_version="4"))
    assert seen[-1].type == "deleted" and seen[-1].decoded == 1


def test_a_crashing_decoder_or_handler_is_contained(caplog):
    def crashing(obj: RawObject) -> int:
        raise TypeError("bug in decoder")

    inf = make_informer(decoder=crashing)

    def bad_handler(delta: Delta) -> None:
        raise RuntimeError("slow consumer bug")

    good: list[str] = []
    inf.add_handler(bad_handler)
    inf.add_handler(lambda d: good.append(d.key))
    inf.apply(Listed(objects=(pod("a", "1"),), resource_version="1"))
    assert good == ["ns/a"]
    assert inf.decode_failures == 1 and inf.handler_failures == 1
    assert "bug in decoder" in caplog.text and "slow consumer bug" in caplog.text


def test_nameless_objects_are_skipped():
    inf = make_informer()
    assert inf.apply(Listed(objects=({"metadata": {}},), resource_version="1")) == []  # type: ignore[arg-type]
    assert inf.apply(Change(type="ADDED", object={"metadata": {}}, resource_version="2")) == []


async def test_wait_synced():
    inf = make_informer()
    waiter = asyncio.ensure_future(inf.wait_synced())
    await asyncio.sleep(0)
    assert not waiter.done()
    inf.apply(Listed(objects=(), resource_version="1"))
    await asyncio.wait_for(waiter, 1)
