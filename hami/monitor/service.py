"""The monitor role's loop: scan regions, run the feedback loop, publish a snapshot.

Every ``scan_interval`` (HAMi: 5 s) one worker-thread pass scans the containers directory,
reads every region, runs the priority feedback loop and reads host GPUs through NVML; the event
loop only swaps in the resulting immutable :class:`MonitorSnapshot`, which the collector turns
into metrics at scrape time. All file and NVML I/O stays off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hami.core import keys
from hami.core.errors import DecodeError
from hami.core.pod_annotations import decode_mig_uuid, decode_pod_single_device_v28, has_mig_suffix
from hami.k8s.objects import RawPod
from hami.monitor.containers import ContainerReading, ContainerScanner, ScanResult
from hami.monitor.feedback import FeedbackReport, run_feedback
from hami.monitor.gpuinfo import GpuInfoSource, HostGpu
from hami.monitor.metrics import ContainerUsage, MigDevice, MonitorSnapshot, VDeviceUsage
from hami.monitor.pods import PodSource

logger = logging.getLogger(__name__)

DEFAULT_CONTAINERS_DIR = Path("/usr/local/vgpu/containers")
DEFAULT_MIG_LOCK = Path("/tmp/hami/hami-mig-apply.lock")


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    node_name: str
    containers_dir: Path = DEFAULT_CONTAINERS_DIR
    scan_interval: float = 5.0  # seconds; HAMi's Update + feedback period
    cleanup_grace: float = 300.0  # seconds a directory of an unknown pod survives (HAMi: resync 5 m)
    feedback: bool = True
    mig_lock_file: Path | None = DEFAULT_MIG_LOCK  # feedback pauses while it exists


def container_usage(reading: ContainerReading, pod: RawPod) -> ContainerUsage | None:
    """Join one region with its pod; None when the directory's container is not in the pod spec."""
    meta = pod.get("metadata", {})
    names = {c.get("name") for c in pod.get("spec", {}).get("containers", [])}
    if reading.container not in names:
        return None
    region = reading.region
    devices = []
    for d in range(region.device_num):
        memory = region.memory_used(d)
        devices.append(
            VDeviceUsage(
                index=d,
                uuid=region.uuids[d],
                limit=region.limit[d],
                used=memory.total,
                context=memory.context_size,
                module=memory.module_size,
                data=memory.data_size,
                offset=memory.offset,
                sm_util=region.sm_util(d),
            )
        )
    return ContainerUsage(
        namespace=meta.get("namespace", ""),
        pod=meta.get("name", ""),
        pod_uid=reading.pod_uid,
        container=reading.container,
        devices=tuple(devices),
        last_kernel_time=region.last_kernel_time,
        priority=region.priority,
        utilization_switch=region.utilization_switch,
        recent_kernel=region.recent_kernel,
        live_processes=len(region.live_procs),
    )


def mig_devices(
    pods: Mapping[str, RawPod], instance_id: Callable[[str, int], int | None]
) -> tuple[MigDevice, ...]:
    """``MigInfo`` rows: dynamic-MIG devices in ``hami.io/vgpu-devices-allocated``.

    As HAMi 2.8, the decoded (collapsed) container entry ``i`` is attributed to
    ``spec.containers[i]``; this is right unless a non-GPU container precedes a GPU one.
    """
    out: list[MigDevice] = []
    for pod in pods.values():
        meta = pod.get("metadata", {})
        value = meta.get("annotations", {}).get(keys.VGPU_DEVICES_ALLOCATED)
        if not value or "[" not in value:
            continue
        containers = pod.get("spec", {}).get("containers", [])
        for i, devices in enumerate(decode_pod_single_device_v28(value)):
            if i >= len(containers):
                break
            for device in devices:
                if not has_mig_suffix(device.uuid):
                    continue
                try:
                    ref = decode_mig_uuid(device.uuid)
                except DecodeError as e:
                    logger.debug("pod %s: %s", meta.get("name"), e)
                    continue
                iid = instance_id(ref.device_id, ref.instance)
                if iid is None:
                    continue
                out.append(
                    MigDevice(
                        namespace=meta.get("namespace", ""),
                        pod=meta.get("name", ""),
                        container=containers[i].get("name", ""),
                        position=ref.instance,
                        parent_uuid=ref.device_id,
                        instance_id=iid,
                    )
                )
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pass:
    scan: ScanResult
    feedback: FeedbackReport | None
    host_gpus: tuple[HostGpu, ...]
    mig: tuple[MigDevice, ...]


class MonitorService:
    def __init__(
        self,
        config: MonitorConfig,
        pods: PodSource,
        gpus: GpuInfoSource,
        *,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._pods = pods
        self._gpus = gpus
        self._wall_time = wall_time
        self._scanner = ContainerScanner(config.containers_dir, grace_seconds=config.cleanup_grace)
        self._snapshot: MonitorSnapshot | None = None
        self._inflight: asyncio.Future[_Pass] | None = None
        self.last_feedback: FeedbackReport | None = None
        self.passes = 0

    def snapshot(self) -> MonitorSnapshot | None:
        """The latest published snapshot (the collector's provider)."""
        return self._snapshot

    async def tick(self) -> MonitorSnapshot:
        """One scan + feedback + NVML pass, off the loop; publishes and returns the snapshot."""
        synced = self._pods.synced()
        pods = self._pods.pods()
        now = self._wall_time()
        # Shielded: a cancelled tick leaves the thread running; aclose() waits for it before unmapping.
        inflight = asyncio.ensure_future(asyncio.to_thread(self._pass, pods if synced else None, pods, now))
        self._inflight = inflight
        result = await asyncio.shield(inflight)
        containers = []
        for reading in result.scan.readings:
            pod = pods.get(reading.pod_uid)
            if pod is None:
                continue
            usage = container_usage(reading, pod)
            if usage is not None:
                containers.append(usage)
        snapshot = MonitorSnapshot(
            node=self.config.node_name,
            taken_at=now,
            host_gpus=result.host_gpus,
            containers=tuple(containers),
            mig_devices=result.mig,
            unreadable=len(result.scan.unreadable),
            waiting=len(result.scan.waiting),
        )
        self._snapshot = snapshot
        self.last_feedback = result.feedback
        self.passes += 1
        return snapshot

    def _pass(self, live: Mapping[str, RawPod] | None, pods: Mapping[str, RawPod], now: float) -> _Pass:
        scan = self._scanner.scan(live, now)
        feedback = None
        if self.config.feedback and not self._mig_locked():
            loaded = self._scanner.loaded
            targets = {r.directory: loaded[r.directory] for r in scan.readings if r.directory in loaded}
            feedback = run_feedback(targets)
        try:
            host = self._gpus.host_gpus()
        except Exception:
            logger.warning("reading host GPUs failed", exc_info=True)
            host = ()
        try:
            mig = mig_devices(pods, self._gpus.mig_gpu_instance_id)
        except Exception:
            logger.warning("reading MIG devices failed", exc_info=True)
            mig = ()
        return _Pass(scan=scan, feedback=feedback, host_gpus=host, mig=mig)

    def _mig_locked(self) -> bool:
        lock = self.config.mig_lock_file
        return lock is not None and lock.exists()

    async def run(self, *, on_first_pass: Callable[[], None] | None = None) -> None:
        """Scan forever; one failing pass is logged and the next one runs on schedule.

        ``on_first_pass`` runs once after the first pass, failed or not (readiness).
        """
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.error("monitor pass failed", exc_info=True)
            if on_first_pass is not None:
                on_first_pass()
                on_first_pass = None
            await asyncio.sleep(self.config.scan_interval)

    async def aclose(self) -> None:
        """Wait for an in-flight pass, then unmap every region and release NVML (after ``run``)."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None and not inflight.done():
            try:
                await asyncio.shield(inflight)
            except Exception:
                logger.debug("the last pass failed during shutdown", exc_info=True)
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._scanner.close()
        self._gpus.close()

    # -- console ------------------------------------------------------------------------------

    def describe(self) -> str:
        """Human-readable state for the aiomonitor ``containers`` command."""
        snap = self._snapshot
        if snap is None:
            return "no scan yet"
        lines = [
            f"node {snap.node}: {len(snap.containers)} containers, {snap.waiting} waiting for a region, "
            f"{snap.unreadable} unreadable, pod source synced: {self._pods.synced()}"
        ]
        for ctr in snap.containers:
            lines.append(
                f"{ctr.namespace}/{ctr.pod}/{ctr.container} priority={ctr.priority} "
                f"switch={ctr.utilization_switch} recent_kernel={ctr.recent_kernel} live={ctr.live_processes}"
            )
            for dev in ctr.devices:
                over = f" OVER LIMIT by {dev.over_limit}" if dev.over_limit else ""
                lines.append(
                    f"  [{dev.index}] {dev.uuid} used={dev.used} limit={dev.limit} sm={dev.sm_util}%{over}"
                )
        for gpu in snap.host_gpus:
            lines.append(
                f"GPU {gpu.index} {gpu.uuid} {gpu.name}: used={gpu.memory_used} util={gpu.utilization}%"
            )
        return "\n".join(lines)
