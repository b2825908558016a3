"""A keyed, indexed store of raw objects plus a typed side table of decoded values.

Read API for everyone (``get``, ``list``, ``by_index``, ``decoded``), write API for the
owning informer only (``upsert``, ``remove``). Like client-go's ``ThreadSafeStore``:
**never mutate what the store returns**; objects are shared with every reader and with the
indexes. Deep-freezing each object would cost more than the decode it protects, so the
rule is documented and enforced in tests by the mutation detector
(``detect_mutations=True``: a canonical copy is kept per object and ``check_mutations()``
names every object changed in place, like ``KUBE_CACHE_MUTATION_DETECTOR``).

Indexes are named functions ``object → index values`` (pods by node, by UID, ...),
maintained on every write, so handlers answer "which pods are on node X" without a scan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

import orjson

from hami.core.errors import HamiError
from hami.k8s.objects import RawObject, object_key

D = TypeVar("D")

IndexFunc = Callable[[RawObject], Iterable[str]]
KeyFunc = Callable[[RawObject], str]

BY_NODE = "by-node"
BY_UID = "by-uid"
BY_NAMESPACE = "by-namespace"


def index_by_node(obj: RawObject) -> Iterable[str]:
    """Pods by ``spec.nodeName`` (unbound pods are not indexed)."""
    node = (obj.get("spec") or {}).get("nodeName")
    return (node,) if node else ()


def index_by_uid(obj: RawObject) -> Iterable[str]:
    uid = (obj.get("metadata") or {}).get("uid")
    return (uid,) if uid else ()


def index_by_namespace(obj: RawObject) -> Iterable[str]:
    namespace = (obj.get("metadata") or {}).get("namespace")
    return (namespace,) if namespace else ()


POD_INDEXERS: Mapping[str, IndexFunc] = {
    BY_NODE: index_by_node,
    BY_UID: index_by_uid,
    BY_NAMESPACE: index_by_namespace,
}


class MutationDetected(HamiError):
    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(sorted(keys))
        super().__init__(f"cached objects were mutated in place: {', '.join(self.keys)}")


def _canonical(obj: RawObject) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


class Store(Generic[D]):
    """key → object, named indexes, decoded side table, and the last resourceVersion."""

    def __init__(
        self,
        *,
        indexers: Mapping[str, IndexFunc] | None = None,
        key_func: KeyFunc = object_key,
        detect_mutations: bool = False,
    ) -> None:
        self._items: dict[str, RawObject] = {}
        self._decoded: dict[str, D] = {}
        self._errors: dict[str, Exception] = {}
        self._indexers = dict(indexers or {})
        self._indexes: dict[str, dict[str, set[str]]] = {name: {} for name in self._indexers}
        self._index_values: dict[str, dict[str, tuple[str, ...]]] = {name: {} for name in self._indexers}
        self._key_func = key_func
        self._copies: dict[str, bytes] | None = {} if detect_mutations else None
        self.resource_version = ""

    # ------------------------------------------------------------------ reads

    def key_of(self, obj: RawObject) -> str:
        return self._key_func(obj)

    def get(self, key: str) -> RawObject | None:
        return self._items.get(key)

    def decoded(self, key: str) -> D | None:
        """The decoder's value for ``key`` (None if absent, undecodable, or no decoder)."""
        return self._decoded.get(key)

    def decode_error(self, key: str) -> Exception | None:
        """Why ``key`` could not be decoded, if it could not."""
        return self._errors.get(key)

    def decode_errors(self) -> Mapping[str, Exception]:
        return dict(self._errors)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def keys(self) -> list[str]:
        return list(self._items)

    def objects(self) -> list[RawObject]:
        return list(self._items.values())

    def items(self) -> list[tuple[str, RawObject]]:
        return list(self._items.items())

    def index_keys(self, index: str, value: str) -> frozenset[str]:
        try:
            return frozenset(self._indexes[index].get(value, ()))
        except KeyError:
            raise KeyError(f"no index named {index!r} (have: {', '.join(self._indexes)})") from None

    def by_index(self, index: str, value: str) -> list[RawObject]:
        return [self._items[k] for k in sorted(self.index_keys(index, value))]

    def index_values(self, index: str) -> list[str]:
        """Every value of ``index`` with at least one object (e.g. every node with pods)."""
        return [v for v, keys in self._indexes[index].items() if keys]

    # ------------------------------------------------------------------ writes (informer only)

    def upsert(
        self, obj: RawObject, *, decoded: D | None = None, error: Exception | None = None
    ) -> RawObject | None:
        """Insert or replace ``obj``; returns the previous object, if any."""
        key = self._key_func(obj)
        old = self._items.get(key)
        self._items[key] = obj
        if decoded is not None:
            self._decoded[key] = decoded
        else:
            self._decoded.pop(key, None)
        if error is not None:
            self._errors[key] = error
        else:
            self._errors.pop(key, None)
        self._reindex(key, obj)
        if self._copies is not None:
            self._copies[key] = _canonical(obj)
        return old

    def remove(self, key: str) -> tuple[RawObject | None, D | None]:
        """Drop ``key``; returns its last object and decoded value."""
        old = self._items.pop(key, None)
        decoded = self._decoded.pop(key, None)
        self._errors.pop(key, None)
        self._reindex(key, None)
        if self._copies is not None:
            self._copies.pop(key, None)
        return old, decoded

    def _reindex(self, key: str, obj: RawObject | None) -> None:
        for name, func in self._indexers.items():
            previous = self._index_values[name].pop(key, ())
            index = self._indexes[name]
            for value in previous:
                members = index.get(value)
                if members is not None:
                    members.discard(key)
                    if not members:
                        del index[value]
            if obj is None:
                continue
            values = tuple(func(obj))
            if values:
                self._index_values[name][key] = values
                for value in values:
                    index.setdefault(value, set()).add(key)

    # ------------------------------------------------------------------ debug

    def check_mutations(self) -> None:
        """Raise ``MutationDetected`` naming every object changed since it was stored."""
        if self._copies is None:
            return
        changed = [k for k, copy in self._copies.items() if _canonical(self._items[k]) != copy]
        if changed:
            raise MutationDetected(changed)
