"""Immutable, generation-stamped views of the allocation ledger (style guide §3.3).

A :class:`ClusterSnapshot` is what one scheduling decision reads. It is never patched: the ledger
builds a new one after a change, re-using every :class:`NodeSnapshot` whose node did not change (as
kube-scheduler's ``UpdateSnapshot``). Field names follow HAMi's ``DeviceUsage`` in snake_case.

The node map and the two node orders are *persistent* containers (:class:`NodeTable`,
:class:`NodeOrder`): a new snapshot shares everything with the previous one except the few
buckets or chunks its changed nodes fall in, so a decision that changed one node costs the next
snapshot O(one bucket + one chunk), not a copy of every node, and older snapshots stay valid.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from types import MappingProxyType
from typing import Final, overload

from hami.core.ids import DeviceID, NodeName, PodUID
from hami.core.mig import NO_MIG, Geometries, MigUsage
from hami.core.model import MODE_MIG


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceUsage:
    """One device of a node: registered capacity plus the usage of committed and assumed pods."""

    id: DeviceID
    index: int = 0
    vendor: str = ""  # common word (DeviceInfo.devicevendor)
    type: str = ""  # model string, e.g. "NVIDIA A10"
    numa: int = 0
    mode: str = ""
    health: bool = True
    count: int = 0  # split count (max concurrent tasks)
    used: int = 0  # tasks
    totalmem: int = 0  # MiB
    usedmem: int = 0
    totalcore: int = 0
    usedcores: int = 0
    mig_geometries: Geometries = ()
    mig: MigUsage = NO_MIG
    pair_scores: Mapping[str, int] = field(default_factory=dict)
    # Vendor data from the registration (Ascend NetworkID, Metax LinkZone...), read by vendor
    # Fit/ScoreNode (DeviceInfo.custominfo; HAMi copies it into DeviceUsage too).
    custominfo: Mapping[str, object] = field(default_factory=dict)

    def with_usage(self, *, used: int, usedmem: int, usedcores: int, mig: MigUsage) -> DeviceUsage:
        """A copy with other usage (direct constructor call: ``dataclasses.replace`` is 10x slower)."""
        return DeviceUsage(
            id=self.id,
            index=self.index,
            vendor=self.vendor,
            type=self.type,
            numa=self.numa,
            mode=self.mode,
            health=self.health,
            count=self.count,
            used=used,
            totalmem=self.totalmem,
            usedmem=usedmem,
            totalcore=self.totalcore,
            usedcores=usedcores,
            mig_geometries=self.mig_geometries,
            mig=mig,
            pair_scores=self.pair_scores,
            custominfo=self.custominfo,
        )

    @property
    def free_mem(self) -> int:
        return self.totalmem - self.usedmem

    @property
    def free_cores(self) -> int:
        return self.totalcore - self.usedcores


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorSummary:
    """Upper bounds over one vendor's devices of a node, for rejecting a node without a full fit.

    Only devices that are healthy and below their split count are ``available``. A request of ``n``
    devices of ``m`` MiB and ``c`` cores cannot fit if ``n > available``, ``m > max_free_mem`` or
    ``c > max_free_cores``; an exclusive (100-core) request also needs ``n <= exclusive``, the
    available devices that are idle or whose ``devcore`` is not 100 (HAMi's exclusivity rule).
    """

    devices: int
    available: int
    exclusive: int
    mig: int  # MIG-mode devices: one may host several instances of a container, so counts do not bound
    max_free_mem: int
    max_free_cores: int


def summarise(devices: tuple[DeviceUsage, ...], word: str) -> VendorSummary:
    total = available = exclusive = mig = 0
    max_mem = max_cores = -1
    for d in devices:
        if word not in d.type:
            continue
        total += 1
        if d.mode == MODE_MIG:
            mig += 1
        used = d.used
        if not d.health or d.count <= used:
            continue
        available += 1
        totalcore = d.totalcore
        if used == 0 or totalcore != 100:
            exclusive += 1
        free = d.totalmem - d.usedmem
        if free > max_mem:
            max_mem = free
        free = totalcore - d.usedcores
        if free > max_cores:
            max_cores = free
    return VendorSummary(
        devices=total,
        available=available,
        exclusive=exclusive,
        mig=mig,
        max_free_mem=max_mem,
        max_free_cores=max_cores,
    )


def summarise_all(devices: tuple[DeviceUsage, ...]) -> dict[str, VendorSummary]:
    """:func:`summarise` for every vendor word of ``devices`` (``DeviceUsage.vendor``)."""
    words = {d.vendor for d in devices}
    words.discard("")
    return {w: summarise(devices, w) for w in words}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSnapshot:
    """One registered node at one ledger generation."""

    name: NodeName
    generation: int
    devices: tuple[DeviceUsage, ...]
    score: float  # HAMi default node score (float32) from usage before any new pod
    quarantined: tuple[tuple[PodUID, str], ...] = ()  # (pod UID, why its annotation is unreadable)
    summaries: Mapping[str, VendorSummary] = field(default_factory=dict)
    pods: int = 0  # pods (committed + assumed) accounted on this node

    @property
    def schedulable(self) -> bool:
        return not self.quarantined

    def device(self, device_id: str) -> DeviceUsage | None:
        for d in self.devices:
            if d.id == device_id:
                return d
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSnapshot:
    """Every registered node at one ledger generation, plus the node orders of both policies.

    ``binpack_order`` lists node names by default score descending (HAMi binpack prefers the highest
    score), ``spread_order`` ascending; ties are broken by node name ascending in both, so the
    choice among equal nodes is deterministic (HAMi's is goroutine completion order, spec §14 #13).
    """

    generation: int
    nodes: Mapping[NodeName, NodeSnapshot]
    binpack_order: Sequence[NodeName] = ()
    spread_order: Sequence[NodeName] = ()

    def node(self, name: str) -> NodeSnapshot | None:
        return self.nodes.get(NodeName(name))


EMPTY_SNAPSHOT: Final = ClusterSnapshot(generation=0, nodes=MappingProxyType({}))


# ------------------------------------------------------------------------------ persistent containers

_BUCKET: Final = 32  # target entries per NodeTable bucket (a change copies one bucket)
_CHUNK: Final = 32  # target names per NodeOrder chunk (a change copies one or two chunks)


class NodeTable(Mapping[NodeName, NodeSnapshot]):
    """A read-only, persistent node map: node views in buckets by name hash.

    :meth:`edit` returns an editor whose :meth:`NodeTableEditor.finish` builds a new table sharing
    every untouched bucket with this one; this table never changes. ``names`` is the key set as a
    frozenset, shared while no node is added or removed (a usage change keeps it), for C-speed bulk
    membership tests. Iteration is by node name, whatever the hash seed.
    """

    __slots__ = ("_buckets", "_len", "_mask", "_names", "_sorted")

    def __init__(
        self,
        buckets: tuple[dict[NodeName, NodeSnapshot], ...] | None = None,
        *,
        names: frozenset[NodeName] | None = None,
    ) -> None:
        """``buckets`` (private to the editor) must never change once handed over."""
        if buckets is None:
            buckets = ({},)
        if not buckets or len(buckets) & (len(buckets) - 1):
            raise ValueError("NodeTable needs a power-of-two number of buckets")
        self._buckets = buckets
        self._mask = len(buckets) - 1
        self._names = names if names is not None else frozenset(chain.from_iterable(buckets))
        self._len = len(self._names)
        self._sorted: tuple[NodeName, ...] | None = None

    @classmethod
    def of(cls, views: Mapping[NodeName, NodeSnapshot]) -> NodeTable:
        editor = cls().edit()
        for name, view in views.items():
            editor[name] = view
        return editor.finish()

    @property
    def names(self) -> frozenset[NodeName]:
        return self._names

    def __getitem__(self, key: NodeName) -> NodeSnapshot:
        return self._buckets[hash(key) & self._mask][key]

    def get(self, key: NodeName, default: NodeSnapshot | None = None) -> NodeSnapshot | None:  # type: ignore[override]
        return self._buckets[hash(key) & self._mask].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[NodeName]:
        if self._sorted is None:
            self._sorted = tuple(sorted(self._names))
        return iter(self._sorted)

    def __repr__(self) -> str:
        return f"NodeTable({len(self)} nodes)"

    def edit(self) -> NodeTableEditor:
        return NodeTableEditor(self._buckets, self._names)


class NodeTableEditor:
    """Copy-on-write changes to a :class:`NodeTable`: a bucket is copied on its first change."""

    __slots__ = ("_added", "_buckets", "_mask", "_names", "_owned", "_removed")

    def __init__(self, buckets: tuple[dict[NodeName, NodeSnapshot], ...], names: frozenset[NodeName]) -> None:
        self._buckets = list(buckets)
        self._mask = len(buckets) - 1
        self._owned: set[int] = set()
        self._names = names
        self._added: set[NodeName] = set()
        self._removed: set[NodeName] = set()

    def _own(self, key: NodeName) -> dict[NodeName, NodeSnapshot]:
        i = hash(key) & self._mask
        if i not in self._owned:
            self._buckets[i] = dict(self._buckets[i])
            self._owned.add(i)
        return self._buckets[i]

    def __setitem__(self, key: NodeName, value: NodeSnapshot) -> None:
        bucket = self._own(key)
        if key not in bucket:
            if key in self._removed:
                self._removed.discard(key)
            else:
                self._added.add(key)
        bucket[key] = value

    def discard(self, key: NodeName) -> None:
        bucket = self._buckets[hash(key) & self._mask]
        if key not in bucket:
            return
        del self._own(key)[key]
        if key in self._added:
            self._added.discard(key)
        else:
            self._removed.add(key)

    def finish(self) -> NodeTable:
        """The edited table. The editor stays usable: its next change copies a bucket again."""
        names = self._names
        if self._added or self._removed:
            names = (names - self._removed) | self._added
        self._names, self._added, self._removed = names, set(), set()
        self._owned = set()  # the buckets now belong to the table too
        buckets = list(self._buckets)
        # Keep buckets near _BUCKET entries: re-bucketing is O(n), and only the node count moves it.
        size = len(buckets)
        if len(names) > 2 * _BUCKET * size or (size > 1 and len(names) < _BUCKET * size // 4):
            target = 1
            while target * _BUCKET < len(names):
                target *= 2
            fresh: list[dict[NodeName, NodeSnapshot]] = [{} for _ in range(target)]
            for bucket in buckets:
                for key, value in bucket.items():
                    fresh[hash(key) & (target - 1)][key] = value
            buckets = fresh
        return NodeTable(tuple(buckets), names=names)


OrderKey = tuple[float, str]  # (sort score, node name): names break ties, so keys are unique


class NodeOrder(Sequence[NodeName]):
    """A persistent sequence of node names sorted by a unique :data:`OrderKey`, in chunks.

    :meth:`edit` returns an editor; :meth:`NodeOrderEditor.finish` builds a new order that shares
    every untouched chunk with this one. Compares equal to a tuple (or NodeOrder) of the same
    names, the type it replaced.
    """

    __slots__ = ("_keys", "_len", "_maxes", "_names")

    def __init__(self) -> None:
        self._keys: tuple[tuple[OrderKey, ...], ...] = ()
        self._names: tuple[tuple[NodeName, ...], ...] = ()
        self._maxes: tuple[OrderKey, ...] = ()
        self._len = 0

    @classmethod
    def _chunked(
        cls,
        keys: tuple[tuple[OrderKey, ...], ...],
        names: tuple[tuple[NodeName, ...], ...],
        maxes: tuple[OrderKey, ...],
        length: int,
    ) -> NodeOrder:
        order = cls.__new__(cls)
        order._keys, order._names, order._maxes, order._len = keys, names, maxes, length
        return order

    @classmethod
    def of(cls, items: Iterable[tuple[OrderKey, NodeName]]) -> NodeOrder:
        """The order of ``(key, name)`` pairs (keys must be unique)."""
        editor = cls().edit()
        for key, name in sorted(items):
            editor.insert(key, name)
        return editor.finish()

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[NodeName]:
        return chain.from_iterable(self._names)

    def __contains__(self, value: object) -> bool:
        return any(value in chunk for chunk in self._names)

    @overload
    def __getitem__(self, index: int) -> NodeName: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[NodeName, ...]: ...
    def __getitem__(self, index: int | slice) -> NodeName | tuple[NodeName, ...]:
        if isinstance(index, slice):
            return tuple(self)[index]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError("NodeOrder index out of range")
        for chunk in self._names:
            if index < len(chunk):
                return chunk[index]
            index -= len(chunk)
        raise AssertionError("unreachable: the length is the sum of the chunks")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NodeOrder):
            return self._len == other._len and tuple(self) == tuple(other)
        if isinstance(other, tuple):
            return self._len == len(other) and tuple(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"NodeOrder({tuple(self)!r})"

    def edit(self) -> NodeOrderEditor:
        return NodeOrderEditor(self._keys, self._names, self._maxes, self._len)


class NodeOrderEditor:
    """Copy-on-write changes to a :class:`NodeOrder`: a chunk becomes a list on its first change."""

    __slots__ = ("_keys", "_len", "_maxes", "_names")

    def __init__(
        self,
        keys: tuple[tuple[OrderKey, ...], ...],
        names: tuple[tuple[NodeName, ...], ...],
        maxes: tuple[OrderKey, ...],
        length: int,
    ) -> None:
        self._keys: list[tuple[OrderKey, ...] | list[OrderKey]] = list(keys)
        self._names: list[tuple[NodeName, ...] | list[NodeName]] = list(names)
        self._maxes = list(maxes)
        self._len = length

    def _own(self, i: int) -> tuple[list[OrderKey], list[NodeName]]:
        keys, names = self._keys[i], self._names[i]
        if isinstance(keys, tuple):
            keys = self._keys[i] = list(keys)
            names = self._names[i] = list(names)
        assert isinstance(names, list)
        return keys, names

    def insert(self, key: OrderKey, name: NodeName) -> None:
        """Insert ``name`` at ``key`` (a key already present is a caller bug: keys are unique)."""
        self._len += 1
        if not self._keys:
            self._keys.append([key])
            self._names.append([name])
            self._maxes.append(key)
            return
        i = min(bisect_left(self._maxes, key), len(self._maxes) - 1)
        keys, names = self._own(i)
        j = bisect_left(keys, key)
        keys.insert(j, key)
        names.insert(j, name)
        self._maxes[i] = keys[-1]
        if len(keys) > 2 * _CHUNK:
            self._split(i)

    def _split(self, i: int) -> None:
        # Chunks stay small, so that a change copies little.
        keys, names = self._own(i)
        half = len(keys) // 2
        self._keys[i : i + 1] = [keys[:half], keys[half:]]
        self._names[i : i + 1] = [names[:half], names[half:]]
        self._maxes[i : i + 1] = [keys[half - 1], keys[-1]]

    def remove(self, key: OrderKey) -> None:
        """Remove ``key``; KeyError if it is not there."""
        i = bisect_left(self._maxes, key)
        if i == len(self._maxes):
            raise KeyError(key)
        keys, names = self._own(i)
        j = bisect_left(keys, key)
        if j == len(keys) or keys[j] != key:
            raise KeyError(key)
        del keys[j], names[j]
        self._len -= 1
        if not keys:
            del self._keys[i], self._names[i], self._maxes[i]
            return
        self._maxes[i] = keys[-1]
        if len(keys) < _CHUNK // 2 and len(self._keys) > 1:
            # Merge a small chunk into a neighbour: the number of chunks stays about n / _CHUNK.
            left = i - 1 if i + 1 == len(self._keys) else i
            lk, ln = self._own(left)
            rk, rn = self._own(left + 1)
            lk.extend(rk)
            ln.extend(rn)
            del self._keys[left + 1], self._names[left + 1], self._maxes[left + 1]
            self._maxes[left] = lk[-1]
            if len(lk) > 2 * _CHUNK:
                self._split(left)

    def finish(self) -> NodeOrder:
        # tuple() of a tuple is that same tuple: untouched chunks are shared, not copied.
        return NodeOrder._chunked(
            tuple(map(tuple, self._keys)),
            tuple(map(tuple, self._names)),
            tuple(self._maxes),
            self._len,
        )
