"""Hygon DCU (common word ``DCU``; spec §4.4, §7.4, §11, HAMi ``pkg/device/hygon``).

* Requests: ``hygon.com/dcunum`` (count), ``hygon.com/dcumem`` (MiB, × ``memoryFactor`` when > 1),
  ``hygon.com/dcucores`` (percent, default 100). No memory → 100 % of the card.
* Devices: ``hami.io/node-dcu-register`` in the **legacy** ``id,count,devmem,devcore,type,numa,
  health[,index,mode]:`` form; missing → ``annos not found``, empty → ``no gpu found on node``.
  Health: the ``hami.io/node-handshake-dcu`` handshake.
* Pod annotations: ``hami.io/dcu-devices-to-allocate`` / ``-allocated``.
* Selection: ``hygon.com/use|nouse-dcutype`` (case-insensitive substring of the device type, as
  NVIDIA's gputype) and ``hygon.com/use|nouse-gpuuuid``. Lock: ``hami.io/mutex.lock``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

from hami.core import keys
from hami.core.deviceconfig import HygonConfig
from hami.core.ids import DeviceID
from hami.core.model import MODE_HAMI_CORE, ContainerDeviceRequest, DeviceInfo
from hami.core.node_annotations import NO_GPU_ERROR, decode_node_devices_legacy, encode_node_devices_legacy
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.requests import ContainerResources
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorTraits,
    registered_devices,
    reported,
    requested_count,
    share_request,
)
from hami.core.vendors.fitloop import FitRules

DCU: Final = "DCU"
REGISTER: Final = "hami.io/node-dcu-register"
HANDSHAKE: Final = "hami.io/node-handshake-dcu"
POD_KEYS: Final = PodDeviceKeys(
    to_allocate="hami.io/dcu-devices-to-allocate", allocated="hami.io/dcu-devices-allocated"
)
USE_TYPE: Final = "hygon.com/use-dcutype"
NOUSE_TYPE: Final = "hygon.com/nouse-dcutype"
USE_UUID: Final = "hygon.com/use-gpuuuid"
NOUSE_UUID: Final = "hygon.com/nouse-gpuuuid"
DEFAULT_MODEL: Final = "DCU-Z100L"
DEFAULT_MEMORY_MIB: Final = 32768
SPLIT_COUNT: Final = 4


def legacy_register(annotations: Mapping[str, str], key: str, vendor: str) -> tuple[DeviceInfo, ...]:
    """A legacy register annotation as HAMi's DCU/Iluvatar ``GetNodeDevices`` reads it."""
    return registered_devices(
        annotations, key, vendor, decode=decode_node_devices_legacy, empty_error=NO_GPU_ERROR
    )


def legacy_devices(node: str, prefix: str, devices: int, *, model: str, memory_mib: int, split: int) -> str:
    """The register value a legacy-format device plugin writes for ``devices`` mock cards."""
    return encode_node_devices_legacy(
        DeviceInfo(
            id=DeviceID(f"{prefix}-{node}-{i}"),
            index=i,
            count=split,
            devmem=memory_mib,
            devcore=100,
            type=model,
            numa=0 if i < (devices + 1) // 2 else 1,
            mode=MODE_HAMI_CORE,
            health=True,
        )
        for i in range(devices)
    )


class HygonVendor(BaseVendor):
    __slots__ = ("config",)

    use_uuid_key = USE_UUID
    nouse_uuid_key = NOUSE_UUID
    use_type_key = USE_TYPE
    nouse_type_key = NOUSE_TYPE
    fit_rules = FitRules(type_selectors=True, type_note=f"{USE_TYPE}/{NOUSE_TYPE}")

    def __init__(self, config: HygonConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else HygonConfig()
        super().__init__(
            name=DCU,
            names=ResourceNames(
                count=self.config.resource_count_name,
                memory=self.config.resource_memory_name,
                cores=self.config.resource_core_name,
            ),
            pod_keys=POD_KEYS,
            traits=VendorTraits(
                health=Health.HANDSHAKE,
                lock_key=keys.NODE_LOCK,
                handshake_key=HANDSHAKE,
                register_key=REGISTER,
            ),
            clock=clock,
        )

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        cfg = self.config
        nums = requested_count(container, cfg.resource_count_name, warnings)
        if nums is None:
            return None
        memory = container.integer(cfg.resource_memory_name, warnings) or 0
        if cfg.memory_factor > 1:
            memory *= cfg.memory_factor
        cores = container.integer(cfg.resource_core_name, warnings)
        return share_request(DCU, nums, memory=memory, cores=100 if cores is None else cores)

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        return legacy_register(annotations, REGISTER, DCU)

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """hygon dcu-vgpu-device-plugin: legacy register + ``Reported`` handshake, ``dcunum`` count
        (split) and, as the mock-device-plugin publishes it, ``dcumem``."""
        memory = memory_mib if memory_mib is not None else DEFAULT_MEMORY_MIB
        register = legacy_devices(
            node, "DCU", devices, model=DEFAULT_MODEL, memory_mib=memory, split=SPLIT_COUNT
        )
        factor = max(self.config.memory_factor, 1)
        return NodePublication(
            annotations={REGISTER: register, HANDSHAKE: reported(now)} if devices else {},
            capacity={
                self.config.resource_count_name: str(devices * SPLIT_COUNT),
                self.config.resource_memory_name: str(devices * memory // factor),
            },
        )
