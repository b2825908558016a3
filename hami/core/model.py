"""Frozen value objects shared by every layer (HAMi's DeviceInfo, ContainerDevice, requests).

Field names follow HAMi's Go structs in snake_case so that the wire codecs in
``hami.core.annotations`` map them one to one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from hami.core.ids import DeviceID, Vendor

NVIDIA: Final = Vendor("NVIDIA")

MODE_HAMI_CORE: Final = "hami-core"
MODE_MIG: Final = "mig"
MODE_MPS: Final = "mps"

# Sentinel used by HAMi for "gpumem-percentage not given" (spec §5.1).
PERCENTAGE_UNSET: Final = 101


@dataclass(frozen=True, slots=True, kw_only=True)
class MigTemplate:
    name: str
    memory: int  # MiB
    core: int
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInfo:
    """One registered physical device of a node (HAMi ``DeviceInfo``, spec §4.1/§4.4)."""

    id: DeviceID
    index: int = 0
    count: int = 0  # max concurrent tasks (deviceSplitCount)
    devmem: int = 0  # MiB (already scaled by deviceMemoryScaling)
    devcore: int = 0  # normally 100
    type: str = ""  # model string, e.g. "NVIDIA A10"
    numa: int = 0
    mode: str = ""  # hami-core | mig | mps
    health: bool = False
    devicevendor: str = ""  # vendor common word, filled by the scheduler
    migtemplate: tuple[tuple[MigTemplate, ...], ...] = ()
    custominfo: Mapping[str, object] = field(default_factory=dict)
    # Pair scores to other devices of the node (topology-aware policy), uuid -> score.
    pair_scores: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerDevice:
    """One device assigned to one container (HAMi ``ContainerDevice``, spec §4.5)."""

    uuid: str  # device ID, possibly with a MIG suffix "[g-i]"
    type: str  # vendor common word, e.g. "NVIDIA"
    usedmem: int  # MiB
    usedcores: int
    idx: int = 0  # device index on the node; not serialised


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerDeviceRequest:
    """What one container asks of one vendor (HAMi ``ContainerDeviceRequest``, spec §5.1)."""

    nums: int
    type: str
    memreq: int  # MiB; 0 = not given
    mem_percentage_req: int = PERCENTAGE_UNSET  # 101 = unset
    coresreq: int = 0


# Per container, the devices assigned (one tuple per container, in container order).
ContainerDevices = tuple[ContainerDevice, ...]
PodSingleDevice = tuple[ContainerDevices, ...]
# Vendor common word -> per-container assignment.
PodDevices = Mapping[str, PodSingleDevice]
