"""Iluvatar CoreX (one vendor per chip, common word = ``commonWord``, e.g. ``BI-V100``; needs
``--enable-iluvatar``; spec §3, §11, HAMi ``pkg/device/iluvatar``).

* Requests: ``iluvatar.ai/<chip>-vgpu`` (count), ``iluvatar.ai/<chip>.vMem`` in **units of 256 MiB**,
  ``iluvatar.ai/<chip>.vCore`` (percent, default 0). No memory → 100 % of the card.
* Devices: ``hami.io/node-<cw>-register`` (legacy string); health: ``hami.io/node-handshake-<cw>``.
* Pod annotations: ``hami.io/<cw>-devices-to-allocate`` / ``-allocated``.
* Selection: ``hami.io/use-<cw>-uuid``, ``hami.io/no-use-<cw>-uuid``. Lock: ``hami.io/mutex.lock``.
* Webhook: for count > 1 the cores limit becomes ``count × 100``; env ``SOL_CONTINER_NAME`` (sic)
  = container name is added when absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

from hami.core import keys
from hami.core.deviceconfig import IluvatarConfig
from hami.core.errors import ConfigError
from hami.core.model import ContainerDeviceRequest, DeviceInfo
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.requests import ContainerResources
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorTraits,
    reported,
    requested_count,
    share_request,
)
from hami.core.vendors.hygon import legacy_devices, legacy_register
from hami.core.vendors.podspec import JsonObject, limits_of, quantity_value, set_env, writable

MEMORY_UNIT_MIB: Final = 256
CONTAINER_NAME_ENV: Final = "SOL_CONTINER_NAME"  # HAMi's spelling, kept for compatibility
DEFAULT_MEMORY_MIB: Final = 32768
SPLIT_COUNT: Final = 4


class IluvatarVendor(BaseVendor):
    __slots__ = ("config", "handshake_key", "register_key")

    def __init__(self, config: IluvatarConfig, *, clock: Clock | None = None) -> None:
        if not config.common_word:
            raise ConfigError("iluvatars[].commonWord", "must not be empty")
        self.config = config
        word = config.common_word
        self.register_key = f"hami.io/node-{word}-register"
        self.handshake_key = f"hami.io/node-handshake-{word}"
        super().__init__(
            name=word,
            names=ResourceNames(
                count=config.resource_count_name,
                memory=config.resource_memory_name,
                cores=config.resource_core_name,
            ),
            pod_keys=PodDeviceKeys(
                to_allocate=f"hami.io/{word}-devices-to-allocate",
                allocated=f"hami.io/{word}-devices-allocated",
            ),
            traits=VendorTraits(
                health=Health.HANDSHAKE,
                lock_key=keys.NODE_LOCK,
                handshake_key=self.handshake_key,
                register_key=self.register_key,
                handshake_device_plugin_keyword=False,
            ),
            clock=clock,
        )

    def uuid_keys(self) -> tuple[str, str]:
        return f"hami.io/use-{self.name}-uuid", f"hami.io/no-use-{self.name}-uuid"

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        cfg = self.config
        nums = requested_count(container, cfg.resource_count_name, warnings)
        if nums is None:
            return None
        memory = (container.integer(cfg.resource_memory_name, warnings) or 0) * MEMORY_UNIT_MIB
        cores = container.integer(cfg.resource_core_name, warnings)
        return share_request(self.name, nums, memory=memory, cores=cores or 0)

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        return legacy_register(annotations, self.register_key, self.name)

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        cfg = self.config
        limits = limits_of(container)
        if cfg.resource_count_name not in limits:
            return False
        count = quantity_value(limits[cfg.resource_count_name], f"limits[{cfg.resource_count_name!r}]")
        if count > 1 and cfg.resource_core_name:
            writable(container, "limits")[cfg.resource_core_name] = str(count * 100)
        name = container.get("name")
        if isinstance(name, str) and name:
            set_env(container, CONTAINER_NAME_ENV, name)
        return True

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """iluvatar gpu-manager: legacy register (type = the chip's common word) + handshake."""
        memory = memory_mib if memory_mib is not None else DEFAULT_MEMORY_MIB
        register = legacy_devices(
            node, self.name, devices, model=self.name, memory_mib=memory, split=SPLIT_COUNT
        )
        return NodePublication(
            annotations={self.register_key: register, self.handshake_key: reported(now)} if devices else {},
            capacity={self.config.resource_count_name: str(devices * SPLIT_COUNT)},
        )
