"""Huawei Ascend vNPU (one vendor per ``vnpus[]`` template set, common word e.g. ``Ascend910B3`` or
``Ascend310P``; needs ``--enable-ascend``; spec §3, §9, §11, HAMi ``pkg/device/ascend``).

* Requests: ``huawei.com/<cw>`` (count), ``huawei.com/<cw>-memory`` (MiB, × ``memoryFactor``), rounded
  **up** to the smallest template that holds it, else to ``memoryAllocatable`` when it is at most
  ``memoryCapacity``, else 0 (= whole card). Cores are never requested.
* Devices: ``hami.io/node-register-<cw>`` (JSON, as NVIDIA's, with ``custominfo``); health: the
  ``hami.io/node-handshake-<cw>`` handshake. The Fit gets every device whose type *contains* the
  common word (HAMi's rule), so ``Ascend910B4`` requests also see ``Ascend910B4-1`` devices.
* Pod annotations: ``hami.io/<cw>-devices-to-allocate`` / ``-allocated``, ``predicate-time`` (Unix
  seconds) and ``huawei.com/<cw>``: JSON ``[{"UUID":..,"temp":<template name>}]`` (``temp`` omitted
  for a whole card).
* Selection: ``hami.io/use-<cw>-uuid``, ``hami.io/no-use-<cw>-uuid``. Lock: ``hami.io/mutex.lock``.
* ScoreNode (910 series only): ``10 × Σ_containers (largest group of picked devices sharing one
  custominfo NetworkID / devices picked)``; 0 when a picked device has no NetworkID.
* Webhook: the memory limit is rounded as above (default ``memoryAllocatable``) and mirrored into
  requests; an impossible size, or a template size for more than one device, is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Final

from hami.core import gojson, keys
from hami.core.deviceconfig import VNPUConfig, VNPUTemplate
from hami.core.errors import ConfigError
from hami.core.ids import DeviceID
from hami.core.model import ContainerDeviceRequest, DeviceInfo, PodSingleDevice
from hami.core.node_annotations import decode_node_devices_json, encode_device_json
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.policy import NodePolicy
from hami.core.requests import ContainerResources
from hami.core.scoring import f32
from hami.core.snapshot import DeviceUsage, NodeSnapshot
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorAdmissionError,
    VendorTraits,
    registered_devices,
    reported,
    requested_count,
    share_request,
    unix_seconds,
)
from hami.core.vendors.podspec import JsonObject, limits_of, quantity_value, writable

ASCEND_910_PREFIX: Final = "Ascend910"
NETWORK_WEIGHT: Final = 10
NETWORK_ID: Final = "NetworkID"
PREDICATE_TIME: Final = "predicate-time"


class AscendVendor(BaseVendor):
    __slots__ = ("config", "handshake_key", "register_key", "templates")

    def __init__(self, config: VNPUConfig, *, clock: Clock | None = None) -> None:
        if not config.common_word:
            raise ConfigError("vnpus[].commonWord", "must not be empty")
        self.config = config
        word = config.common_word
        self.templates: tuple[VNPUTemplate, ...] = tuple(sorted(config.templates, key=lambda t: t.memory))
        self.register_key = f"hami.io/node-register-{word}"
        self.handshake_key = f"hami.io/node-handshake-{word}"
        super().__init__(
            name=word,
            names=ResourceNames(count=config.resource_name, memory=config.resource_memory_name),
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

    @property
    def scores_nodes(self) -> bool:
        return self.name.startswith(ASCEND_910_PREFIX)

    def trim_memory(self, memory: int) -> tuple[int, str]:
        """HAMi ``trimMemory``: (MiB, template name) for a request of ``memory`` MiB (0: impossible)."""
        for template in self.templates:
            if memory <= template.memory:
                return template.memory, template.name
        if memory <= self.config.memory_capacity:
            return self.config.memory_allocatable, ""
        return 0, ""

    # ---- requests / webhook ----------------------------------------------------------------

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        cfg = self.config
        nums = requested_count(container, cfg.resource_name, warnings)
        if nums is None:
            return None
        memory = 0
        raw = container.integer(cfg.resource_memory_name, warnings) if cfg.resource_memory_name else None
        if raw is not None:
            if cfg.memory_factor > 1:
                raw *= cfg.memory_factor
            memory, _ = self.trim_memory(raw)
        return share_request(self.name, nums, memory=memory, cores=0)

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        cfg = self.config
        limits = limits_of(container)
        if cfg.resource_name not in limits:
            return False
        count = quantity_value(limits[cfg.resource_name], f"limits[{cfg.resource_name!r}]")
        trimmed = cfg.memory_allocatable
        if cfg.resource_memory_name in limits:
            asked = quantity_value(limits[cfg.resource_memory_name], f"limits[{cfg.resource_memory_name!r}]")
            trimmed, _ = self.trim_memory(asked)
            if trimmed <= 0:
                raise VendorAdmissionError(f"{cfg.resource_memory_name} {asked} is invalid")
        if count > 1 and trimmed != cfg.memory_allocatable:
            raise VendorAdmissionError("vNPU nor supported for multiple devices")  # HAMi's text
        if cfg.resource_memory_name:
            writable(container, "limits")[cfg.resource_memory_name] = str(trimmed)
            writable(container, "requests")[cfg.resource_memory_name] = str(trimmed)
        return True

    # ---- node ------------------------------------------------------------------------------

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        return registered_devices(annotations, self.register_key, self.name, decode=decode_node_devices_json)

    # ---- score -----------------------------------------------------------------------------

    def score_node(
        self,
        node: NodeSnapshot,
        assigned: PodSingleDevice,
        previous: Sequence[DeviceUsage],
        policy: NodePolicy,
    ) -> float:
        if not self.scores_nodes:
            return 0.0
        info = {d.id: d.custominfo for d in previous}
        score = 0.0
        for container in assigned:
            if not container:
                continue
            groups: dict[int, int] = {}
            for cd in container:
                custom = info.get(DeviceID(cd.uuid))
                if not custom or NETWORK_ID not in custom:
                    return 0.0
                network = custom[NETWORK_ID]
                # Go decodes JSON numbers into float64; other types are skipped, as HAMi's type switch does.
                if isinstance(network, int | float) and not isinstance(network, bool):
                    key = int(network)
                    groups[key] = groups.get(key, 0) + 1
            total = sum(groups.values())
            if total:
                score = f32(score + f32(max(groups.values()) / total))
        return f32(score * NETWORK_WEIGHT)

    # ---- annotations -----------------------------------------------------------------------

    def extra_annotations(
        self, assigned: PodSingleDevice, *, pod: Mapping[str, object] | None, node: str, now: datetime
    ) -> dict[str, str]:
        entries: list[str] = []
        for container in assigned:
            for cd in container:
                _, template = self.trim_memory(cd.usedmem)
                fields = [f'"UUID":{gojson.go_string(cd.uuid)}'] if cd.uuid else []
                if template:
                    fields.append(f'"temp":{gojson.go_string(template)}')
                entries.append("{" + ",".join(fields) + "}")
        return {PREDICATE_TIME: unix_seconds(now), f"huawei.com/{self.name}": "[" + ",".join(entries) + "]"}

    # ---- node agent ------------------------------------------------------------------------

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """ascend-device-plugin: JSON register (910 series with a NetworkID per group of 4 NPUs)
        and ``Reported`` handshake; ``huawei.com/<cw>`` count and the ``-memory`` sum."""
        cfg = self.config
        memory = memory_mib if memory_mib is not None else cfg.memory_allocatable
        smallest = min((t.ai_core for t in self.templates if t.ai_core > 0), default=0)
        split = max(cfg.ai_core // smallest, 1) if smallest else 1
        register = register_value(
            DeviceInfo(
                id=DeviceID(f"{self.name}-{node}-{i}"),
                index=i,
                count=split,
                devmem=memory,
                devcore=cfg.ai_core,
                type=self.name,
                health=True,
                custominfo={NETWORK_ID: i // 4} if self.scores_nodes else {},
            )
            for i in range(devices)
        )
        return NodePublication(
            annotations={self.register_key: register, self.handshake_key: reported(now)} if devices else {},
            capacity={
                cfg.resource_name: str(devices * split),
                **({cfg.resource_memory_name: str(devices * memory)} if cfg.resource_memory_name else {}),
            },
        )


def register_value(devices: Iterable[DeviceInfo]) -> str:
    """A JSON register value with each device's ``custominfo`` (Go field order: after ``health``,
    before the always-present ``devicepairscore``)."""
    out: list[str] = []
    tail = '"devicepairscore":{}}'
    for device in devices:
        text = encode_device_json(device)
        if device.custominfo:
            custom = json.dumps(dict(device.custominfo), separators=(",", ":"), sort_keys=True)
            text = text[: -len(tail)] + f'"custominfo":{custom},' + tail
        out.append(text)
    return "[" + ",".join(out) + "]"
