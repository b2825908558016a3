"""Host GPU facts for the monitor's ``HostGPUMemoryUsage`` / ``HostCoreUtilization`` and ``MigInfo``.

``GpuInfoSource`` is a blocking port (NVML calls block): the monitor calls it through
``asyncio.to_thread``. :class:`NvmlGpuInfo` reads NVML via ``pynvml`` (nvidia-ml-py; the module is
injectable so tests run on a fake built from fixtures/h100/nvml.json); :class:`FakeGpuInfo`
serves fixed values for the mock backend.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hami.core.mockgpu import MockGpu, mock_gpu_uuid
from hami.runtime.nvmlinfo import nvml_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostGpu:
    index: int  # NVML index
    uuid: str
    name: str  # NVML name, e.g. "NVIDIA H100 80GB HBM3"
    memory_used: int  # bytes (NVML memory info v1 "used")
    memory_total: int  # bytes
    utilization: int  # percent (NVML utilization.gpu)

    @property
    def devicetype(self) -> str:
        # HAMi 2.8 always prefixes the vendor: "NVIDIA-NVIDIA A100-PCIE-40GB".
        return f"NVIDIA-{self.name}"


class GpuInfoSource(Protocol):
    def host_gpus(self) -> tuple[HostGpu, ...]:
        """Every GPU of the host; blocking."""
        ...

    def mig_gpu_instance_id(self, parent_uuid: str, position: int) -> int | None:
        """GPU instance id of the ``position``-th MIG device of ``parent_uuid``; None if unknown."""
        ...

    def close(self) -> None: ...


class FakeGpuInfo:
    """Fixed GPUs (mock backend, tests)."""

    def __init__(
        self, gpus: Iterable[HostGpu] = (), *, mig_instances: Mapping[tuple[str, int], int] | None = None
    ):
        self._gpus = tuple(gpus)
        self._mig = dict(mig_instances or {})
        self.closed = False

    def host_gpus(self) -> tuple[HostGpu, ...]:
        return self._gpus

    def mig_gpu_instance_id(self, parent_uuid: str, position: int) -> int | None:
        return self._mig.get((parent_uuid, position))

    def close(self) -> None:
        self.closed = True


def host_gpus_from_mock(gpus: Iterable[MockGpu]) -> tuple[HostGpu, ...]:
    """Idle host GPUs for mock GPUs (:mod:`hami.core.mockgpu`): the device plugin's UUIDs."""
    return tuple(
        HostGpu(
            index=g.index,
            uuid=g.uuid,
            name=g.model,
            memory_used=0,
            memory_total=g.memory_mib * 1048576,
            utilization=0,
        )
        for g in gpus
    )


def mock_gpus(
    count: int,
    *,
    name: str = "NVIDIA H100 80GB HBM3",
    memory_total: int = 85520809984,
    node_name: str = "",
) -> tuple[HostGpu, ...]:
    """Deterministic idle GPUs for ``--backend mock``; UUIDs as the device plugin's mock backend
    derives them for ``node_name``."""
    return tuple(
        HostGpu(
            index=i,
            uuid=mock_gpu_uuid(node_name, i),
            name=name,
            memory_used=0,
            memory_total=memory_total,
            utilization=0,
        )
        for i in range(count)
    )


class NvmlGpuInfo:
    """NVML reader; initialises NVML on first use and shuts it down on ``close``.

    HAMi 2.8 initialises NVML per scrape; holding it open is cheaper and equivalent. Calls are
    serialised by a lock because the monitor may read from more than one worker thread.
    """

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml = nvml
        self._lock = threading.Lock()
        self._initialised = False

    def _ensure_init(self) -> None:
        if not self._initialised:
            self._nvml.nvmlInit()
            self._initialised = True

    def host_gpus(self) -> tuple[HostGpu, ...]:
        nvml = self._nvml
        with self._lock:
            self._ensure_init()
            gpus = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                try:
                    utilization = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except nvml.NVMLError as e:  # e.g. NotSupported on some MIG-enabled parts
                    logger.debug("GPU %d: utilisation unavailable: %s", index, e)
                    utilization = 0
                gpus.append(
                    HostGpu(
                        index=index,
                        uuid=nvml_text(nvml.nvmlDeviceGetUUID(handle)),
                        name=nvml_text(nvml.nvmlDeviceGetName(handle)),
                        memory_used=int(memory.used),
                        memory_total=int(memory.total),
                        utilization=utilization,
                    )
                )
            return tuple(gpus)

    def mig_gpu_instance_id(self, parent_uuid: str, position: int) -> int | None:
        nvml = self._nvml
        with self._lock:
            self._ensure_init()
            try:
                parent = nvml.nvmlDeviceGetHandleByUUID(parent_uuid)
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, position)
                return int(nvml.nvmlDeviceGetGpuInstanceId(mig))
            except nvml.NVMLError as e:
                logger.debug("MIG device %s/%d: %s", parent_uuid, position, e)
                return None

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                self._initialised = False
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError:
                    logger.warning("nvmlShutdown failed", exc_info=True)
