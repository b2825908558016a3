"""A GPU-less backend for the embedded cluster and CI.

GPUs come from flags (count, model, memory) or from a YAML/JSON file (:mod:`hami.core.mockgpu`).
UUIDs are derived from the node name and index, so every restart of a mock plugin registers the
same devices, and the monitor and the DRA plugin of a mock node name the same GPUs.
Health changes are injected: by tests through :meth:`MockBackend.inject_xid` /
:meth:`MockBackend.inject`, and by other processes through an optional *health file*
(``{"unhealthy": {"<uuid>": "<reason>"}}``) polled once a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

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
from hami.deviceplugin.backend import HealthEvent, HealthPolicy, PhysicalGpu, Topology

logger = logging.getLogger(__name__)

DEFAULT_MODEL = DEFAULT_MOCK_MODEL
DEFAULT_MEMORY_MIB = DEFAULT_MOCK_MEMORY_MIB


def mock_uuid(node_name: str, index: int) -> str:
    """Deterministic NVIDIA-style UUID for GPU ``index`` of mock node ``node_name``."""
    return mock_gpu_uuid(node_name, index)


def physical_gpus(specs: tuple[MockGpu, ...]) -> tuple[PhysicalGpu, ...]:
    return tuple(
        PhysicalGpu(
            uuid=g.uuid,
            index=g.index,
            name=g.model,
            memory_mib=g.memory_mib,
            pci_bus_id=g.pci_bus_id,
            numa_node=g.numa_node,
            minor_number=g.index,
            compute_capability=g.compute_capability,
        )
        for g in specs
    )


def mock_gpus(
    node_name: str, count: int, *, model: str = DEFAULT_MODEL, memory_mib: int = DEFAULT_MEMORY_MIB
) -> tuple[PhysicalGpu, ...]:
    return physical_gpus(mock_gpu_specs(node_name, count, model=model, memory_mib=memory_mib))


def gpus_from_document(node_name: str, doc: object, *, source: str) -> tuple[PhysicalGpu, ...]:
    """Parse a mock GPU file (:mod:`hami.core.mockgpu` describes both forms)."""
    return physical_gpus(parse_mock_gpu_document(node_name, doc, source=source))


def load_gpu_file(node_name: str, path: Path) -> tuple[PhysicalGpu, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), f"cannot read mock GPU file: {e}") from e
    return physical_gpus(parse_mock_gpu_text(node_name, text, source=str(path)))


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
