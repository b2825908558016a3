"""Moore Threads (common word ``Mthreads``; spec §3, §11, HAMi ``pkg/device/mthreads``).

* Requests: ``mthreads.com/vgpu`` (count), ``mthreads.com/sgpu-memory`` in **units of 512 MiB** and
  ``mthreads.com/sgpu-core`` (16 per GPU), both for the whole container and divided by the count.
* Devices from node **capacity**: one GPU per 16 ``sgpu-core``, ``devmem = sgpu-memory × 512 × 16 /
  sgpu-core`` MiB, devcore 16, split count 100, IDs ``<node>-mthreads-<i>``.
* Pod annotations: ``hami.io/mthreads-vgpu-devices-allocated`` only, plus ``mthreads.com/gpu-index``
  (device indices of the last container holding GPUs), ``mthreads.com/predicate-node`` and
  ``mthreads.com/predicate-time`` (Unix ns). All of a pod's containers must share one GPU.
* Selection: ``mthreads.ai/use|nouse-gpuuuid``. No lock.
* Webhook: count > 1, or one GPU without a memory limit, becomes whole GPUs (cores ``16 × count``,
  memory ``96 × count``; count > 1 also sets the pod annotation ``mthreads.com/request-gpu-num``);
  a memory limit outside {1, 2, 4, 8, 16, 32, 64, 96} is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

from hami.core.deviceconfig import MthreadsConfig
from hami.core.model import ContainerDeviceRequest, DeviceInfo, PodSingleDevice
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.requests import ContainerResources
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorAdmissionError,
    VendorTraits,
    capacity_devices,
    last_indices,
    requested_count,
    unix_nanos,
)
from hami.core.vendors.fitloop import FitRules, go_div
from hami.core.vendors.podspec import (
    JsonObject,
    capacity,
    device_count,
    limits_of,
    pod_annotations,
    quantity_int,
    quantity_value,
    required_capacity,
    writable,
)

MTHREADS: Final = "Mthreads"
POD_KEYS: Final = PodDeviceKeys(to_allocate=None, allocated="hami.io/mthreads-vgpu-devices-allocated")
USE_UUID: Final = "mthreads.ai/use-gpuuuid"
NOUSE_UUID: Final = "mthreads.ai/nouse-gpuuuid"
GPU_INDEX: Final = "mthreads.com/gpu-index"
PREDICATE_NODE: Final = "mthreads.com/predicate-node"
PREDICATE_TIME: Final = "mthreads.com/predicate-time"
REQUEST_GPU_NUM: Final = "mthreads.com/request-gpu-num"
CORES_PER_GPU: Final = 16
MEMORY_PER_GPU: Final = 96  # units of 512 MiB
MEMORY_UNIT_MIB: Final = 512
LEGAL_MEMORY: Final = frozenset({1, 2, 4, 8, 16, 32, 64, 96})
DEFAULT_MEMORY_MIB: Final = 49152  # MTT S4000
VGPU_PER_GPU: Final = 8


class MthreadsVendor(BaseVendor):
    __slots__ = ("config",)

    use_uuid_key = USE_UUID
    nouse_uuid_key = NOUSE_UUID
    fit_rules = FitRules(same_device_as_earlier=True)

    def __init__(self, config: MthreadsConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else MthreadsConfig()
        super().__init__(
            name=MTHREADS,
            names=ResourceNames(
                count=self.config.resource_count_name,
                memory=self.config.resource_memory_name,
                cores=self.config.resource_core_name,
            ),
            pod_keys=POD_KEYS,
            traits=VendorTraits(health=Health.ALWAYS),
            clock=clock,
        )

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        cfg = self.config
        nums = requested_count(container, cfg.resource_count_name, warnings)
        if nums is None:
            return None
        memory = (container.integer(cfg.resource_memory_name, warnings) or 0) * MEMORY_UNIT_MIB
        cores = container.integer(cfg.resource_core_name, warnings) or 0
        return ContainerDeviceRequest(
            nums=nums,
            type=MTHREADS,
            memreq=go_div(memory, nums),
            mem_percentage_req=100 if memory == 0 else 0,
            coresreq=go_div(cores, nums),
        )

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        cores = required_capacity(allocatable, self.config.resource_core_name)
        memory = capacity(allocatable, self.config.resource_memory_name) or 0
        devmem = memory * MEMORY_UNIT_MIB * CORES_PER_GPU // cores
        gpus = device_count((cores + CORES_PER_GPU - 1) // CORES_PER_GPU, self.config.resource_core_name)
        return capacity_devices(
            node, "mthreads", gpus, vendor=MTHREADS, split=100, devmem=devmem, devcore=CORES_PER_GPU
        )

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        cfg = self.config
        limits = limits_of(container)
        if cfg.resource_count_name not in limits:
            return False
        count = quantity_value(limits[cfg.resource_count_name], f"limits[{cfg.resource_count_name!r}]")
        if count > 1 or cfg.resource_memory_name not in limits:
            target = writable(container, "limits")
            target[cfg.resource_core_name] = str(count * CORES_PER_GPU)
            target[cfg.resource_memory_name] = str(count * MEMORY_PER_GPU)
            if count > 1:
                annotations = pod_annotations(pod, create=True)
                assert annotations is not None
                annotations[REQUEST_GPU_NUM] = str(count)
            return True
        memory = quantity_int(limits[cfg.resource_memory_name])
        if memory not in LEGAL_MEMORY:
            raise VendorAdmissionError(
                "sGPU memory request value is invalid, valid values are [1, 2, 4, 8, 16, 32, 64, 96]"
            )
        return True

    def extra_annotations(
        self, assigned: PodSingleDevice, *, pod: Mapping[str, object] | None, node: str, now: datetime
    ) -> dict[str, str]:
        index = last_indices(assigned)
        if index is None:
            return {}
        out = {GPU_INDEX: index, PREDICATE_TIME: unix_nanos(now)}
        if node:  # HAMi copies hami.io/vgpu-node, which the caller passes as ``node``
            out[PREDICATE_NODE] = node
        return out

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """mthreads gpu-device-plugin (sGPU mode): vGPU count, sgpu-core (16 per GPU), sgpu-memory
        in 512 MiB units."""
        memory = memory_mib if memory_mib is not None else DEFAULT_MEMORY_MIB
        cfg = self.config
        return NodePublication(
            annotations={},
            capacity={
                cfg.resource_count_name: str(devices * VGPU_PER_GPU),
                cfg.resource_core_name: str(devices * CORES_PER_GPU),
                cfg.resource_memory_name: str(devices * (memory // MEMORY_UNIT_MIB)),
            },
        )
