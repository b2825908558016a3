"""Where the DRA plugin's GPUs come from: a mock spec or NVML, behind :class:`GpuSource`.

The DRA plugin only needs an inventory (no health stream): what each GPU is called, how much
memory it has, and the attributes it publishes. Mock GPUs come from :mod:`hami.core.mockgpu`, as
the device plugin's mock backend's do, so a mock node shows the same GPUs whichever plugin serves
it; the mock file is the one the embedded cluster writes (``{"count", "model", "memory"}`` or an
explicit ``{"gpus": [...]}`` list).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from hami.core.errors import ConfigError
from hami.core.mockgpu import (
    DEFAULT_MOCK_MEMORY_MIB,
    DEFAULT_MOCK_MODEL,
    MockGpu,
    mock_gpu_specs,
    mock_gpu_uuid,
    parse_mock_gpu_document,
    parse_mock_gpu_text,
)
from hami.runtime.nvmlinfo import normalize_bus_id, nvml_text, read_numa_node

logger = logging.getLogger(__name__)

MIB: Final = 2**20
DEFAULT_MODEL: Final = DEFAULT_MOCK_MODEL
DEFAULT_MEMORY_MIB: Final = DEFAULT_MOCK_MEMORY_MIB


@dataclass(frozen=True, slots=True, kw_only=True)
class DraGpu:
    """One full GPU as the DRA plugin publishes it."""

    uuid: str
    index: int
    name: str  # NVML product name
    memory_bytes: int
    minor: int | None = None  # /dev/nvidia<minor>
    numa_node: int | None = None  # None: the platform reports none (normal on VMs)
    compute_capability: str = ""  # "major.minor"
    pci_bus_id: str = ""  # "0000:3b:00.0"
    driver_version: str = ""

    @property
    def device_name(self) -> str:
        """The ResourceSlice device name (a DNS label): ``hami-gpu-<index>``."""
        return f"hami-gpu-{self.index}"

    @property
    def device_paths(self) -> tuple[str, ...]:
        return () if self.minor is None else (f"/dev/nvidia{self.minor}",)


class GpuSource(Protocol):
    """The node's GPUs, in index order; blocking work stays off the event loop."""

    async def gpus(self) -> tuple[DraGpu, ...]: ...

    async def close(self) -> None: ...


def mock_uuid(node_name: str, index: int) -> str:
    return mock_gpu_uuid(node_name, index)


def dra_gpus(specs: tuple[MockGpu, ...]) -> tuple[DraGpu, ...]:
    return tuple(
        DraGpu(
            uuid=g.uuid,
            index=g.index,
            name=g.model,
            memory_bytes=g.memory_mib * MIB,
            minor=g.index,
            numa_node=g.numa_node,
            compute_capability=g.compute_capability,
            pci_bus_id=g.pci_bus_id,
        )
        for g in specs
    )


def mock_gpus(
    node_name: str, count: int, *, model: str = DEFAULT_MODEL, memory_mib: int = DEFAULT_MEMORY_MIB
) -> tuple[DraGpu, ...]:
    return dra_gpus(mock_gpu_specs(node_name, count, model=model, memory_mib=memory_mib))


def gpus_from_document(node_name: str, doc: object, *, source: str) -> tuple[DraGpu, ...]:
    """``{"count", "model", "memory"}`` or ``{"gpus": [{uuid?, name|model?, memory?, numa?,
    computeCapability?, pciBusId?}]}`` (memory in MiB; :mod:`hami.core.mockgpu`)."""
    return dra_gpus(parse_mock_gpu_document(node_name, doc, source=source))


def load_gpu_file(node_name: str, path: Path) -> tuple[DraGpu, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), f"cannot read mock GPU file: {e}") from e
    return dra_gpus(parse_mock_gpu_text(node_name, text, source=str(path)))


class MockGpuSource:
    """A fixed inventory (GPU-less clusters, CI)."""

    def __init__(self, gpus: tuple[DraGpu, ...]) -> None:
        self._gpus = gpus

    async def gpus(self) -> tuple[DraGpu, ...]:
        return self._gpus

    async def close(self) -> None:
        return None


class NvmlGpuSource:
    """GPUs through an NVML module object (``pynvml`` from nvidia-ml-py, or a test double)."""

    def __init__(self, nvml: Any, *, sysfs_root: Path = Path("/sys")) -> None:
        self._nvml = nvml
        self._sysfs_root = sysfs_root
        self._lock = threading.Lock()
        self._initialized = False

    async def gpus(self) -> tuple[DraGpu, ...]:
        return await asyncio.to_thread(self._discover)

    async def close(self) -> None:
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        with self._lock:
            if self._initialized:
                self._initialized = False
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError as e:
                    logger.warning("nvmlShutdown failed: %s", e)

    def _discover(self) -> tuple[DraGpu, ...]:
        nv = self._nvml
        with self._lock:
            if not self._initialized:
                nv.nvmlInit()
                self._initialized = True
        try:
            driver = nvml_text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError:
            driver = ""
        gpus = [
            self._describe(nv.nvmlDeviceGetHandleByIndex(i), i, driver)
            for i in range(nv.nvmlDeviceGetCount())
        ]
        return tuple(sorted(gpus, key=lambda g: g.index))

    def _describe(self, handle: Any, position: int, driver: str) -> DraGpu:
        nv = self._nvml
        uuid = nvml_text(nv.nvmlDeviceGetUUID(handle))
        try:
            index = int(nv.nvmlDeviceGetIndex(handle))
        except nv.NVMLError:
            index = position
        try:
            memory = int(nv.nvmlDeviceGetMemoryInfo(handle).total)
        except nv.NVMLError as e:
            logger.error("GPU %s: cannot read memory size: %s", uuid, e)
            memory = 0
        try:
            bus_id = normalize_bus_id(nv.nvmlDeviceGetPciInfo(handle).busId)
        except nv.NVMLError:
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
        return DraGpu(
            uuid=uuid,
            index=index,
            name=nvml_text(nv.nvmlDeviceGetName(handle)),
            memory_bytes=memory,
            minor=minor,
            numa_node=read_numa_node(self._sysfs_root, bus_id),
            compute_capability=capability,
            pci_bus_id=bus_id,
            driver_version=driver,
        )
