"""NVIDIA GPUs through NVML (``pynvml`` from nvidia-ml-py).

The NVML module is injected (``NvmlBackend(pynvml)`` in production, a recorded NVML in
tests), so nothing here imports pynvml at module level. Every NVML call runs in a worker
thread: discovery and topology through :func:`asyncio.to_thread`, and the XID watcher in a
dedicated thread because ``nvmlEventSetWait`` blocks for up to its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hami.deviceplugin.backend import (
    EVENT_XID_CRITICAL,
    HEALTH_EVENT_MASK,
    HealthEvent,
    HealthPolicy,
    PhysicalGpu,
    Topology,
)
from hami.runtime.nvmlinfo import normalize_bus_id, nvml_text, read_numa_node

logger = logging.getLogger(__name__)

MIB = 1024 * 1024

# nvmlDeviceGetTopologyCommonAncestor level -> HAMi pair score (node spec §3.4).
_LEVEL_SCORES = {0: 60, 10: 50, 20: 40, 30: 30, 40: 20, 50: 10}
_NVLINK_SCORE = 100
# HAMi scores at most 18 links per pair (NVML_NVLINK_MAX_LINKS of its go-nvml version).
_HAMI_MAX_NVLINKS = 18


@dataclass(frozen=True, slots=True)
class _WatcherExit:
    error: BaseException | None


class NvmlBackend:
    """:class:`~hami.deviceplugin.backend.DeviceBackend` over an NVML module object."""

    def __init__(
        self,
        nvml: Any,
        *,
        policy: HealthPolicy | None = None,
        sysfs_root: Path = Path("/sys"),
        event_timeout_ms: int = 5000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._policy = policy or HealthPolicy()
        self._sysfs_root = sysfs_root
        self._event_timeout_ms = event_timeout_ms
        self._clock = clock
        self._init_lock = threading.Lock()
        self._initialized = False

    # -- lifecycle -------------------------------------------------------------------------

    def _ensure_init(self) -> None:
        with self._init_lock:
            if not self._initialized:
                self._nvml.nvmlInit()
                self._initialized = True

    def _shutdown(self) -> None:
        with self._init_lock:
            if self._initialized:
                self._initialized = False
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError as e:
                    logger.warning("nvmlShutdown failed: %s", e)

    async def close(self) -> None:
        await asyncio.to_thread(self._shutdown)

    def _is_error(self, e: BaseException, code_name: str) -> bool:
        return getattr(e, "value", None) == getattr(self._nvml, code_name, object())

    # -- discovery -------------------------------------------------------------------------

    async def devices(self) -> tuple[PhysicalGpu, ...]:
        return await asyncio.to_thread(self._discover)

    def _discover(self) -> tuple[PhysicalGpu, ...]:
        self._ensure_init()
        nv = self._nvml
        gpus = [self._describe(nv.nvmlDeviceGetHandleByIndex(i), i) for i in range(nv.nvmlDeviceGetCount())]
        return tuple(sorted(gpus, key=lambda g: g.index))

    def _describe(self, handle: Any, position: int) -> PhysicalGpu:
        nv = self._nvml
        uuid = nvml_text(nv.nvmlDeviceGetUUID(handle))
        try:
            index = int(nv.nvmlDeviceGetIndex(handle))
        except nv.NVMLError:
            index = position
        try:
            memory_mib = int(nv.nvmlDeviceGetMemoryInfo(handle).total) // MIB
        except nv.NVMLError as e:
            # HAMi logs and registers the device anyway; the scheduler then sees 0 MiB.
            logger.error("GPU %s: cannot read memory size: %s", uuid, e)
            memory_mib = 0
        try:
            bus_id = normalize_bus_id(nv.nvmlDeviceGetPciInfo(handle).busId)
        except nv.NVMLError as e:
            logger.warning("GPU %s: no PCI info: %s", uuid, e)
            bus_id = ""
        try:
            minor: int | None = int(nv.nvmlDeviceGetMinorNumber(handle))
        except nv.NVMLError:
            minor = None
        try:
            major, minor_cc = nv.nvmlDeviceGetCudaComputeCapability(handle)
            capability = f"{int(major)}.{int(minor_cc)}"
        except nv.NVMLError:
            capability = ""
        try:
            current_mig, _pending = nv.nvmlDeviceGetMigMode(handle)
            mig_enabled = int(current_mig) == int(getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1))
        except nv.NVMLError:
            mig_enabled = False  # NOT_SUPPORTED on GPUs without MIG
        return PhysicalGpu(
            uuid=uuid,
            index=index,
            name=nvml_text(nv.nvmlDeviceGetName(handle)),
            memory_mib=memory_mib,
            pci_bus_id=bus_id,
            numa_node=read_numa_node(self._sysfs_root, bus_id),
            minor_number=minor,
            compute_capability=capability,
            mig_enabled=mig_enabled,
        )

    # -- topology --------------------------------------------------------------------------

    async def topology(self) -> Topology:
        return await asyncio.to_thread(self._topology)

    def _nvlinks_to(self, handle: Any, peer_bus: str) -> int:
        nv = self._nvml
        count = 0
        for link in range(min(_HAMI_MAX_NVLINKS, int(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)))):
            try:
                if int(nv.nvmlDeviceGetNvLinkState(handle, link)) != int(
                    getattr(nv, "NVML_FEATURE_ENABLED", 1)
                ):
                    continue
                remote = normalize_bus_id(nv.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
            except nv.NVMLError:
                break  # no (more) NVLinks on this GPU
            if remote and remote == peer_bus:
                count += 1
        return count

    def _topology(self) -> Topology:
        self._ensure_init()
        nv = self._nvml
        gpus = self._discover()
        handles = {g.uuid: nv.nvmlDeviceGetHandleByUUID(g.uuid) for g in gpus}
        scores: dict[str, dict[str, int]] = {g.uuid: {} for g in gpus}
        for a in gpus:
            for b in gpus:
                if a.uuid == b.uuid:
                    continue
                try:
                    level = int(nv.nvmlDeviceGetTopologyCommonAncestor(handles[a.uuid], handles[b.uuid]))
                except nv.NVMLError as e:
                    logger.warning("no topology between %s and %s: %s", a.uuid, b.uuid, e)
                    level = -1
                score = _LEVEL_SCORES.get(level, 0)
                score += _NVLINK_SCORE * self._nvlinks_to(handles[a.uuid], b.pci_bus_id)
                scores[a.uuid][b.uuid] = score
        return Topology(scores=scores)

    # -- health ----------------------------------------------------------------------------

    async def health_events(self) -> AsyncIterator[HealthEvent]:
        if not self._policy.enabled:
            await asyncio.Event().wait()  # checks disabled: nothing to report, ever
        gpus = await self.devices()
        loop = asyncio.get_running_loop()
        # Events, then one _WatcherExit when the thread ends.
        queue: asyncio.Queue[HealthEvent | _WatcherExit] = asyncio.Queue()
        stop = threading.Event()

        def post(item: HealthEvent | _WatcherExit) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                stop.set()

        def run() -> None:
            error: BaseException | None = None
            try:
                self._watch_health(gpus, stop, post)
            except BaseException as e:  # handed to the event loop, re-raised there
                error = e
            post(_WatcherExit(error))

        thread = threading.Thread(target=run, name="nvml-xid-watcher", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _WatcherExit):
                    if item.error is not None:
                        raise RuntimeError(f"NVML health watcher failed: {item.error}") from item.error
                    return
                yield item
        finally:
            stop.set()
            # The thread leaves within one nvmlEventSetWait timeout; wait for it off the loop.
            await asyncio.shield(asyncio.to_thread(thread.join, self._event_timeout_ms / 1000 + 1))

    def _watch_health(
        self,
        gpus: Iterable[PhysicalGpu],
        stop: threading.Event,
        emit: Callable[[HealthEvent], None],
    ) -> None:
        """The blocking XID loop (node spec §5), run in its own thread until ``stop`` is set."""
        self._ensure_init()
        nv = self._nvml
        gpus = tuple(gpus)
        policy = self._policy
        event_set = nv.nvmlEventSetCreate()
        # uuid -> clock() of the last critical event, for devices that may recover.
        failing: dict[str, float] = {}
        try:
            for gpu in gpus:
                try:
                    handle = nv.nvmlDeviceGetHandleByUUID(gpu.uuid)
                    supported = int(nv.nvmlDeviceGetSupportedEventTypes(handle))
                    nv.nvmlDeviceRegisterEvents(handle, HEALTH_EVENT_MASK & supported, event_set)
                except nv.NVMLError as e:
                    if self._is_error(e, "NVML_ERROR_NOT_SUPPORTED"):
                        # Too old for events: nothing to watch, but not broken either.
                        logger.warning("GPU %s does not support health events: %s", gpu.uuid, e)
                        continue
                    logger.error("GPU %s: cannot register for health events: %s", gpu.uuid, e)
                    emit(HealthEvent(uuid=gpu.uuid, healthy=False, reason=f"event registration failed: {e}"))
            known = {g.uuid for g in gpus}
            while not stop.is_set():
                self._recover(failing, emit)
                try:
                    data = nv.nvmlEventSetWait_v2(event_set, self._event_timeout_ms)
                except nv.NVMLError as e:
                    if self._is_error(e, "NVML_ERROR_TIMEOUT"):
                        continue
                    logger.error("nvmlEventSetWait failed, marking all GPUs unhealthy: %s", e)
                    now = self._clock()
                    for gpu in gpus:
                        failing[gpu.uuid] = now
                        emit(HealthEvent(uuid=gpu.uuid, healthy=False, reason=f"event wait failed: {e}"))
                    stop.wait(self._event_timeout_ms / 1000)
                    continue
                if int(data.eventType) != EVENT_XID_CRITICAL:
                    continue
                xid = int(data.eventData)
                if not policy.is_critical_xid(xid):
                    logger.info("ignoring application XID %d", xid)
                    continue
                try:
                    uuid = nvml_text(nv.nvmlDeviceGetUUID(data.device))
                except nv.NVMLError as e:
                    logger.error("XID %d on an unidentifiable GPU (%s): marking all unhealthy", xid, e)
                    now = self._clock()
                    for gpu in gpus:
                        failing[gpu.uuid] = now
                        emit(HealthEvent(uuid=gpu.uuid, healthy=False, reason=f"XID {xid}", xid=xid))
                    continue
                if uuid not in known:
                    logger.info("XID %d on GPU %s, which this plugin does not manage", xid, uuid)
                    continue
                logger.warning("XID %d on GPU %s: marking it unhealthy", xid, uuid)
                failing[uuid] = self._clock()
                emit(HealthEvent(uuid=uuid, healthy=False, reason=f"XID {xid}", xid=xid))
        finally:
            try:
                nv.nvmlEventSetFree(event_set)
            except nv.NVMLError as e:
                logger.warning("nvmlEventSetFree failed: %s", e)

    def _recover(self, failing: dict[str, float], emit: Callable[[HealthEvent], None]) -> None:
        """Healthy again after a quiet period, if the GPU still answers NVML."""
        delay = self._policy.recovery_after_s
        if delay <= 0 or not failing:
            return
        now = self._clock()
        nv = self._nvml
        for uuid, since in sorted(failing.items()):
            if now - since < delay:
                continue
            try:
                nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByUUID(uuid))
            except nv.NVMLError as e:
                logger.info("GPU %s still failing NVML queries: %s", uuid, e)
                failing[uuid] = now
                continue
            del failing[uuid]
            logger.info("GPU %s quiet for %.0f s and answering NVML: healthy again", uuid, delay)
            emit(HealthEvent(uuid=uuid, healthy=True, reason="recovered"))
