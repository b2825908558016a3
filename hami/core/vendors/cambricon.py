"""Cambricon MLU (common word ``MLU``; spec §11, HAMi ``pkg/device/cambricon``).

* Requests: ``cambricon.com/vmlu`` (count), ``cambricon.com/mlu.smlu.vmemory`` in **units of 256
  MiB**, ``cambricon.com/mlu.smlu.vcore`` (percent, default 100). No memory → 100 % of the card.
* Devices come from node **capacity**: one device per 100 ``vcore``, ``devmem = vmemory × 256 × 100 /
  vcore`` MiB, split count 100, IDs ``<node>-cambricon-mlu-<i>``, all healthy.
* Pod annotations: ``hami.io/cambricon-mlu-devices-to-allocate`` / ``-allocated``, plus
  ``CAMBRICON_DSMLU_ASSIGNED: "false"`` and ``CAMBRICON_DSMLU_PROFILE: <idx>_<cores>_<mem/256>`` of
  the first device (HAMi reads ``devlist[0][0]``, which panics when the first container holds no
  MLU; we take the first container that has one).
* Selection: ``cambricon.com/use|nouse-gpuuuid``. ``cambricon.com/use|nouse-mlutype`` exist but
  v2.8.0's Fit never reads them (every capacity device has type ``MLU``), so neither do we.
* Lock: its own ``cambricon.com/dsmlu.lock`` (RFC 3339 time, taken over after 2 minutes).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from hami.core.deviceconfig import CambriconConfig
from hami.core.model import ContainerDeviceRequest, DeviceInfo, PodSingleDevice
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.requests import ContainerResources
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorTraits,
    capacity_devices,
    first_device,
    requested_count,
    share_request,
)
from hami.core.vendors.podspec import capacity, device_count, required_capacity

MLU: Final = "MLU"
MEMORY_UNIT_MIB: Final = 256
POD_KEYS: Final = PodDeviceKeys(
    to_allocate="hami.io/cambricon-mlu-devices-to-allocate",
    allocated="hami.io/cambricon-mlu-devices-allocated",
)
DSMLU_LOCK: Final = "cambricon.com/dsmlu.lock"
DSMLU_PROFILE: Final = "CAMBRICON_DSMLU_PROFILE"
DSMLU_ASSIGNED: Final = "CAMBRICON_DSMLU_ASSIGNED"
USE_TYPE: Final = "cambricon.com/use-mlutype"
NOUSE_TYPE: Final = "cambricon.com/nouse-mlutype"
USE_UUID: Final = "cambricon.com/use-gpuuuid"
NOUSE_UUID: Final = "cambricon.com/nouse-gpuuuid"
DEFAULT_MEMORY_MIB: Final = 24576  # MLU370-X4
VMLU_PER_CARD: Final = 10  # virtual MLUs the mock plugin offers per card


class CambriconVendor(BaseVendor):
    __slots__ = ("config",)

    use_uuid_key = USE_UUID
    nouse_uuid_key = NOUSE_UUID

    def __init__(self, config: CambriconConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else CambriconConfig()
        super().__init__(
            name=MLU,
            names=ResourceNames(
                count=self.config.resource_count_name,
                memory=self.config.resource_memory_name,
                cores=self.config.resource_core_name,
            ),
            pod_keys=POD_KEYS,
            traits=VendorTraits(health=Health.ALWAYS, lock_key=DSMLU_LOCK, lock_expiry=timedelta(minutes=2)),
            clock=clock,
        )

    @property
    def selection_keys(self) -> tuple[str, ...]:
        return (USE_TYPE, NOUSE_TYPE, USE_UUID, NOUSE_UUID)

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        cfg = self.config
        nums = requested_count(container, cfg.resource_count_name, warnings)
        if nums is None:
            return None
        memory = (container.integer(cfg.resource_memory_name, warnings) or 0) * MEMORY_UNIT_MIB
        cores = container.integer(cfg.resource_core_name, warnings)
        return share_request(MLU, nums, memory=memory, cores=100 if cores is None else cores)

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        cards = required_capacity(allocatable, self.config.resource_core_name)
        memory = capacity(allocatable, self.config.resource_memory_name) or 0
        devmem = memory * MEMORY_UNIT_MIB * 100 // cards
        count = device_count((cards + 99) // 100, self.config.resource_core_name)
        return capacity_devices(node, "cambricon-mlu", count, vendor=MLU, split=100, devmem=devmem)

    def extra_annotations(
        self, assigned: PodSingleDevice, *, pod: Mapping[str, object] | None, node: str, now: datetime
    ) -> dict[str, str]:
        first = first_device(assigned)
        assert first is not None  # allocation_annotations only calls us with a device
        return {
            DSMLU_ASSIGNED: "false",
            DSMLU_PROFILE: f"{first.idx}_{first.usedcores}_{first.usedmem // MEMORY_UNIT_MIB}",
        }

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """cambricon-device-plugin in dynamic-smlu mode: vMLU count, vcore 100 per card, vmemory in
        256 MiB units."""
        memory = memory_mib if memory_mib is not None else DEFAULT_MEMORY_MIB
        cfg = self.config
        return NodePublication(
            annotations={},
            capacity={
                cfg.resource_count_name: str(devices * VMLU_PER_CARD),
                cfg.resource_core_name: str(devices * 100),
                cfg.resource_memory_name: str(devices * (memory // MEMORY_UNIT_MIB)),
            },
        )
