"""HAMi-core's environment and mounts for a set of shared devices (hami-node-spec.md §4.4).

Both ways a container can get a shared GPU must give HAMi-core the same instructions: the
device plugin's ``Allocate`` (per container) and the DRA plugin's ``NodePrepareResources``
(per claim, as CDI container edits). This module is the pure part they share: from the devices
with their limits, the node's settings and a few facts about host files, it computes the env
and the mounts. Host side effects (creating the cache directory, ``/tmp/vgpulock``) stay with
the callers.

Index caveat (§4.4): ``CUDA_DEVICE_MEMORY_LIMIT_<i>`` is applied by HAMi-core to the i-th device
visible in the container, in NVML order, so callers should pass devices in ascending GPU index
order when they can (the DRA plugin does; the device plugin keeps the annotation order for
parity with HAMi 2.8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Final

ENV_VISIBLE_DEVICES: Final = "NVIDIA_VISIBLE_DEVICES"
ENV_MEMORY_LIMIT_PREFIX: Final = "CUDA_DEVICE_MEMORY_LIMIT_"
ENV_SM_LIMIT: Final = "CUDA_DEVICE_SM_LIMIT"
ENV_SHARED_CACHE: Final = "CUDA_DEVICE_MEMORY_SHARED_CACHE"
ENV_OVERSUBSCRIBE: Final = "CUDA_OVERSUBSCRIBE"
ENV_LOG_LEVEL: Final = "LIBCUDA_LOG_LEVEL"
ENV_CORE_POLICY: Final = "GPU_CORE_UTILIZATION_POLICY"
VGPU_LOCK_DIR: Final = "/tmp/vgpulock"
LD_SO_PRELOAD: Final = "/etc/ld.so.preload"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceLimit:
    """One device given to a container, with the share HAMi-core must enforce."""

    uuid: str
    memory_mib: int  # CUDA_DEVICE_MEMORY_LIMIT_<i>; 0 = no limit
    cores: int  # percent of the device's compute; 0 = unlimited (HAMi's meaning)

    def __post_init__(self) -> None:
        if not self.uuid:
            raise ValueError("a device limit needs the device UUID")
        if self.memory_mib < 0:
            raise ValueError(f"device {self.uuid}: memory limit must be >= 0 MiB, got {self.memory_mib}")
        if self.cores < 0:
            raise ValueError(f"device {self.uuid}: core limit must be >= 0 %, got {self.cores}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HamiCoreOptions:
    """Node-wide settings that shape the env (flags, ``device-config.yaml``, node config)."""

    hook_path: str = "/usr/local"  # HOOK_PATH; HAMi-core lives in <hook_path>/vgpu
    libvgpu_version: str = "v2.8.0"  # host library file libvgpu.so.<version>
    memory_scaling: float = 1.0  # deviceMemoryScaling: > 1 turns on oversubscription
    lib_cuda_log_level: str = "1"
    disable_core_limit: bool = False

    @property
    def vgpu_dir(self) -> PurePosixPath:
        # HAMi 2.8 joins HOOK_PATH + "/vgpu"; an empty HOOK_PATH gives "/vgpu".
        return PurePosixPath(self.hook_path or "/") / "vgpu"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFacts:
    """Which optional host files exist (checked by the caller, which owns the I/O)."""

    versioned_library: bool = True  # <vgpu>/libvgpu.so.<version> exists
    license: bool = False  # <vgpu>/license exists


@dataclass(frozen=True, slots=True, kw_only=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class HamiCoreEdits:
    """What a container needs for HAMi-core, free of protobuf and CDI types."""

    envs: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()


def visible_devices(devices: Sequence[DeviceLimit]) -> str:
    """``NVIDIA_VISIBLE_DEVICES``: the UUIDs in order, each once."""
    seen: list[str] = []
    for device in devices:
        if device.uuid not in seen:
            seen.append(device.uuid)
    return ",".join(seen)


def shared_cache_path(options: HamiCoreOptions, cache_id: str) -> str:
    """Container path of the shared-region file: ``<vgpu>/<cache_id>.cache``."""
    if not cache_id or "/" in cache_id:
        raise ValueError(f"invalid shared-cache id {cache_id!r}")
    return str(options.vgpu_dir / f"{cache_id}.cache")


def hamicore_edits(
    devices: Sequence[DeviceLimit],
    options: HamiCoreOptions,
    *,
    cache_dir: str,
    cache_id: str,
    host: HostFacts | None = None,
    disable_control: bool = False,
) -> HamiCoreEdits:
    """HAMi-core's env and mounts (node spec §4.4), without ``NVIDIA_VISIBLE_DEVICES``.

    ``cache_dir`` is the host directory mounted at ``<vgpu>`` (the device plugin uses
    ``<vgpu>/containers/<podUID>_<ctr>``, the DRA plugin ``<vgpu>/claims/<claimUID>``); HAMi-core
    creates ``<cache_id>.cache`` in it. ``disable_control`` (the container sets
    ``CUDA_DISABLE_CONTROL=true``) drops the ``ld.so.preload`` mount.
    """
    if not devices:
        raise ValueError("HAMi-core edits need at least one device")
    if not cache_dir.startswith("/"):
        raise ValueError(f"cache directory {cache_dir!r} must be an absolute host path")
    host = host or HostFacts()
    vgpu = options.vgpu_dir
    envs: dict[str, str] = {}
    for i, device in enumerate(devices):
        envs[f"{ENV_MEMORY_LIMIT_PREFIX}{i}"] = f"{device.memory_mib}m"
    envs[ENV_SM_LIMIT] = str(devices[0].cores)
    envs[ENV_SHARED_CACHE] = shared_cache_path(options, cache_id)
    if options.memory_scaling > 1:
        envs[ENV_OVERSUBSCRIBE] = "true"
    if options.lib_cuda_log_level:
        envs[ENV_LOG_LEVEL] = options.lib_cuda_log_level
    if options.disable_core_limit:
        envs[ENV_CORE_POLICY] = "disable"
    library = vgpu / "libvgpu.so"
    versioned = vgpu / f"libvgpu.so.{options.libvgpu_version}"
    mounts = [
        Mount(
            container_path=str(library),
            host_path=str(versioned if host.versioned_library else library),
            read_only=True,
        ),
        Mount(container_path=str(vgpu), host_path=cache_dir, read_only=False),
        Mount(container_path=VGPU_LOCK_DIR, host_path=VGPU_LOCK_DIR, read_only=False),
    ]
    if not disable_control:
        mounts.append(
            Mount(container_path=LD_SO_PRELOAD, host_path=str(vgpu / "ld.so.preload"), read_only=True)
        )
    if host.license:
        mounts.append(Mount(container_path="/tmp/license", host_path=str(vgpu / "license"), read_only=True))
        mounts.append(
            Mount(
                container_path="/usr/bin/vgpuvalidator", host_path=str(vgpu / "vgpuvalidator"), read_only=True
            )
        )
    return HamiCoreEdits(envs=envs, mounts=tuple(mounts))
