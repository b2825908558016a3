"""Virtual devices: how physical GPUs become kubelet device IDs and registration entries.

HAMi advertises ``deviceSplitCount`` replicas per GPU with IDs ``<GPU-UUID>-<i>`` (node spec
§2.6) and registers each physical GPU in ``hami.io/node-nvidia-register`` with scaled memory
and cores (§3.1). Per-node overrides come from the ``config.json`` ConfigMap (§2.2); unlike
HAMi 2.8, ``filterdevices`` is applied here (a GPU listed by UUID or index is not offered).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from hami.core.deviceconfig import NvidiaConfig
from hami.core.ids import DeviceID
from hami.core.keys import RESOURCE_GPU
from hami.core.model import MODE_HAMI_CORE, MODE_MIG, DeviceInfo
from hami.core.nodeconfig import NodeConfig, node_settings
from hami.deviceplugin.backend import PhysicalGpu

HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"
INT32_MAX: Final = 2**31 - 1

Health = Literal["Healthy", "Unhealthy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDeviceSettings:
    """The effective NVIDIA settings of this node: device config merged with its node config.

    Defaults are the chart's (split 10, scalings 1.0, log level "1"), so a missing value never
    crashes the plugin (HAMi 2.8 dereferences nil pointers there).
    """

    resource_name: str = RESOURCE_GPU
    split_count: int = 10
    memory_scaling: float = 1.0
    core_scaling: float = 1.0
    lib_cuda_log_level: str = "1"
    disable_core_limit: bool = False
    # "hami-core", "mig", or "" (HAMi 2.8 when config.json is unreadable; behaves as hami-core).
    mode: str = MODE_HAMI_CORE
    filter_uuids: frozenset[str] = field(default_factory=frozenset)
    filter_indexes: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.split_count < 1:
            raise ValueError(f"deviceSplitCount must be >= 1, got {self.split_count}")
        if self.memory_scaling <= 0:
            raise ValueError(f"deviceMemoryScaling must be > 0, got {self.memory_scaling}")
        if self.core_scaling <= 0:
            raise ValueError(f"deviceCoreScaling must be > 0, got {self.core_scaling}")
        if "/" not in self.resource_name:
            raise ValueError(
                f"resource name {self.resource_name!r} has no domain (expected e.g. nvidia.com/gpu)"
            )

    @property
    def socket_name(self) -> str:
        """``nvidia-<name>.sock`` (node spec §2.5)."""
        return f"nvidia-{self.resource_name.split('/', 1)[1]}.sock"


def offered_gpus(gpus: Iterable[PhysicalGpu], settings: NodeDeviceSettings) -> tuple[PhysicalGpu, ...]:
    """The GPUs this plugin offers: ``filterdevices`` (by UUID or index) removed, in index order."""
    kept = [g for g in gpus if g.uuid not in settings.filter_uuids and g.index not in settings.filter_indexes]
    return tuple(sorted(kept, key=lambda g: g.index))


def virtual_ids(gpu_uuid: str, split_count: int) -> tuple[str, ...]:
    return tuple(f"{gpu_uuid}-{i}" for i in range(split_count))


def physical_uuid(virtual_id: str, known: Iterable[str]) -> str | None:
    """The GPU a virtual ID belongs to, or None if it names no known GPU."""
    base, sep, replica = virtual_id.rpartition("-")
    if not sep or not replica.isdigit():
        return None
    return base if base in set(known) else None


def kubelet_devices(
    gpus: Sequence[PhysicalGpu], health: Mapping[str, bool], split_count: int
) -> tuple[tuple[str, Health], ...]:
    """The ListAndWatch list: every virtual ID with its GPU's health, in GPU index order."""
    out: list[tuple[str, Health]] = []
    for gpu in gpus:
        state: Health = HEALTHY if health.get(gpu.uuid, True) else UNHEALTHY
        out.extend((vid, state) for vid in virtual_ids(gpu.uuid, split_count))
    return tuple(out)


def device_type(nvml_name: str) -> str:
    """Registered ``type``: the NVML name, prefixed ``NVIDIA-`` unless it starts with NVIDIA (#1139)."""
    return nvml_name if nvml_name.startswith("NVIDIA") else f"NVIDIA-{nvml_name}"


def registered_devices(
    gpus: Sequence[PhysicalGpu], health: Mapping[str, bool], settings: NodeDeviceSettings
) -> tuple[DeviceInfo, ...]:
    """What ``hami.io/node-nvidia-register`` lists, one entry per offered GPU in index order."""
    mig = settings.mode == MODE_MIG
    out: list[DeviceInfo] = []
    for gpu in gpus:
        devmem = gpu.memory_mib if mig else min(int(gpu.memory_mib * settings.memory_scaling), INT32_MAX)
        out.append(
            DeviceInfo(
                id=DeviceID(gpu.uuid),
                index=gpu.index,
                count=settings.split_count,
                devmem=devmem,
                devcore=100 if mig else int(settings.core_scaling * 100),
                type=device_type(gpu.name),
                numa=gpu.numa_node if gpu.numa_node is not None else 0,
                mode=settings.mode,
                health=health.get(gpu.uuid, True),
            )
        )
    return tuple(out)


def node_device_settings(
    config: NvidiaConfig, node_config: NodeConfig | None, node_name: str
) -> NodeDeviceSettings:
    """The effective settings: ``device-config.yaml``'s ``nvidia:`` merged with this node's
    ``config.json`` entry (``None`` = file missing or unparsable, node spec §2.2)."""
    merged = node_settings(config, node_config, node_name)
    filters = merged.filter_devices
    return NodeDeviceSettings(
        resource_name=config.resource_count_name,
        split_count=merged.device_split_count,
        memory_scaling=merged.device_memory_scaling,
        core_scaling=merged.device_core_scaling,
        lib_cuda_log_level=merged.lib_cuda_log_level,
        disable_core_limit=config.disable_core_limit,
        mode=merged.operating_mode,
        filter_uuids=frozenset(filters.uuid) if filters else frozenset(),
        filter_indexes=frozenset(filters.index) if filters else frozenset(),
    )
