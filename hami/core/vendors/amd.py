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
from hami.core.ids import DeviceID
from hami.core.model import ContainerDevice, ContainerDeviceRequest, DeviceInfo
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.requests import ContainerResources
from hami.core.snapshot import DeviceUsage
from hami.core.vendors.base import BaseVendor, Clock, Health, NodePublication, ResourceNames, VendorTraits
from hami.core.vendors.fitloop import HEALTH, SHORT, SLICES, TYPE, UUID, Rejections, no_devices
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
        nums = container.integer(self.config.resource_count_name, warnings)
        if nums is None or nums <= 0:
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
        count = required_capacity(allocatable, self.config.resource_count_name)
        return tuple(
            DeviceInfo(
                id=DeviceID(f"{node}-{AMDGPU}-{i}"),
                index=i,
                count=1,
                devmem=MI300X_MEMORY_MIB,
                devcore=100,
                type=AMDGPU,
                health=True,
                devicevendor=AMDGPU,
            )
            for i in range(device_count(count, self.config.resource_count_name))
        )

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        if not devices:
            return no_devices(ctx.vendor, request)
        out = Rejections()
        nums = request.nums
        picks: list[ContainerDevice] = []
        for i in range(len(devices) - 1, -1, -1):
            d = devices[i]
            if not d.health:
                out.add(d.id, HEALTH)
                continue
            if AMDGPU not in d.type or request.type != ctx.vendor:
                out.add(d.id, TYPE, note=f"{d.type!r}")
                continue
            if ctx.check_uuid and not ctx.selectors.uuid_allowed(d.id):
                out.add(d.id, UUID)
                continue
            if d.count <= d.used:
                out.add(d.id, SLICES, d.used, d.count)
                continue
            nums -= 1
            picks.append(
                ContainerDevice(uuid=d.id, type=AMDGPU, usedmem=MI300X_MEMORY_MIB, usedcores=0, idx=d.index)
            )
            if nums == 0:
                return ContainerFit(ok=True, devices=tuple(picks), considered=len(devices))
        if picks:
            out.reasons[SHORT] = 1
            out.raw.append((",".join(p.uuid for p in picks), SHORT, len(picks), request.nums, ""))
        return out.failed(len(devices))

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        limits = limits_of(container)
        memory = self.config.resource_memory_name
        return self.config.resource_count_name in limits or (bool(memory) and memory in limits)

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """amd k8s-device-plugin: the card count."""
        return NodePublication(annotations={}, capacity={self.config.resource_count_name: str(devices)})
