"""AMD GPUs, whole cards (common word ``AMDGPU``, new in v2.8; spec §3, §11, HAMi ``pkg/device/amd``).

* Requests: ``amd.com/gpu`` (whole cards of 192000 MiB, an MI300X; the optional memory resource
  only marks the container as an AMD one in the webhook).
* Devices from node **capacity**: ``amd.com/gpu`` cards of 192000 MiB, split count 1, IDs
  ``<node>-AMDGPU-<i>``.
* Fit: the shared loop without memory/core checks: type, UUID, split count.
* Pod annotations: ``hami.io/amd-devices-allocated`` only. Selection ``amd.com/use-gpu-uuid``,
  ``amd.com/nouse-gpu-uuid``. No lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from hami.core.deviceconfig import AMDConfig
from hami.core.fit import ContainerFit, FitContext
from hami.core.model import ContainerDevice, ContainerDeviceRequest, DeviceInfo
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.requests import ContainerResources
from hami.core.snapshot import DeviceUsage
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorTraits,
    capacity_devices,
    requested_count,
)
from hami.core.vendors.fitloop import SLICES, TYPE, UUID, Rejections, whole_device_fit
from hami.core.vendors.podspec import JsonObject, device_count, limits_of, required_capacity

AMDGPU: Final = "AMDGPU"
POD_KEYS: Final = PodDeviceKeys(to_allocate=None, allocated="hami.io/amd-devices-allocated")
USE_UUID: Final = "amd.com/use-gpu-uuid"
NOUSE_UUID: Final = "amd.com/nouse-gpu-uuid"
MI300X_MEMORY_MIB: Final = 192000


class AmdVendor(BaseVendor):
    __slots__ = ("config",)

    use_uuid_key = USE_UUID
    nouse_uuid_key = NOUSE_UUID

    def __init__(self, config: AMDConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else AMDConfig()
        super().__init__(
            name=AMDGPU,
            names=ResourceNames(
                count=self.config.resource_count_name, memory=self.config.resource_memory_name
            ),
            pod_keys=POD_KEYS,
            traits=VendorTraits(health=Health.ALWAYS),
            clock=clock,
        )

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        nums = requested_count(container, self.config.resource_count_name, warnings)
        if nums is None:
            return None
        return ContainerDeviceRequest(
            nums=nums, type=AMDGPU, memreq=MI300X_MEMORY_MIB, mem_percentage_req=0, coresreq=0
        )

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        name = self.config.resource_count_name
        count = device_count(required_capacity(allocatable, name), name)
        return capacity_devices(node, AMDGPU, count, vendor=AMDGPU, split=1, devmem=MI300X_MEMORY_MIB)

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        def admit(d: DeviceUsage, out: Rejections) -> bool:
            if AMDGPU not in d.type or request.type != ctx.vendor:
                out.add(d.id, TYPE, note=f"{d.type!r}")
                return False
            if ctx.check_uuid and not ctx.selectors.uuid_allowed(d.id):
                out.add(d.id, UUID)
                return False
            if d.count <= d.used:
                out.add(d.id, SLICES, d.used, d.count)
                return False
            return True

        return whole_device_fit(
            devices, request, ctx, admit=admit, vendor=AMDGPU, usedmem=MI300X_MEMORY_MIB, usedcores=0
        )

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        limits = limits_of(container)
        memory = self.config.resource_memory_name
        return self.config.resource_count_name in limits or (bool(memory) and memory in limits)

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """amd k8s-device-plugin: the card count."""
        return NodePublication(annotations={}, capacity={self.config.resource_count_name: str(devices)})
