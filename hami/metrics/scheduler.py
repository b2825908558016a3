"""The scheduler's HAMi 2.8 usage metrics (hami-scheduler-spec.md §10), read at scrape time.

The scheduler wires :class:`SchedulerUsageCollector` with a provider returning a
:class:`SchedulerUsage` built from its current ledger snapshot and quota cache. Units follow
HAMi: the rows carry MiB and core percent as the annotations do; the collector exposes bytes
(``MiB × 1048576``) where HAMi does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from hami.metrics.catalog import SCHEDULER_METRICS, MetricSpec
from hami.metrics.collectors import FamilyWriter, SnapshotCollector

MIB: Final = 1048576


@dataclass(frozen=True, slots=True, kw_only=True)
class MigInstanceRow:
    template: str  # e.g. "1g.10gb"
    position: int
    in_use: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceUsageRow:
    """One registered device of one node with its committed usage."""

    node: str
    uuid: str
    index: int
    type: str  # model, e.g. "NVIDIA H100 80GB HBM3"
    memory_mib: int  # devmem (total, after scaling)
    cores: int  # devcore, normally 100
    used_memory_mib: int
    used_cores: int
    shared: int  # task allocations on the device (HAMi "Used")
    mode: str = ""  # "mig" rows also export nodeGPUMigInstance
    mig_instances: tuple[MigInstanceRow, ...] = ()
    vendor: str = ""  # common word (NVIDIA, MLU, DCU...), exported by hami_device_info


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerAllocationRow:
    """One device assigned to one container of a pod."""

    namespace: str
    node: str
    pod: str
    container_index: int  # collapsed index as decoded (HAMi quirk, spec §4.5)
    uuid: str
    memory_mib: int
    cores: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaRow:
    namespace: str
    resource: str  # e.g. "nvidia.com/gpumem"
    used: int
    limit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerUsage:
    devices: tuple[DeviceUsageRow, ...] = ()
    containers: tuple[ContainerAllocationRow, ...] = ()
    quotas: tuple[QuotaRow, ...] = ()


class SchedulerUsageCollector(SnapshotCollector[SchedulerUsage]):
    """Gauges of HAMi 2.8's scheduler and ``hami_device_info`` (the vendor of each device, which
    2.8's label sets do not carry); the histograms and counters live in ``instruments``."""

    specs: ClassVar[tuple[MetricSpec, ...]] = tuple(
        s for s in SCHEDULER_METRICS if s.origin == "hami-2.8" or s.name == "hami_device_info"
    )

    def fill(self, snapshot: SchedulerUsage, out: FamilyWriter) -> None:
        for dev in snapshot.devices:
            key = {"nodeid": dev.node, "deviceuuid": dev.uuid, "deviceidx": str(dev.index)}
            allocated = float(dev.used_memory_mib * MIB)
            out.add("GPUDeviceMemoryLimit", float(dev.memory_mib * MIB), **key)
            out.add("GPUDeviceCoreLimit", float(dev.cores), **key)
            out.add("GPUDeviceMemoryAllocated", allocated, devicecores=str(dev.used_cores), **key)
            out.add("GPUDeviceSharedNum", float(dev.shared), **key)
            out.add("GPUDeviceCoreAllocated", float(dev.used_cores), **key)
            out.add("hami_device_info", 1.0, vendor=dev.vendor, devicetype=dev.type, **key)
            out.add(
                "nodeGPUOverview",
                allocated,
                devicecores=str(dev.used_cores),
                sharedcontainers=str(dev.shared),
                devicememorylimit=str(dev.memory_mib),
                devicetype=dev.type,
                **key,
            )
            # HAMi divides floats (NaN for an empty device); 0 keeps the series usable.
            ratio = dev.used_memory_mib / dev.memory_mib if dev.memory_mib else 0.0
            out.add("nodeGPUMemoryPercentage", ratio, **key)
            if dev.mode == "mig":
                for inst in dev.mig_instances:
                    out.add(
                        "nodeGPUMigInstance",
                        1.0 if inst.in_use else 0.0,
                        migname=f"{inst.template}-{inst.position}",
                        **key,
                    )
        for ctr in snapshot.containers:
            if not ctr.uuid:
                continue  # HAMi skips entries without a device UUID
            labels = {
                "podnamespace": ctr.namespace,
                "nodename": ctr.node,
                "podname": ctr.pod,
                "containeridx": str(ctr.container_index),
                "deviceuuid": ctr.uuid,
            }
            out.add("vGPUMemoryAllocated", float(ctr.memory_mib * MIB), **labels)
            out.add("vGPUCoreAllocated", float(ctr.cores), **labels)
        for quota in snapshot.quotas:
            out.add(
                "QuotaUsed",
                float(quota.used),
                quotanamespace=quota.namespace,
                quotaName=quota.resource,
                limit=str(quota.limit),
            )
