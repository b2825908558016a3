"""Where the DRA plugin's GPUs come from: a mock spec or NVML, behind :class:`GpuSource`.

The DRA plugin only needs an inventory (no health stream): what each GPU is called, how much
memory it has, and the attributes it publishes. Mock UUIDs are derived exactly like the device
plugin's mock backend (same namespace, ``<node>/<index>``), so a mock node shows the same GPUs
whichever plugin serves it; the mock file format is the one the embedded cluster writes
(``{"count", "model", "memory"}``) or an explicit ``{"gpus": [...]}`` list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import yaml

from hami.core.errors import ConfigError

logger = logging.getLogger(__name__)

MIB: Final = 2**20
DEFAULT_MODEL: Final = "NVIDIA A100-PCIE-40GB"
DEFAULT_MEMORY_MIB: Final = 40960
# Same namespace as hami.deviceplugin.backends.mock: one mock node, one set of UUIDs.
_MOCK_NAMESPACE: Final = uuidlib.UUID("6f1d3a52-6a43-4a3e-9c1b-2f0f3e5a7d11")


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
    return "GPU-" + str(uuidlib.uuid5(_MOCK_NAMESPACE, f"{node_name}/{index}"))


def _int(entry: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}", f"expected an integer, got {value!r}")
    return value


def mock_gpus(
    node_name: str, count: int, *, model: str = DEFAULT_MODEL, memory_mib: int = DEFAULT_MEMORY_MIB
) -> tuple[DraGpu, ...]:
    if count < 0:
        raise ConfigError("--mock-gpus", f"must be >= 0, got {count}")
    if memory_mib <= 0:
        raise ConfigError("--mock-memory", f"must be > 0 MiB, got {memory_mib}")
    if not model.strip():
        raise ConfigError("--mock-model", "must not be empty")
    return tuple(
        DraGpu(
            uuid=mock_uuid(node_name, i),
            index=i,
            name=model,
            memory_bytes=memory_mib * MIB,
            minor=i,
            compute_capability="8.0",
            pci_bus_id=f"0000:{0x10 + i:02x}:00.0",
        )
        for i in range(count)
    )


def gpus_from_document(node_name: str, doc: object, *, source: str) -> tuple[DraGpu, ...]:
    """``{"count", "model", "memory"}`` or ``{"gpus": [{uuid?, name|model?, memory?, numa?,
    computeCapability?, pciBusId?}]}`` (memory in MiB)."""
    if not isinstance(doc, Mapping):
        raise ConfigError(source, "expected a mapping at the top level")
    if "gpus" not in doc:
        return mock_gpus(
            node_name,
            _int(doc, "count", source, 0),
            model=str(doc.get("model", DEFAULT_MODEL)),
            memory_mib=_int(doc, "memory", source, DEFAULT_MEMORY_MIB),
        )
    entries = doc["gpus"]
    if not isinstance(entries, list):
        raise ConfigError(f"{source}.gpus", "expected a list")
    out: list[DraGpu] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}.gpus[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(where, "expected a mapping")
        uuid = str(entry.get("uuid") or mock_uuid(node_name, i))
        if uuid in seen:
            raise ConfigError(f"{where}.uuid", f"duplicate UUID {uuid}")
        seen.add(uuid)
        memory = _int(entry, "memory", where, DEFAULT_MEMORY_MIB)
        if memory <= 0:
            raise ConfigError(f"{where}.memory", f"must be > 0 MiB, got {memory}")
        numa = entry.get("numa")
        if numa is not None and (isinstance(numa, bool) or not isinstance(numa, int)):
            raise ConfigError(f"{where}.numa", f"expected an integer or null, got {numa!r}")
        out.append(
            DraGpu(
                uuid=uuid,
                index=i,
                name=str(entry.get("name", entry.get("model", DEFAULT_MODEL))),
                memory_bytes=memory * MIB,
                minor=i,
                numa_node=numa if numa is None or numa >= 0 else None,
                compute_capability=str(entry.get("computeCapability", "8.0")),
                pci_bus_id=str(entry.get("pciBusId", f"0000:{0x10 + i:02x}:00.0")),
            )
        )
    return tuple(out)


def load_gpu_file(node_name: str, path: Path) -> tuple[DraGpu, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), f"cannot read mock GPU file: {e}") from e
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(str(path), f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from e
    return gpus_from_document(node_name, doc, source=str(path))


class MockGpuSource:
    """A fixed inventory (GPU-less clusters, CI)."""

    def __init__(self, gpus: tuple[DraGpu, ...]) -> None:
        self._gpus = gpus

    async def gpus(self) -> tuple[DraGpu, ...]:
        return self._gpus

    async def close(self) -> None:
        return None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    return str(value).rstrip("\x00")


def _bus_id(raw: object) -> str:
    """NVML "00000000:3B:00.0" → sysfs "0000:3b:00.0"; "" when unparsable."""
    parts = _text(raw).strip().lower().split(":")
    if len(parts) != 3 or not parts[0]:
        return ""
    return f"{parts[0][-4:].rjust(4, '0')}:{parts[1]}:{parts[2]}"


def _numa(sysfs_root: Path, bus_id: str) -> int | None:
    if not bus_id:
        return None
    try:
        value = int((sysfs_root / "bus" / "pci" / "devices" / bus_id / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value >= 0 else None


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
            driver = _text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError:
            driver = ""
        gpus = [
            self._describe(nv.nvmlDeviceGetHandleByIndex(i), i, driver)
            for i in range(nv.nvmlDeviceGetCount())
        ]
        return tuple(sorted(gpus, key=lambda g: g.index))

    def _describe(self, handle: Any, position: int, driver: str) -> DraGpu:
        nv = self._nvml
        uuid = _text(nv.nvmlDeviceGetUUID(handle))
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
            bus_id = _bus_id(nv.nvmlDeviceGetPciInfo(handle).busId)
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
            name=_text(nv.nvmlDeviceGetName(handle)),
            memory_bytes=memory,
            minor=minor,
            numa_node=_numa(self._sysfs_root, bus_id),
            compute_capability=capability,
            pci_bus_id=bus_id,
            driver_version=driver,
        )
