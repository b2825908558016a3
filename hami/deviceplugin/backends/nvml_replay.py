"""A recorded NVML: replays a capture such as ``fixtures/h100/nvml.json`` through the pynvml API.

It exposes the subset of pynvml that :class:`~hami.deviceplugin.backends.nvml.NvmlBackend`
calls, with the same names, return shapes and error class, so the backend is tested (and can
be dry-run with ``scripts/nvml_probe.py --replay``) without a GPU. Calls that the driver
refused during the capture raise the recorded NVML error. Events are injected with
:meth:`RecordedNvml.inject_event`; :meth:`RecordedNvml.lose_gpu` makes a GPU stop answering.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

_ERROR_CODE = re.compile(r"nvmlReturn=(\d+)")

# Capture keys of calls that can fail -> the pynvml function that failed.
_ERROR_KEYS = {
    "memory_v1": "nvmlDeviceGetMemoryInfo",
    "pci": "nvmlDeviceGetPciInfo",
    "minor_number": "nvmlDeviceGetMinorNumber",
    "cuda_compute_capability": "nvmlDeviceGetCudaComputeCapability",
    "mig_mode": "nvmlDeviceGetMigMode",
    "numa_node_id": "nvmlDeviceGetNumaNodeId",
    "supported_event_types": "nvmlDeviceGetSupportedEventTypes",
}


class NVMLError(Exception):
    """Same shape as ``pynvml.NVMLError``: the NVML return code is in ``value``."""

    def __init__(self, value: int, message: str = "") -> None:
        self.value = value
        super().__init__(message or f"NVML error {value}")


@dataclass(frozen=True, slots=True)
class _Handle:
    position: int


@dataclass(frozen=True, slots=True)
class _EventSet:
    ident: int


class RecordedNvml:
    NVML_SUCCESS: ClassVar[int] = 0
    NVML_ERROR_UNINITIALIZED: ClassVar[int] = 1
    NVML_ERROR_INVALID_ARGUMENT: ClassVar[int] = 2
    NVML_ERROR_NOT_SUPPORTED: ClassVar[int] = 3
    NVML_ERROR_NOT_FOUND: ClassVar[int] = 6
    NVML_ERROR_TIMEOUT: ClassVar[int] = 10
    NVML_ERROR_GPU_IS_LOST: ClassVar[int] = 15
    NVML_FEATURE_ENABLED: ClassVar[int] = 1
    NVML_DEVICE_MIG_ENABLE: ClassVar[int] = 1
    NVML_NVLINK_MAX_LINKS: ClassVar[int] = 18
    NVML_TOPOLOGY_SYSTEM: ClassVar[int] = 50
    NVMLError = NVMLError

    def __init__(self, capture: Mapping[str, Any]) -> None:
        devices = capture.get("devices")
        if not isinstance(devices, Sequence) or not devices:
            raise ValueError("NVML capture has no 'devices' list")
        self._devices: list[Mapping[str, Any]] = list(devices)
        self._by_uuid = {str(d["uuid"]): i for i, d in enumerate(self._devices)}
        self._lock = threading.Lock()
        self._init_count = 0
        self._events: queue.Queue[tuple[int, int, int]] = queue.Queue()
        self._lost: set[int] = set()
        self._registered: dict[int, int] = {}  # position -> event mask
        self._next_set = 0
        self.calls: list[str] = []  # names of NVML functions called, for tests

    @classmethod
    def from_file(cls, path: Path) -> RecordedNvml:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    # -- plumbing --------------------------------------------------------------------------

    def _record(self, name: str) -> None:
        with self._lock:
            self.calls.append(name)
            if self._init_count == 0 and name not in {"nvmlInit", "nvmlShutdown"}:
                raise NVMLError(self.NVML_ERROR_UNINITIALIZED, "Uninitialized")

    def _device(self, handle: _Handle, call: str) -> Mapping[str, Any]:
        self._record(call)
        if handle.position in self._lost:
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST, "GPU is lost")
        device = self._devices[handle.position]
        for key, function in _ERROR_KEYS.items():
            if function == call and key in device.get("errors", {}):
                text = str(device["errors"][key])
                match = _ERROR_CODE.search(text)
                raise NVMLError(int(match.group(1)) if match else self.NVML_ERROR_NOT_SUPPORTED, text)
        return device

    # -- test controls ---------------------------------------------------------------------

    def inject_event(self, uuid: str, event_type: int, event_data: int) -> None:
        """Queue an event as the driver would report it (thread-safe)."""
        position = self._by_uuid[uuid]
        self._events.put((position, event_type, event_data))

    def lose_gpu(self, uuid: str, lost: bool = True) -> None:
        """Make every query about ``uuid`` fail with GPU_IS_LOST (or answer again)."""
        with self._lock:
            (self._lost.add if lost else self._lost.discard)(self._by_uuid[uuid])

    def registered_events(self, uuid: str) -> int:
        with self._lock:
            return self._registered.get(self._by_uuid[uuid], 0)

    # -- pynvml API subset -----------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._record("nvmlInit")
        with self._lock:
            self._init_count += 1

    def nvmlShutdown(self) -> None:
        self._record("nvmlShutdown")
        with self._lock:
            if self._init_count == 0:
                raise NVMLError(self.NVML_ERROR_UNINITIALIZED, "Uninitialized")
            self._init_count -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._record("nvmlDeviceGetCount")
        return len(self._devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._record("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self._devices):
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument")
        return _Handle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        self._record("nvmlDeviceGetHandleByUUID")
        key = uuid.decode() if isinstance(uuid, bytes) else uuid
        if key not in self._by_uuid:
            raise NVMLError(self.NVML_ERROR_NOT_FOUND, "Not Found")
        position = self._by_uuid[key]
        if position in self._lost:
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST, "GPU is lost")
        return _Handle(position)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return str(self._device(handle, "nvmlDeviceGetUUID")["uuid"])

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return str(self._device(handle, "nvmlDeviceGetName")["name"])

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        return int(self._device(handle, "nvmlDeviceGetIndex")["index"])

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> SimpleNamespace:
        memory = self._device(handle, "nvmlDeviceGetMemoryInfo")["memory_v1"]
        return SimpleNamespace(total=int(memory["total"]), free=int(memory["free"]), used=int(memory["used"]))

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> SimpleNamespace:
        pci = self._device(handle, "nvmlDeviceGetPciInfo")["pci"]
        # pynvml's structure hands char arrays back as bytes.
        return SimpleNamespace(busId=str(pci["busId"]).encode(), domain=pci.get("domain"), bus=pci.get("bus"))

    def nvmlDeviceGetMinorNumber(self, handle: _Handle) -> int:
        return int(self._device(handle, "nvmlDeviceGetMinorNumber")["minor_number"])

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:
        major, minor = self._device(handle, "nvmlDeviceGetCudaComputeCapability")["cuda_compute_capability"]
        return int(major), int(minor)

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> tuple[int, int]:
        current, pending = self._device(handle, "nvmlDeviceGetMigMode")["mig_mode"]
        return int(current), int(pending)

    def nvmlDeviceGetNumaNodeId(self, handle: _Handle) -> int:
        device = self._device(handle, "nvmlDeviceGetNumaNodeId")
        return int(device.get("numa_node_id", -1))

    def nvmlDeviceGetSupportedEventTypes(self, handle: _Handle) -> int:
        return int(self._device(handle, "nvmlDeviceGetSupportedEventTypes")["supported_event_types"])

    def nvmlDeviceGetTopologyCommonAncestor(self, first: _Handle, second: _Handle) -> int:
        self._device(first, "nvmlDeviceGetTopologyCommonAncestor")
        self._device(second, "nvmlDeviceGetTopologyCommonAncestor")
        levels = self._devices[first.position].get("topology_levels", {})
        peer = str(self._devices[second.position]["uuid"])
        return int(levels.get(peer, self.NVML_TOPOLOGY_SYSTEM))

    def nvmlDeviceGetNvLinkState(self, handle: _Handle, link: int) -> int:
        device = self._device(handle, "nvmlDeviceGetNvLinkState")
        links = device.get("nvlink_links")
        if not links:
            raise NVMLError(
                self.NVML_ERROR_NOT_SUPPORTED, str(device.get("nvlink", {}).get("stop_reason", ""))
            )
        if link >= len(links):
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument")
        return self.NVML_FEATURE_ENABLED if links[link] else 0

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: _Handle, link: int) -> SimpleNamespace:
        links = self._device(handle, "nvmlDeviceGetNvLinkRemotePciInfo").get("nvlink_links") or []
        if link >= len(links) or not links[link]:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED, "Not Supported")
        return SimpleNamespace(busId=str(links[link]).encode())

    def nvmlEventSetCreate(self) -> _EventSet:
        self._record("nvmlEventSetCreate")
        with self._lock:
            self._next_set += 1
            return _EventSet(self._next_set)

    def nvmlDeviceRegisterEvents(self, handle: _Handle, event_types: int, event_set: _EventSet) -> None:
        self._device(handle, "nvmlDeviceRegisterEvents")
        with self._lock:
            self._registered[handle.position] = self._registered.get(handle.position, 0) | int(event_types)

    def nvmlEventSetWait_v2(self, event_set: _EventSet, timeout_ms: int) -> SimpleNamespace:
        self._record("nvmlEventSetWait_v2")
        try:
            position, event_type, data = self._events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise NVMLError(self.NVML_ERROR_TIMEOUT, "Timeout") from None
        if event_type < 0:  # injected failure of the wait itself
            raise NVMLError(-event_type, "injected event wait failure")
        return SimpleNamespace(
            device=_Handle(position),
            eventType=event_type,
            eventData=data,
            gpuInstanceId=0xFFFFFFFF,
            computeInstanceId=0xFFFFFFFF,
        )

    def fail_event_wait(self, code: int) -> None:
        """Make the next nvmlEventSetWait_v2 fail with NVML return ``code``."""
        self._events.put((0, -code, 0))

    def nvmlEventSetFree(self, event_set: _EventSet) -> None:
        self._record("nvmlEventSetFree")
