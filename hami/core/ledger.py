"""The allocation ledger: device capacity per node plus usage per pod UID (style guide §1.3, §3.3).

Usage has two sources, both keyed by pod UID:

* **committed**: decoded from a pod's ``*-devices-allocated`` annotation as the watch delivers it
  (:meth:`Ledger.commit`), or an assumption the watch has confirmed (:meth:`Ledger.confirm`);
* **assumed**: a decision this scheduler made and is still persisting (:meth:`Ledger.assume`).
  It is visible to the very next snapshot, which is what prevents double allocation. It is
  undone only by :meth:`Ledger.forget` (a definite rejection) or replaced by the committed value.

:meth:`Ledger.release` drops a pod that is gone or terminal, whatever its state. ``forget`` and
``release`` are idempotent and never raise (they are undo steps, style guide §3.4).

A pod whose annotation cannot be decoded *quarantines* its node (:meth:`Ledger.quarantine`): the
node stays unschedulable until that pod is released or committed with a readable value, because
guessing its usage as zero would let the next pod land on a device that is in fact taken (HAMi
#2958, #2876).

Snapshots are incremental: a mutation marks its node dirty and bumps the ledger generation;
:meth:`Ledger.snapshot` rebuilds only the dirty nodes, into persistent containers that share
everything else with the previous snapshot (O(changed nodes), no copy of the node map or of the
node orders), and returns the previous snapshot object unchanged when nothing moved. Nothing here
is thread-safe: the scheduler's single event loop and the "no await between snapshot and assume"
rule (style guide §3.6) serialise all access.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

from hami.core.errors import DecodeError, LedgerError
from hami.core.ids import DeviceID, NodeName, PodUID
from hami.core.mig import NO_MIG, MigUsage, account_instances
from hami.core.model import MODE_MIG, DeviceInfo, PodDevices
from hami.core.pod_annotations import decode_mig_uuid
from hami.core.scoring import node_score
from hami.core.snapshot import (
    ClusterSnapshot,
    DeviceUsage,
    NodeOrder,
    NodeSnapshot,
    NodeTable,
    summarise_all,
)


class PodState(StrEnum):
    ASSUMED = "assumed"
    COMMITTED = "committed"


@dataclass(frozen=True, slots=True, kw_only=True)
class PodUsage:
    """What the ledger holds for one pod."""

    uid: PodUID
    node: NodeName
    namespace: str
    state: PodState
    devices: PodDevices


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """A device whose accounted usage exceeds its capacity (or an impossible MIG state)."""

    node: NodeName
    device: str
    kind: str  # "tasks" | "memory" | "cores" | "mig"
    used: int = 0
    capacity: int = 0
    detail: str = ""

    def __str__(self) -> str:
        if self.kind == "mig":
            return f"{self.node}/{self.device}: {self.detail}"
        return f"{self.node}/{self.device}: {self.kind} {self.used} > {self.capacity}"


# One accounted device entry: (device id, usedmem, usedcores, vendor, MIG (geometry, slot) or None).
_Flat = tuple[DeviceID, int, int, str, "tuple[int, int] | None"]


class _Entry:
    __slots__ = ("devices", "flat", "namespace", "node", "state", "uid")

    def __init__(
        self,
        uid: PodUID,
        node: NodeName,
        namespace: str,
        state: PodState,
        devices: PodDevices,
        flat: tuple[_Flat, ...],
    ) -> None:
        self.uid = uid
        self.node = node
        self.namespace = namespace
        self.state = state
        self.devices = devices
        self.flat = flat

    def view(self) -> PodUsage:
        return PodUsage(
            uid=self.uid, node=self.node, namespace=self.namespace, state=self.state, devices=self.devices
        )


class _View(NamedTuple):
    source: DeviceInfo  # the registration the view was built from (compared by identity)
    view: DeviceUsage


class _Node:
    __slots__ = ("generation", "mig_entries", "name", "pods", "quarantine", "usage", "vendors", "views")

    def __init__(self, name: NodeName) -> None:
        self.name = name
        self.vendors: dict[str, tuple[DeviceInfo, ...]] = {}
        self.pods: dict[PodUID, None] = {}  # insertion-ordered set
        self.usage: dict[DeviceID, list[int]] = {}  # device id -> [tasks, MiB, cores]
        self.quarantine: dict[PodUID, str] = {}
        self.mig_entries = 0  # entries with a MIG suffix: only then is instance usage rebuilt
        self.views: dict[DeviceID, tuple[tuple[object, ...], _View]] = {}  # last built view per device
        self.generation = 0

    @property
    def registered(self) -> bool:
        return any(self.vendors.values())

    @property
    def empty(self) -> bool:
        return not self.registered and not self.pods and not self.quarantine


def _flatten(devices: PodDevices) -> tuple[_Flat, ...]:
    """Every device entry of a pod; raises DecodeError on a malformed MIG suffix."""
    out: list[_Flat] = []
    for vendor, per_container in devices.items():
        for container in per_container:
            for cd in container:
                if "[" in cd.uuid:
                    ref = decode_mig_uuid(cd.uuid)
                    out.append(
                        (ref.device_id, cd.usedmem, cd.usedcores, vendor, (ref.geometry, ref.instance))
                    )
                else:
                    out.append((DeviceID(cd.uuid), cd.usedmem, cd.usedcores, vendor, None))
    return tuple(out)


def _same_usage(a: tuple[_Flat, ...], b: tuple[_Flat, ...]) -> bool:
    return a == b or sorted(a, key=repr) == sorted(b, key=repr)


def _freeze(devices: PodDevices) -> PodDevices:
    return MappingProxyType({vendor: tuple(tuple(c) for c in single) for vendor, single in devices.items()})


class Ledger:
    """Capacity and usage of every node; see the module docstring for the model."""

    def __init__(self) -> None:
        self._generation = 0
        self._nodes: dict[NodeName, _Node] = {}
        self._pods: dict[PodUID, _Entry] = {}
        self._quarantined: dict[PodUID, NodeName] = {}
        self._ns_usage: dict[tuple[str, str], list[int]] = {}
        # Snapshot state: the last snapshot and its persistent parts, the nodes changed since, and
        # the score each node is ranked by in the orders.
        self._snapshot: ClusterSnapshot | None = None
        self._table = NodeTable()
        self._binpack = NodeOrder()
        self._spread = NodeOrder()
        self._dirty: set[NodeName] = set()
        self._ranked: dict[NodeName, float] = {}

    # ------------------------------------------------------------------ reading

    @property
    def generation(self) -> int:
        return self._generation

    def pod(self, uid: str) -> PodUsage | None:
        entry = self._pods.get(PodUID(uid))
        return entry.view() if entry else None

    def pods_on(self, node: str) -> tuple[PodUID, ...]:
        st = self._nodes.get(NodeName(node))
        return tuple(st.pods) if st else ()

    def assumed(self) -> tuple[PodUsage, ...]:
        """Pods still only assumed (for the reconciler's proof-based sweep)."""
        return tuple(e.view() for e in self._pods.values() if e.state is PodState.ASSUMED)

    def quarantined(self) -> Mapping[PodUID, NodeName]:
        return MappingProxyType(dict(self._quarantined))

    def namespace_usage(self, namespace: str, vendor: str) -> tuple[int, int]:
        """(MiB, cores) held by the namespace's pods of a vendor: the quota ``Used`` (spec §8)."""
        got = self._ns_usage.get((namespace, vendor))
        return (got[0], got[1]) if got else (0, 0)

    # ------------------------------------------------------------------ capacity

    def set_node_devices(
        self, node: str, devices: Iterable[DeviceInfo], *, vendor: str | None = None
    ) -> None:
        """Replace a node's registered devices (all of them, or only those of ``vendor``).

        Devices are grouped by ``devicevendor``. An empty list unregisters the node (or the vendor);
        the node's pods stay accounted and apply again when the devices come back.
        """
        name = NodeName(node)
        groups: dict[str, list[DeviceInfo]] = {}
        for info in devices:
            key = vendor if vendor is not None else info.devicevendor
            groups.setdefault(key, []).append(info)
        st = self._nodes.get(name)
        if st is None:
            if not groups:
                return
            st = self._nodes[name] = _Node(name)
        new = {k: tuple(v) for k, v in groups.items()}
        if vendor is None:
            if new == st.vendors:
                return
            st.vendors = new
        else:
            if st.vendors.get(vendor, ()) == new.get(vendor, ()):
                return
            if vendor in new:
                st.vendors[vendor] = new[vendor]
            else:
                st.vendors.pop(vendor, None)
        self._touch(st)
        self._gc(name)

    def remove_node(self, node: str) -> None:
        """The Node object is gone: drop its capacity (its pods stay until released)."""
        st = self._nodes.get(NodeName(node))
        if st is None or not st.vendors:
            return
        st.vendors = {}
        self._touch(st)
        self._gc(st.name)

    # ------------------------------------------------------------------ usage

    def assume(self, uid: str, node: str, devices: PodDevices, *, namespace: str = "") -> None:
        """Reserve a decision's devices. Raises LedgerError (state unchanged) if the pod is already
        in the ledger, the node is unknown or quarantined, a device is not on the node, or any
        device would exceed its split count, memory, cores or MIG instances."""
        pod = PodUID(uid)
        name = NodeName(node)
        if pod in self._pods:
            raise LedgerError(f"pod {uid} is already {self._pods[pod].state} on {self._pods[pod].node}")
        st = self._nodes.get(name)
        if st is None or not st.registered:
            raise LedgerError(f"cannot assume pod {uid} on {node}: node not registered")
        if st.quarantine:
            raise LedgerError(f"cannot assume pod {uid} on {node}: node quarantined")
        try:
            flat = _flatten(devices)
        except DecodeError as e:
            raise LedgerError(f"cannot assume pod {uid}: {e}") from e
        negative = [f[0] for f in flat if f[1] < 0 or f[2] < 0]
        if negative:
            raise LedgerError(f"cannot assume pod {uid}: negative memory or cores on {', '.join(negative)}")
        infos = {i.id: i for group in st.vendors.values() for i in group}
        missing = sorted({f[0] for f in flat} - infos.keys())
        if missing:
            raise LedgerError(f"cannot assume pod {uid} on {node}: no device {', '.join(missing)}")
        entry = _Entry(pod, name, namespace, PodState.ASSUMED, _freeze(devices), flat)
        self._insert(st, entry)
        problems = self._violations(st, {f[0] for f in flat})
        if problems:
            self._remove(entry)
            raise LedgerError(f"cannot assume pod {uid} on {node}: {'; '.join(map(str, problems))}")
        self._touch(st)

    def commit(self, uid: str, node: str, devices: PodDevices, *, namespace: str = "") -> bool:
        """Record a pod's usage as its annotation states it (idempotent; replaces an assumption).

        The annotation is the truth, so nothing is refused for capacity: an over-committed device
        shows up in :meth:`check_invariants`. A malformed MIG suffix makes the value unreadable:
        the node is quarantined instead and False is returned. A readable commit lifts a
        quarantine this pod had caused.
        """
        pod = PodUID(uid)
        name = NodeName(node)
        try:
            flat = _flatten(devices)
        except DecodeError as e:
            self.quarantine(node, uid, str(e))
            return False
        self._lift_quarantine(pod)
        old = self._pods.get(pod)
        if (
            old is not None
            and old.node == name
            and old.namespace == namespace
            and _same_usage(old.flat, flat)
        ):
            old.state = PodState.COMMITTED
            old.devices = _freeze(devices)
            return True
        if old is not None:
            self._drop(old)
        st = self._nodes.get(name)
        if st is None:
            st = self._nodes[name] = _Node(name)
        self._insert(st, _Entry(pod, name, namespace, PodState.COMMITTED, _freeze(devices), flat))
        self._touch(st)
        return True

    def confirm(self, uid: str) -> bool:
        """The watch saw the assumed pod with its allocation: it is now committed (idempotent).

        Returns False if the ledger does not know the pod.
        """
        entry = self._pods.get(PodUID(uid))
        if entry is None:
            return False
        entry.state = PodState.COMMITTED
        return True

    def forget(self, uid: str) -> bool:
        """Undo an assumption (definite rejection). A committed or unknown pod is left alone."""
        entry = self._pods.get(PodUID(uid))
        if entry is None or entry.state is not PodState.ASSUMED:
            return False
        self._drop(entry)
        return True

    def release(self, uid: str) -> bool:
        """The pod is gone or terminal: drop its usage and any quarantine it caused."""
        pod = PodUID(uid)
        lifted = self._lift_quarantine(pod)
        entry = self._pods.get(pod)
        if entry is None:
            return lifted
        self._drop(entry)
        return True

    def quarantine(self, node: str, uid: str, reason: str) -> None:
        """Pod ``uid`` on ``node`` carries an allocation nobody can read: stop scheduling there."""
        pod = PodUID(uid)
        name = NodeName(node)
        self._lift_quarantine(pod)
        st = self._nodes.get(name)
        if st is None:
            st = self._nodes[name] = _Node(name)
        st.quarantine[pod] = reason
        self._quarantined[pod] = name
        self._touch(st)

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> list[Violation]:
        """Every device whose usage exceeds its split count, memory or cores, and MIG conflicts."""
        out: list[Violation] = []
        for st in self._nodes.values():
            out.extend(self._violations(st))
        return out

    def _violations(self, st: _Node, only: set[DeviceID] | None = None) -> list[Violation]:
        out: list[Violation] = []
        mig_entries = self._mig_entries(st)
        for group in st.vendors.values():
            for info in group:
                if only is not None and info.id not in only:
                    continue
                used, mem, cores = st.usage.get(info.id, (0, 0, 0))
                if used > info.count:
                    out.append(
                        Violation(node=st.name, device=info.id, kind="tasks", used=used, capacity=info.count)
                    )
                if mem > info.devmem:
                    out.append(
                        Violation(node=st.name, device=info.id, kind="memory", used=mem, capacity=info.devmem)
                    )
                if cores > info.devcore:
                    out.append(
                        Violation(
                            node=st.name, device=info.id, kind="cores", used=cores, capacity=info.devcore
                        )
                    )
                entries = mig_entries.get(info.id)
                if not entries:
                    continue
                if info.mode != MODE_MIG:
                    out.append(
                        Violation(
                            node=st.name,
                            device=info.id,
                            kind="mig",
                            detail=f"MIG allocation on a {info.mode} GPU",
                        )
                    )
                    continue
                _, problems = account_instances(info.migtemplate, entries)
                out.extend(Violation(node=st.name, device=info.id, kind="mig", detail=p) for p in problems)
        return out

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> ClusterSnapshot:
        """The current state as an immutable snapshot; the same object while nothing changed."""
        if self._snapshot is not None and not self._dirty:
            return self._snapshot
        table = self._table.edit()
        binpack = self._binpack.edit()
        spread = self._spread.edit()
        ranked = self._ranked
        for name in self._dirty:
            st = self._nodes.get(name)
            view = self._build(st) if st is not None else None
            old = ranked.get(name)
            if view is None:
                table.discard(name)
                if old is not None:
                    del ranked[name]
                    binpack.remove((-old, name))
                    spread.remove((old, name))
                continue
            table[name] = view
            score = view.score
            if old == score:  # usage moved within the node's score: the orders stay
                continue
            if old is not None:
                binpack.remove((-old, name))
                spread.remove((old, name))
            ranked[name] = score
            binpack.insert((-score, name), name)
            spread.insert((score, name), name)
        self._dirty.clear()
        self._table = table.finish()
        self._binpack = binpack.finish()
        self._spread = spread.finish()
        self._snapshot = ClusterSnapshot(
            generation=self._generation,
            nodes=self._table,
            binpack_order=self._binpack,
            spread_order=self._spread,
        )
        return self._snapshot

    def _build(self, st: _Node) -> NodeSnapshot | None:
        if not st.registered:
            return None
        mig_entries = self._mig_entries(st)
        devices: list[DeviceUsage] = []
        previous = st.views
        views: dict[DeviceID, tuple[tuple[object, ...], _View]] = {}
        for group in st.vendors.values():
            for info in group:
                used, mem, cores = st.usage.get(info.id, (0, 0, 0))
                health = info.health
                mig: MigUsage = NO_MIG
                entries = mig_entries.get(info.id)
                if entries:
                    if info.mode == MODE_MIG:
                        mig, _ = account_instances(info.migtemplate, entries)
                    else:
                        health = False  # HAMi: "found a mig task running on a hami-core GPU"
                if info.mode == MODE_MIG and used > len(entries or ()):
                    # The converse: a whole-GPU task on a MIG GPU holds no instance, so the
                    # instances' cores, which Fit does not check, could over-commit the GPU.
                    health = False
                # A pod change touches a device or two: re-use the other devices' views.
                key = (used, mem, cores, health, mig)
                seen = previous.get(info.id)
                if seen is not None and seen[0] == key and seen[1].source is info:
                    views[info.id] = seen
                    devices.append(seen[1].view)
                    continue
                view = DeviceUsage(
                    id=info.id,
                    index=info.index,
                    vendor=info.devicevendor,
                    type=info.type,
                    numa=info.numa,
                    mode=info.mode,
                    health=health,
                    count=info.count,
                    used=used,
                    totalmem=info.devmem,
                    usedmem=mem,
                    totalcore=info.devcore,
                    usedcores=cores,
                    mig_geometries=info.migtemplate,
                    mig=mig,
                    pair_scores=info.pair_scores,
                    custominfo=info.custominfo,
                )
                views[info.id] = (key, _View(info, view))
                devices.append(view)
        st.views = views
        devs = tuple(devices)
        return NodeSnapshot(
            name=st.name,
            generation=st.generation,
            devices=devs,
            score=node_score(devs),
            quarantined=tuple(st.quarantine.items()),
            summaries=MappingProxyType(summarise_all(devs)),
            pods=len(st.pods),
        )

    # ------------------------------------------------------------------ internals

    def _touch(self, st: _Node) -> None:
        self._generation += 1
        st.generation = self._generation
        self._dirty.add(st.name)

    def _mig_entries(self, st: _Node) -> dict[DeviceID, list[tuple[int, int]]]:
        out: dict[DeviceID, list[tuple[int, int]]] = {}
        if not st.mig_entries:
            return out
        for uid in st.pods:
            for dev_id, _, _, _, mig in self._pods[uid].flat:
                if mig is not None:
                    out.setdefault(dev_id, []).append(mig)
        return out

    def _insert(self, st: _Node, entry: _Entry) -> None:
        self._pods[entry.uid] = entry
        st.pods[entry.uid] = None
        self._account(st, entry, 1)

    def _remove(self, entry: _Entry) -> None:
        del self._pods[entry.uid]
        st = self._nodes[entry.node]
        del st.pods[entry.uid]
        self._account(st, entry, -1)

    def _drop(self, entry: _Entry) -> None:
        self._remove(entry)
        self._touch(self._nodes[entry.node])
        self._gc(entry.node)

    def _account(self, st: _Node, entry: _Entry, sign: int) -> None:
        for dev_id, mem, cores, vendor, mig in entry.flat:
            if mig is not None:
                st.mig_entries += sign
            u = st.usage.get(dev_id)
            if u is None:
                u = st.usage[dev_id] = [0, 0, 0]
            u[0] += sign
            u[1] += sign * mem
            u[2] += sign * cores
            if u == [0, 0, 0]:
                del st.usage[dev_id]
            key = (entry.namespace, vendor)
            ns = self._ns_usage.get(key)
            if ns is None:
                ns = self._ns_usage[key] = [0, 0]
            ns[0] += sign * mem
            ns[1] += sign * cores
            if ns == [0, 0]:
                del self._ns_usage[key]

    def _lift_quarantine(self, pod: PodUID) -> bool:
        name = self._quarantined.pop(pod, None)
        if name is None:
            return False
        st = self._nodes[name]
        del st.quarantine[pod]
        self._touch(st)
        self._gc(name)
        return True

    def _gc(self, name: NodeName) -> None:
        st = self._nodes.get(name)
        if st is not None and st.empty:
            del self._nodes[name]
            self._dirty.add(name)
