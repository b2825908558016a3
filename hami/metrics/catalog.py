"""Every metric hami-py exposes: name, type and label set, in one table per role.

The names and labels of HAMi 2.8 are kept exactly (users' dashboards query them): scheduler metrics
from hami-scheduler-spec.md §10, monitor metrics from hami-node-spec.md §7.5. Metrics hami-py adds
use the ``hami_`` prefix and Prometheus naming conventions. ``zone="vGPU"`` is the constant label
HAMi's wrapping registerer adds to every collector metric (not to ``hami_build_info``).

Collectors emit families from these specs, the contract test pins them, and the dashboard test
checks every query against them: one source of truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

MetricType = Literal["gauge", "counter", "histogram", "unknown"]
Origin = Literal["hami-2.8", "hami-py"]

ZONE_LABEL: Final = "zone"
ZONE_VALUE: Final = "vGPU"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec:
    name: str  # the name as exposed (counters include "_total"; histograms are the base name)
    type: MetricType
    labels: tuple[str, ...]  # label names in a fixed order, const labels included
    help: str
    origin: Origin

    def series_names(self) -> tuple[str, ...]:
        """Sample names a query may use for this metric."""
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        if self.type == "counter":
            return (self.name, self.name.removesuffix("_total") + "_created")
        return (self.name,)


def _spec(name: str, type_: MetricType, labels: Iterable[str], help_: str, origin: Origin) -> MetricSpec:
    return MetricSpec(name=name, type=type_, labels=tuple(labels), help=help_, origin=origin)


_DEV = ("nodeid", "deviceuuid", "deviceidx")
_VGPU = ("podnamespace", "nodename", "podname", "containeridx", "deviceuuid")
_CTR = ("podnamespace", "podname", "ctrname", "vdeviceid", "deviceuuid")
_HOST = ("deviceidx", "deviceuuid", "devicetype")
_Z = (ZONE_LABEL,)

BUILD_INFO: Final = _spec(
    "hami_build_info",
    "gauge",
    ("version", "revision", "build_date", "python_version", "platform"),
    "Build information of this hami-py process (constant 1).",
    "hami-2.8",
)

SCHEDULER_METRICS: Final[tuple[MetricSpec, ...]] = (
    _spec(
        "GPUDeviceMemoryLimit", "gauge", _DEV + _Z, "Device memory of a registered GPU in bytes.", "hami-2.8"
    ),
    _spec(
        "GPUDeviceCoreLimit",
        "gauge",
        _DEV + _Z,
        "Device cores of a registered GPU (100 = whole GPU).",
        "hami-2.8",
    ),
    _spec(
        "GPUDeviceMemoryAllocated",
        "gauge",
        (*_DEV, "devicecores", ZONE_LABEL),
        "Device memory allocated to tasks in bytes; devicecores = cores allocated.",
        "hami-2.8",
    ),
    _spec(
        "GPUDeviceSharedNum", "gauge", _DEV + _Z, "Number of task allocations sharing the GPU.", "hami-2.8"
    ),
    _spec("GPUDeviceCoreAllocated", "gauge", _DEV + _Z, "Device cores allocated to tasks.", "hami-2.8"),
    _spec(
        "nodeGPUOverview",
        "gauge",
        (*_DEV, "devicecores", "sharedcontainers", "devicememorylimit", "devicetype", ZONE_LABEL),
        "Allocated memory in bytes, with the GPU's allocation summary as labels.",
        "hami-2.8",
    ),
    _spec(
        "nodeGPUMemoryPercentage",
        "gauge",
        _DEV + _Z,
        "Allocated fraction of the GPU's memory (0-1).",
        "hami-2.8",
    ),
    _spec(
        "nodeGPUMigInstance",
        "gauge",
        (*_DEV, "migname", ZONE_LABEL),
        "1 if the MIG instance is in use, else 0 (MIG-mode GPUs only).",
        "hami-2.8",
    ),
    _spec(
        "vGPUMemoryAllocated",
        "gauge",
        _VGPU + _Z,
        "Memory allocated to a container on a GPU in bytes.",
        "hami-2.8",
    ),
    _spec("vGPUCoreAllocated", "gauge", _VGPU + _Z, "Cores allocated to a container on a GPU.", "hami-2.8"),
    _spec(
        "QuotaUsed",
        "gauge",
        ("quotanamespace", "quotaName", "limit", ZONE_LABEL),
        "ResourceQuota usage of a HAMi resource in a namespace; limit is the quota's limit.",
        "hami-2.8",
    ),
    _spec(
        "hami_device_info",
        "gauge",
        (*_DEV, "vendor", "devicetype"),
        "1 per registered device, naming its vendor (HAMi common word: NVIDIA, MLU, DCU...) and model; "
        "join on nodeid/deviceuuid to split HAMi 2.8's device metrics by vendor.",
        "hami-py",
    ),
    _spec("hami_webhook_duration_seconds", "histogram", (), "Admission webhook handling time.", "hami-py"),
    _spec("hami_filter_duration_seconds", "histogram", (), "Extender /filter handling time.", "hami-py"),
    _spec("hami_bind_duration_seconds", "histogram", (), "Extender /bind handling time.", "hami-py"),
    _spec(
        "hami_filter_failures_total",
        "counter",
        ("reason",),
        "Devices or nodes rejected by /filter, by HAMi fit reason.",
        "hami-py",
    ),
    _spec(
        "hami_leader",
        "gauge",
        (),
        "1 while this scheduler replica leads (decides and writes), else 0; 1 without leader election.",
        "hami-py",
    ),
    _spec(
        "hami_leader_transitions_total",
        "counter",
        (),
        "Times this scheduler replica became the leader.",
        "hami-py",
    ),
    _spec(
        "hami_leader_renew_age_seconds",
        "gauge",
        (),
        "Seconds since this replica's leadership was last confirmed (its Lease renewal, or the renewal "
        "of kube-scheduler it follows); absent before the first.",
        "hami-py",
    ),
)

DEVICE_PLUGIN_METRICS: Final[tuple[MetricSpec, ...]] = (
    _spec(
        "hami_allocate_duration_seconds", "histogram", (), "Device-plugin Allocate handling time.", "hami-py"
    ),
)

DRA_PLUGIN_METRICS: Final[tuple[MetricSpec, ...]] = (
    _spec(
        "hami_dra_prepare_duration_seconds",
        "histogram",
        (),
        "DRA plugin NodePrepareResources handling time (all claims of one call).",
        "hami-py",
    ),
)

MONITOR_METRICS: Final[tuple[MetricSpec, ...]] = (
    _spec(
        "HostGPUMemoryUsage",
        "gauge",
        (*_HOST, "node", ZONE_LABEL),
        "GPU memory used on the host in bytes (NVML).",
        "hami-2.8",
    ),
    _spec(
        "HostCoreUtilization",
        "gauge",
        (*_HOST, "node", ZONE_LABEL),
        "GPU utilisation on the host in percent (NVML).",
        "hami-2.8",
    ),
    _spec(
        "vGPU_device_memory_usage_in_bytes",
        "gauge",
        _CTR + _Z,
        "Device memory used by a container's live processes in bytes (shared region).",
        "hami-2.8",
    ),
    _spec(
        "vGPU_device_memory_limit_in_bytes",
        "gauge",
        _CTR + _Z,
        "Device memory limit of a container in bytes (0 = unlimited).",
        "hami-2.8",
    ),
    # HAMi 2.8 declares this a counter but it is a level; exposed untyped to keep the exact name
    # (a Python client counter would be renamed to *_total).
    _spec(
        "Device_memory_desc_of_container",
        "unknown",
        (*_CTR, "context", "module", "data", "offset", ZONE_LABEL),
        "Device memory used by a container in bytes, broken down by type in the labels.",
        "hami-2.8",
    ),
    _spec(
        "Device_utilization_desc_of_container",
        "gauge",
        _CTR + _Z,
        "SM utilisation of a container's processes in percent.",
        "hami-2.8",
    ),
    _spec(
        "Device_last_kernel_of_container",
        "gauge",
        _CTR + _Z,
        "Seconds since the container last launched a kernel.",
        "hami-2.8",
    ),
    _spec(
        "MigInfo",
        "gauge",
        (*_CTR, "instanceid", ZONE_LABEL),
        "1 per dynamic-MIG device of a container, with the GPU instance id.",
        "hami-2.8",
    ),
    _spec(
        "hami_vgpu_memory_over_limit_bytes",
        "gauge",
        _CTR + _Z,
        "Bytes by which a container's summed device-memory usage exceeds its limit (only when it does).",
        "hami-py",
    ),
    _spec(
        "hami_monitor_unreadable_regions",
        "gauge",
        (),
        "Container directories whose shared region could not be read in the last scan.",
        "hami-py",
    ),
)

ROLE_METRICS: Final[Mapping[str, tuple[MetricSpec, ...]]] = MappingProxyType(
    {
        "scheduler": (BUILD_INFO, *SCHEDULER_METRICS),
        "monitor": (BUILD_INFO, *MONITOR_METRICS),
        "device-plugin": (BUILD_INFO, *DEVICE_PLUGIN_METRICS),
        "dra-plugin": (BUILD_INFO, *DRA_PLUGIN_METRICS),
    }
)


def all_specs() -> dict[str, MetricSpec]:
    """Every metric of every role by name."""
    out: dict[str, MetricSpec] = {}
    for specs in ROLE_METRICS.values():
        for spec in specs:
            out[spec.name] = spec
    return out


def series_index() -> dict[str, MetricSpec]:
    """Every sample name a query may use, mapped to its metric."""
    return {series: spec for spec in all_specs().values() for series in spec.series_names()}
