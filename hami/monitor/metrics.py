"""The monitor's snapshot and its scrape-time collector (HAMi 2.8 names, node spec §7.5).

The scan loop publishes a :class:`MonitorSnapshot` every interval; a scrape turns the latest one
into metrics, computing only ``Device_last_kernel_of_container`` against the wall clock. Usage
sums live slots only (``pid != 0``); HAMi 2.8 also summed exited slots until HAMi-core's lazy
cleanup, which reported memory of processes that no longer exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from hami.metrics.catalog import MONITOR_METRICS, MetricSpec
from hami.metrics.collectors import FamilyWriter, SnapshotCollector
from hami.monitor.gpuinfo import HostGpu

UUID_LABEL_LEN = 40  # HAMi labels the first 40 characters of the UUID field


@dataclass(frozen=True, slots=True, kw_only=True)
class VDeviceUsage:
    index: int  # container-local device index (vdeviceid)
    uuid: str
    limit: int  # bytes, 0 = unlimited
    used: int  # bytes, summed over live slots (what HAMi-core checks against the limit)
    context: int
    module: int
    data: int
    offset: int
    sm_util: int

    @property
    def over_limit(self) -> int:
        """Bytes above the limit (0 when within it or unlimited)."""
        return self.used - self.limit if self.limit and self.used > self.limit else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerUsage:
    namespace: str
    pod: str
    pod_uid: str
    container: str
    devices: tuple[VDeviceUsage, ...]
    last_kernel_time: int  # unix seconds, 0 = never
    priority: int
    utilization_switch: int
    recent_kernel: int
    live_processes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MigDevice:
    namespace: str
    pod: str
    container: str
    position: int  # instance position from "[geometry-position]"
    parent_uuid: str
    instance_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorSnapshot:
    node: str
    taken_at: float  # wall clock
    host_gpus: tuple[HostGpu, ...] = ()
    containers: tuple[ContainerUsage, ...] = ()
    mig_devices: tuple[MigDevice, ...] = ()
    unreadable: int = 0
    waiting: int = 0


class MonitorCollector(SnapshotCollector[MonitorSnapshot]):
    specs: ClassVar[tuple[MetricSpec, ...]] = MONITOR_METRICS

    def __init__(
        self,
        provider: Callable[[], MonitorSnapshot | None],
        *,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(provider)
        self._wall_time = wall_time

    def fill(self, snapshot: MonitorSnapshot, out: FamilyWriter) -> None:
        for gpu in snapshot.host_gpus:
            host = {
                "deviceidx": str(gpu.index),
                "deviceuuid": gpu.uuid,
                "devicetype": gpu.devicetype,
                "node": snapshot.node,
            }
            out.add("HostGPUMemoryUsage", float(gpu.memory_used), **host)
            out.add("HostCoreUtilization", float(gpu.utilization), **host)
        now = self._wall_time()
        for ctr in snapshot.containers:
            for dev in ctr.devices:
                labels = {
                    "podnamespace": ctr.namespace,
                    "podname": ctr.pod,
                    "ctrname": ctr.container,
                    "vdeviceid": str(dev.index),
                    "deviceuuid": dev.uuid[:UUID_LABEL_LEN],
                }
                out.add("vGPU_device_memory_usage_in_bytes", float(dev.used), **labels)
                out.add("vGPU_device_memory_limit_in_bytes", float(dev.limit), **labels)
                out.add(
                    "Device_memory_desc_of_container",
                    float(dev.used),
                    context=str(dev.context),
                    module=str(dev.module),
                    data=str(dev.data),
                    offset=str(dev.offset),
                    **labels,
                )
                out.add("Device_utilization_desc_of_container", float(dev.sm_util), **labels)
                if ctr.last_kernel_time > 0:
                    out.add("Device_last_kernel_of_container", max(0.0, now - ctr.last_kernel_time), **labels)
                if dev.over_limit:
                    out.add("hami_vgpu_memory_over_limit_bytes", float(dev.over_limit), **labels)
        for mig in snapshot.mig_devices:
            out.add(
                "MigInfo",
                1.0,
                podnamespace=mig.namespace,
                podname=mig.pod,
                ctrname=mig.container,
                vdeviceid=str(mig.position),
                deviceuuid=mig.parent_uuid[:UUID_LABEL_LEN],
                instanceid=str(mig.instance_id),
            )
        out.add("hami_monitor_unreadable_regions", float(snapshot.unreadable))
