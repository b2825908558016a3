"""A GPU-less backend for the embedded cluster and CI.

GPUs come from flags (count, model, memory) or from a YAML/JSON file. UUIDs are derived
from the node name and index, so every restart of a mock plugin registers the same devices.
Health changes are injected: by tests through :meth:`MockBackend.inject_xid` /
:meth:`MockBackend.inject`, and by other processes through an optional *health file*
(``{"unhealthy": {"<uuid>": "<reason>"}}``) polled once a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid as uuidlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from hami.core.errors import ConfigError
from hami.deviceplugin.backend import HealthEvent, HealthPolicy, PhysicalGpu, Topology

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "NVIDIA A100-PCIE-40GB"
DEFAULT_MEMORY_MIB = 40960
# Fixed namespace so that mock UUIDs are stable across processes and machines.
_MOCK_NAMESPACE = uuidlib.UUID("6f1d3a52-6a43-4a3e-9c1b-2f0f3e5a7d11")


def mock_uuid(node_name: str, index: int) -> str:
    """Deterministic NVIDIA-style UUID for GPU ``index`` of mock node ``node_name``."""
    return "GPU-" + str(uuidlib.uuid5(_MOCK_NAMESPACE, f"{node_name}/{index}"))


def mock_gpus(
    node_name: str, count: int, *, model: str = DEFAULT_MODEL, memory_mib: int = DEFAULT_MEMORY_MIB
) -> tuple[PhysicalGpu, ...]:
    if count < 0:
        raise ConfigError("--mock-gpus", f"must be >= 0, got {count}")
    if memory_mib <= 0:
        raise ConfigError("--mock-memory", f"must be > 0 MiB, got {memory_mib}")
    if not model.strip():
        raise ConfigError("--mock-model", "must not be empty")
    return tuple(
        PhysicalGpu(
            uuid=mock_uuid(node_name, i),
            index=i,
            name=model,
            memory_mib=memory_mib,
            pci_bus_id=f"0000:{0x10 + i:02x}:00.0",
            numa_node=None,
            minor_number=i,
            compute_capability="8.0",
        )
        for i in range(count)
    )


def _int_field(entry: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}", f"expected an integer, got {value!r}")
    return value


def gpus_from_document(node_name: str, doc: object, *, source: str) -> tuple[PhysicalGpu, ...]:
    """Parse a mock GPU file.

    Either ``{"count": N, "model": M, "memory": MiB}`` or ``{"gpus": [{...}, ...]}`` where each
    entry may set ``uuid``, ``name``/``model``, ``memory`` (MiB), ``numa``, ``pciBusId``,
    ``computeCapability``; missing UUIDs are derived like :func:`mock_uuid`.
    """
    if not isinstance(doc, Mapping):
        raise ConfigError(source, "expected a mapping at the top level")
    if "gpus" not in doc:
        return mock_gpus(
            node_name,
            _int_field(doc, "count", source),
            model=str(doc.get("model", DEFAULT_MODEL)),
            memory_mib=_int_field(doc, "memory", source, DEFAULT_MEMORY_MIB),
        )
    entries = doc["gpus"]
    if not isinstance(entries, list):
        raise ConfigError(f"{source}.gpus", "expected a list")
    gpus: list[PhysicalGpu] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}.gpus[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(where, "expected a mapping")
        uuid = str(entry.get("uuid") or mock_uuid(node_name, i))
        if uuid in seen:
            raise ConfigError(f"{where}.uuid", f"duplicate UUID {uuid}")
        seen.add(uuid)
        memory = _int_field(entry, "memory", where, DEFAULT_MEMORY_MIB)
        if memory <= 0:
            raise ConfigError(f"{where}.memory", f"must be > 0 MiB, got {memory}")
        numa = entry.get("numa")
        if numa is not None and (isinstance(numa, bool) or not isinstance(numa, int)):
            raise ConfigError(f"{where}.numa", f"expected an integer or null, got {numa!r}")
        gpus.append(
            PhysicalGpu(
                uuid=uuid,
                index=i,
                name=str(entry.get("name", entry.get("model", DEFAULT_MODEL))),
                memory_mib=memory,
                pci_bus_id=str(entry.get("pciBusId", f"0000:{0x10 + i:02x}:00.0")),
                numa_node=numa if numa is None or numa >= 0 else None,
                minor_number=i,
                compute_capability=str(entry.get("computeCapability", "8.0")),
            )
        )
    return tuple(gpus)


def load_gpu_file(node_name: str, path: Path) -> tuple[PhysicalGpu, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), f"cannot read mock GPU file: {e}") from e
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(str(path), f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from e
    return gpus_from_document(node_name, doc, source=str(path))


class MockBackend:
    """:class:`~hami.deviceplugin.backend.DeviceBackend` without hardware."""

    def __init__(
        self,
        gpus: tuple[PhysicalGpu, ...],
        *,
        policy: HealthPolicy | None = None,
        topology: Topology | None = None,
        health_file: Path | None = None,
        health_poll_s: float = 1.0,
    ) -> None:
        self._gpus = gpus
        self._policy = policy or HealthPolicy()
        self._topology = topology or Topology()
        self._health_file = health_file
        self._health_poll_s = health_poll_s
        self._subscribers: list[asyncio.Queue[HealthEvent]] = []
        self._file_unhealthy: dict[str, str] = {}

    async def devices(self) -> tuple[PhysicalGpu, ...]:
        return self._gpus

    async def topology(self) -> Topology:
        return self._topology

    async def close(self) -> None:
        self._subscribers.clear()

    def inject(self, event: HealthEvent) -> None:
        """Deliver a health change as if the hardware had reported it."""
        if not self._policy.enabled:
            return
        if event.uuid not in {g.uuid for g in self._gpus}:
            raise ValueError(f"unknown mock GPU {event.uuid}")
        for queue in self._subscribers:
            queue.put_nowait(event)

    def inject_xid(self, uuid: str, xid: int) -> bool:
        """An XID event on ``uuid``; returns whether it made the GPU unhealthy."""
        if not self._policy.enabled or not self._policy.is_critical_xid(xid):
            return False
        self.inject(HealthEvent(uuid=uuid, healthy=False, reason=f"XID {xid}", xid=xid))
        return True

    def recover(self, uuid: str) -> None:
        self.inject(HealthEvent(uuid=uuid, healthy=True, reason="recovered"))

    async def health_events(self) -> AsyncIterator[HealthEvent]:
        queue: asyncio.Queue[HealthEvent] = asyncio.Queue()
        self._subscribers.append(queue)
        poller = (
            asyncio.create_task(self._poll_health_file(), name="mock health file")
            if self._health_file is not None and self._policy.enabled
            else None
        )
        try:
            while True:
                yield await queue.get()
        finally:
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
            if queue in self._subscribers:
                self._subscribers.remove(queue)

    def _read_health_file(self) -> dict[str, str] | None:
        assert self._health_file is not None
        try:
            doc = json.loads(self._health_file.read_text(encoding="utf-8") or "{}")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable mock health file %s: %s", self._health_file, e)
            return None
        unhealthy = doc.get("unhealthy", {}) if isinstance(doc, dict) else None
        if not isinstance(unhealthy, dict):
            logger.warning(
                "ignoring mock health file %s: expected {'unhealthy': {uuid: reason}}", self._health_file
            )
            return None
        return {str(k): str(v) for k, v in unhealthy.items()}

    async def _poll_health_file(self) -> None:
        known = {g.uuid for g in self._gpus}
        while True:
            current = await asyncio.to_thread(self._read_health_file)
            if current is not None:
                for uuid in sorted(set(current) | set(self._file_unhealthy)):
                    if uuid not in known:
                        continue
                    if uuid in current and uuid not in self._file_unhealthy:
                        self.inject(HealthEvent(uuid=uuid, healthy=False, reason=current[uuid]))
                    elif uuid not in current and uuid in self._file_unhealthy:
                        self.inject(HealthEvent(uuid=uuid, healthy=True, reason="cleared in health file"))
                self._file_unhealthy = {k: v for k, v in current.items() if k in known}
            await asyncio.sleep(self._health_poll_s)
