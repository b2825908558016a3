"""Enflame: whole GCUs (common word ``GCU``) and shared VGCUs (common word ``Enflame``); spec §3, §11,
HAMi ``pkg/device/enflame`` (``gcu.go``, ``device.go``).

**GCU** — ``enflame.com/gcu`` (whole cards); devices from node capacity (IDs ``<node>-GCU-<i>``,
split count 1, devmem/devcore 100); a card already in use is ``ExclusiveDeviceAllocateConflict``.
Pod annotations ``hami.io/enflame-gcu-devices-to-allocate`` / ``-allocated``; health = capacity > 0.

**Enflame (VGCU)** — ``enflame.com/vgcu`` (count) and ``enflame.com/vgcu-percentage`` (the share
of one card, default 100), devices from the capacities ``enflame.com/gcu-count`` (cards) and
``enflame.com/shared-gcu`` (slices: ``factor = shared-gcu / gcu-count`` per card), each card
``devmem = 100`` "percent". Pod annotations ``hami.io/enflame-vgpu-devices-allocated`` only, plus
``enflame.com/gcu-assigned: "false"``, ``enflame.com/gcu-assigned-time`` (Unix ns) and
``enflame.com/gcu-assigned-id`` (indices of the first container's cards). Selection:
``enflame.com/use|nouse-gpuuuid``. The webhook turns a request into slices: count > 1 gets
``vgcu-percentage: 100`` and ``shared-gcu: factor × count``; one card rounds the percentage up to a
multiple of ``100 / factor`` and sets ``shared-gcu`` to the slices (limits and requests). As in
HAMi, ``factor`` is the one of the last node whose devices were read (0 before any: no rounding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from hami.core.deviceconfig import EnflameConfig
from hami.core.fit import ContainerFit, FitContext
from hami.core.model import ContainerDevice, ContainerDeviceRequest, DeviceInfo, PodSingleDevice
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.requests import ContainerResources
from hami.core.snapshot import DeviceUsage, VendorSummary
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorTraits,
    capacity_devices,
    indices,
    requested_count,
    unix_nanos,
)
from hami.core.vendors.fitloop import EXCL, TYPE, Rejections, whole_device_fit
from hami.core.vendors.podspec import (
    JsonObject,
    capacity,
    device_count,
    limits_of,
    quantity_value,
    required_capacity,
    writable,
)

GCU: Final = "GCU"
ENFLAME: Final = "Enflame"
GCU_POD_KEYS: Final = PodDeviceKeys(
    to_allocate="hami.io/enflame-gcu-devices-to-allocate", allocated="hami.io/enflame-gcu-devices-allocated"
)
VGCU_POD_KEYS: Final = PodDeviceKeys(to_allocate=None, allocated="hami.io/enflame-vgpu-devices-allocated")
USE_UUID: Final = "enflame.com/use-gpuuuid"
NOUSE_UUID: Final = "enflame.com/nouse-gpuuuid"
ASSIGNED: Final = "enflame.com/gcu-assigned"
ASSIGNED_TIME: Final = "enflame.com/gcu-assigned-time"
ASSIGNED_ID: Final = "enflame.com/gcu-assigned-id"
SHARED_GCU: Final = "enflame.com/shared-gcu"
GCU_COUNT: Final = "enflame.com/gcu-count"
DEFAULT_FACTOR: Final = 4  # slices per card the mock plugin offers


class GcuVendor(BaseVendor):
    __slots__ = ("config",)

    def __init__(self, config: EnflameConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else EnflameConfig()
        super().__init__(
            name=GCU,
            names=ResourceNames(count=self.config.resource_name_gcu),
            pod_keys=GCU_POD_KEYS,
            traits=VendorTraits(health=Health.CAPACITY),
            clock=clock,
        )

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        nums = requested_count(container, self.config.resource_name_gcu, warnings)
        if nums is None:
            return None
        return ContainerDeviceRequest(nums=nums, type=GCU, memreq=100, mem_percentage_req=100, coresreq=100)

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        name = self.config.resource_name_gcu
        count = device_count(required_capacity(allocatable, name), name)
        return capacity_devices(node, GCU, count, vendor=GCU, split=1, devmem=100)

    def prefilter(self, summary: VendorSummary | None, request: ContainerDeviceRequest) -> bool:
        return summary is None or request.nums <= summary.available

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        """HAMi's GCU Fit: any card nobody uses (no memory/core arithmetic)."""

        def admit(d: DeviceUsage, out: Rejections) -> bool:
            if request.type != GCU:
                out.add(d.id, TYPE, note=f"{d.type!r}")
                return False
            if d.used > 0:
                out.add(d.id, EXCL, d.used)
                return False
            return True

        return whole_device_fit(
            devices, request, ctx, admit=admit, vendor=GCU, usedmem=request.memreq, usedcores=request.coresreq
        )

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """enflame gcu-device-plugin: the whole-card count."""
        return NodePublication(annotations={}, capacity={self.config.resource_name_gcu: str(devices)})


class VgcuVendor(BaseVendor):
    __slots__ = ("_factor", "config")

    use_uuid_key = USE_UUID
    nouse_uuid_key = NOUSE_UUID

    def __init__(self, config: EnflameConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else EnflameConfig()
        self._factor = 0
        super().__init__(
            name=ENFLAME,
            names=ResourceNames(
                count=self.config.resource_name_vgcu,
                memory=self.config.resource_name_vgcu_percentage,
                other=(SHARED_GCU,),
            ),
            pod_keys=VGCU_POD_KEYS,
            traits=VendorTraits(health=Health.ALWAYS),
            clock=clock,
        )

    @property
    def factor(self) -> int:
        """Slices per card of the last node read (HAMi keeps it in the device object)."""
        return self._factor

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        cfg = self.config
        nums = requested_count(container, cfg.resource_name_vgcu, warnings)
        if nums is None:
            return None
        percentage = container.integer(cfg.resource_name_vgcu_percentage, warnings)
        return ContainerDeviceRequest(
            nums=nums, type=ENFLAME, memreq=100 if percentage is None else percentage, mem_percentage_req=0
        )

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        cards = required_capacity(allocatable, GCU_COUNT)
        shared = capacity(allocatable, SHARED_GCU) or 0
        self._factor = int(shared / cards)  # Go int(int64 / int64): truncation toward zero
        return capacity_devices(
            node, "enflame", device_count(cards, GCU_COUNT), vendor=ENFLAME, split=100, devmem=100
        )

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        cfg = self.config
        limits = limits_of(container)
        if cfg.resource_name_vgcu not in limits:
            return False
        count = quantity_value(limits[cfg.resource_name_vgcu], f"limits[{cfg.resource_name_vgcu!r}]")
        factor = self._factor
        target = writable(container, "limits")
        if count > 1:
            target[cfg.resource_name_vgcu_percentage] = "100"
            target[SHARED_GCU] = str(factor * count)
            return True
        raw = limits.get(cfg.resource_name_vgcu_percentage)
        percentage = (
            100 if raw is None else quantity_value(raw, f"limits[{cfg.resource_name_vgcu_percentage!r}]")
        )
        percentage = max(percentage, 1)
        if factor <= 0:
            return True  # HAMi: 100 / 0 is +Inf and the rounding loop never runs
        step = 100 / factor
        near = int(percentage / step)  # only slices around percentage/step can match; factor may be huge
        for i in range(max(near - 1, 0), min(near + 2, factor)):
            if step * i < percentage <= step * (i + 1):
                rounded = str(int(step * (i + 1)))
                requests = writable(container, "requests")
                for section in (target, requests):
                    section[cfg.resource_name_vgcu_percentage] = rounded
                    section[SHARED_GCU] = str(i + 1)
                break
        return True

    def extra_annotations(
        self, assigned: PodSingleDevice, *, pod: Mapping[str, object] | None, node: str, now: datetime
    ) -> dict[str, str]:
        out = {ASSIGNED: "false", ASSIGNED_TIME: unix_nanos(now)}
        if assigned and assigned[0]:
            out[ASSIGNED_ID] = indices(assigned[0])
        return out

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """enflame gcushare-device-plugin: cards and slices."""
        return NodePublication(
            annotations={}, capacity={GCU_COUNT: str(devices), SHARED_GCU: str(devices * DEFAULT_FACTOR)}
        )
