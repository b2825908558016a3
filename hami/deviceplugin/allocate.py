"""The Allocate answer for one container (node spec §4.4, §4.5, worked example §4.8).

:func:`container_allocation` is pure: it turns the devices the scheduler assigned to a
container into HAMi 2.8's env, mounts and (in CDI modes) annotations / CDI device names.
Facts about host files and random ids are passed in, so a golden test can compare it byte for
byte. :class:`HostLayout` owns the few host side effects (per-container cache directory,
``/tmp/vgpulock``) and the file-existence checks, under an optional root for tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final, Literal

from hami.core.errors import HamiError
from hami.core.hamicore_env import (
    ENV_VISIBLE_DEVICES,
    VGPU_LOCK_DIR,
    DeviceLimit,
    HamiCoreOptions,
    HostFacts,
    Mount,
    hamicore_edits,
)
from hami.core.model import MODE_MIG, ContainerDevices
from hami.deviceplugin.virtual import NodeDeviceSettings

DeviceListStrategy = Literal["envvar", "volume-mounts", "cdi-annotations", "cdi-cri"]
DEVICE_LIST_STRATEGIES: Final[tuple[DeviceListStrategy, ...]] = (
    "envvar",
    "volume-mounts",
    "cdi-annotations",
    "cdi-cri",
)
CDI_STRATEGIES: Final = frozenset({"cdi-annotations", "cdi-cri"})

CDI_KIND: Final = "k8s.device-plugin.nvidia.com/gpu"
CDI_ANNOTATION_PREFIX: Final = "cdi.k8s.io/"
CDI_ANNOTATION_PLUGIN: Final = "nvidia-device-plugin"
VOLUME_MOUNTS_ROOT: Final = "/var/run/nvidia-container-devices"
ENV_DISABLE_CONTROL: Final = "CUDA_DISABLE_CONTROL"


class UnsupportedAllocation(HamiError):
    """The pod's allocation needs a feature this plugin does not implement (dynamic MIG)."""


def parse_device_list_strategies(raw: str | Sequence[str]) -> tuple[DeviceListStrategy, ...]:
    """``envvar`` / ``volume-mounts`` / ``cdi-annotations`` / ``cdi-cri``, comma-separated or a list."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    out: list[DeviceListStrategy] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        match = next((s for s in DEVICE_LIST_STRATEGIES if s == item), None)
        if match is None:
            raise ValueError(
                f"unknown device list strategy {item!r}; expected one of {', '.join(DEVICE_LIST_STRATEGIES)}"
            )
        if match not in out:
            out.append(match)
    if not out:
        raise ValueError("at least one device list strategy is required")
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocateSettings:
    """Node-wide Allocate settings (flags and env of the plugin process)."""

    hook_path: str = "/usr/local"  # HOOK_PATH; the vgpu directory is <hook_path>/vgpu
    libvgpu_version: str = "v2.8.0"  # suffix of the host library file libvgpu.so.<version>
    device_list_strategies: tuple[DeviceListStrategy, ...] = ("envvar",)
    cdi_annotation_prefix: str = CDI_ANNOTATION_PREFIX
    cdi_kind: str = CDI_KIND

    @property
    def vgpu_dir(self) -> PurePosixPath:
        # HAMi 2.8 joins HOOK_PATH + "/vgpu"; an empty HOOK_PATH gives "/vgpu" (kept as is).
        return PurePosixPath(self.hook_path or "/") / "vgpu"

    @property
    def only_cdi(self) -> bool:
        return all(s in CDI_STRATEGIES for s in self.device_list_strategies)


# HAMi-core's env and mounts are computed by hami.core.hamicore_env, shared with the DRA plugin.
MountSpec = Mount
HostFiles = HostFacts


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerTarget:
    """Which container of which pod the devices are for."""

    pod_uid: str
    container_name: str
    # The container spec sets CUDA_DISABLE_CONTROL=true: no ld.so.preload mount.
    disable_control: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerAllocation:
    """One ``ContainerAllocateResponse``, free of protobuf types."""

    envs: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[MountSpec, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    cdi_devices: tuple[str, ...] = ()


def go_parse_bool(text: str) -> bool | None:
    """Go ``strconv.ParseBool``: None when the text is not a boolean."""
    if text in {"1", "t", "T", "TRUE", "true", "True"}:
        return True
    if text in {"0", "f", "F", "FALSE", "false", "False"}:
        return False
    return None


def container_disables_control(container: Mapping[str, object]) -> bool:
    """Whether a pod container spec has env ``CUDA_DISABLE_CONTROL`` parsing as true."""
    env = container.get("env")
    if not isinstance(env, list):
        return False
    for item in env:
        if isinstance(item, Mapping) and item.get("name") == ENV_DISABLE_CONTROL:
            value = item.get("value")
            return isinstance(value, str) and go_parse_bool(value) is True
    return False


def cache_dir_name(pod_uid: str, container_name: str) -> str:
    """``<podUID>_<container>``: the monitor parses this name back (node spec §7.2)."""
    return f"{pod_uid}_{container_name}"


def visible_ids(devices: ContainerDevices) -> tuple[str, ...]:
    """Device UUIDs in annotation order, de-duplicated; dynamic-MIG references are refused."""
    out: list[str] = []
    for device in devices:
        if "[" in device.uuid:
            raise UnsupportedAllocation(
                f"device {device.uuid} is a dynamic-MIG allocation, which this plugin does not support"
            )
        uuid = device.uuid.split("::", 1)[0]
        if uuid not in out:
            out.append(uuid)
    return tuple(out)


def cdi_annotation_key(settings: AllocateSettings, annotation_id: str) -> str:
    return f"{settings.cdi_annotation_prefix}{CDI_ANNOTATION_PLUGIN}_{annotation_id.replace('/', '_')}"


def base_allocation(
    ids: Sequence[str], settings: AllocateSettings, *, annotation_id: str
) -> tuple[dict[str, str], list[MountSpec], dict[str, str], tuple[str, ...]]:
    """Upstream ``getAllocateResponse`` for the selected device-list strategies (node spec §4.5)."""
    envs: dict[str, str] = {}
    mounts: list[MountSpec] = []
    annotations: dict[str, str] = {}
    cdi_devices: tuple[str, ...] = ()
    names = tuple(f"{settings.cdi_kind}={i}" for i in ids)
    for strategy in settings.device_list_strategies:
        if strategy == "cdi-annotations" and names:
            annotations[cdi_annotation_key(settings, annotation_id)] = ",".join(names)
        elif strategy == "cdi-cri":
            cdi_devices = names
    if not settings.only_cdi:
        for strategy in settings.device_list_strategies:
            if strategy == "envvar":
                envs[ENV_VISIBLE_DEVICES] = ",".join(ids)
            elif strategy == "volume-mounts":
                envs[ENV_VISIBLE_DEVICES] = VOLUME_MOUNTS_ROOT
                mounts.extend(
                    MountSpec(
                        container_path=f"{VOLUME_MOUNTS_ROOT}/{i}", host_path="/dev/null", read_only=False
                    )
                    for i in ids
                )
    return envs, mounts, annotations, cdi_devices


def container_allocation(
    devices: ContainerDevices,
    target: ContainerTarget,
    node: NodeDeviceSettings,
    settings: AllocateSettings,
    host: HostFiles,
    *,
    cache_id: str,
    annotation_id: str,
) -> ContainerAllocation:
    """HAMi 2.8's response for one container: base response, then HAMi-core env and mounts.

    ``cache_id`` names the shared-region file (HAMi: a random UUID4); ``annotation_id`` the CDI
    annotation key suffix (also a UUID4 upstream).
    """
    if not devices:
        raise ValueError("a container allocation needs at least one device")
    ids = visible_ids(devices)
    envs, mounts, annotations, cdi_devices = base_allocation(ids, settings, annotation_id=annotation_id)
    if node.mode != MODE_MIG:
        options = HamiCoreOptions(
            hook_path=settings.hook_path,
            libvgpu_version=settings.libvgpu_version,
            memory_scaling=node.memory_scaling,
            lib_cuda_log_level=node.lib_cuda_log_level,
            disable_core_limit=node.disable_core_limit,
        )
        cache_dir = settings.vgpu_dir / "containers" / cache_dir_name(target.pod_uid, target.container_name)
        edits = hamicore_edits(
            [DeviceLimit(uuid=d.uuid, memory_mib=d.usedmem, cores=d.usedcores) for d in devices],
            options,
            cache_dir=str(cache_dir),
            cache_id=cache_id,
            host=host,
            disable_control=target.disable_control,
        )
        envs.update(edits.envs)
        mounts.extend(edits.mounts)
    return ContainerAllocation(
        envs=envs, mounts=tuple(mounts), annotations=annotations, cdi_devices=cdi_devices
    )


class HostLayout:
    """Host files behind the mounts. Paths are host paths; ``root`` relocates them for tests.

    Relies on the chart's path identity: ``/usr/local/vgpu`` and ``/tmp`` are mounted at the
    same paths in the plugin container (node spec §1).
    """

    def __init__(self, settings: AllocateSettings, *, root: Path = Path("/")) -> None:
        self._settings = settings
        self._root = root

    def local(self, host_path: str | PurePosixPath) -> Path:
        return self._root / str(host_path).lstrip("/")

    def files(self) -> HostFiles:
        vgpu = self._settings.vgpu_dir
        return HostFiles(
            versioned_library=self.local(vgpu / f"libvgpu.so.{self._settings.libvgpu_version}").exists(),
            license=self.local(vgpu / "license").exists(),
        )

    def prepare(self, target: ContainerTarget) -> None:
        """Re-create the container's cache directory and ensure ``/tmp/vgpulock``, both mode 0777."""
        cache = self.local(
            self._settings.vgpu_dir / "containers" / cache_dir_name(target.pod_uid, target.container_name)
        )
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        os.chmod(cache, 0o777)  # chmod after mkdir: the umask must not narrow it
        lock = self.local(VGPU_LOCK_DIR)
        lock.mkdir(parents=True, exist_ok=True)
        os.chmod(lock, 0o777)
