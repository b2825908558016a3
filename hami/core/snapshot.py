"""Immutable, generation-stamped views of the allocation ledger (style guide §3.3).

A :class:`ClusterSnapshot` is what one scheduling decision reads. It is never patched: the ledger
builds a new one after a change, re-using every :class:`NodeSnapshot` whose node did not change (as
kube-scheduler's ``UpdateSnapshot``). Field names follow HAMi's ``DeviceUsage`` in snake_case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

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
        if not d.health or d.count <= d.used:
            continue
        available += 1
        if d.used == 0 or d.totalcore != 100:
            exclusive += 1
        max_mem = max(max_mem, d.totalmem - d.usedmem)
        max_cores = max(max_cores, d.totalcore - d.usedcores)
    return VendorSummary(
        devices=total,
        available=available,
        exclusive=exclusive,
        mig=mig,
        max_free_mem=max_mem,
        max_free_cores=max_cores,
    )


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
    binpack_order: tuple[NodeName, ...] = ()
    spread_order: tuple[NodeName, ...] = ()

    def node(self, name: str) -> NodeSnapshot | None:
        return self.nodes.get(NodeName(name))


EMPTY_SNAPSHOT: Final = ClusterSnapshot(generation=0, nodes=MappingProxyType({}))
