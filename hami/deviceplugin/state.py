"""The node's offered GPUs and their health, shared by ListAndWatch and the annotation loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from hami.core.model import DeviceInfo
from hami.deviceplugin.backend import HealthEvent, PhysicalGpu
from hami.deviceplugin.virtual import Health, NodeDeviceSettings, kubelet_devices, registered_devices

logger = logging.getLogger(__name__)


class DeviceState:
    """Offered GPUs + per-GPU health, with a version that moves on every health change.

    Single-threaded (event loop only); waiters are woken through a fresh :class:`asyncio.Event`
    per version, so a slow ListAndWatch stream never misses that something changed.
    """

    def __init__(self, gpus: tuple[PhysicalGpu, ...], settings: NodeDeviceSettings) -> None:
        self.gpus = gpus
        self.settings = settings
        self._health: dict[str, bool] = {g.uuid: True for g in gpus}
        self._reasons: dict[str, str] = {}
        self.version = 0
        self._changed = asyncio.Event()

    @property
    def health(self) -> Mapping[str, bool]:
        return dict(self._health)

    def reason(self, uuid: str) -> str:
        return self._reasons.get(uuid, "")

    def apply(self, event: HealthEvent) -> bool:
        """Record a health event; returns whether anything changed."""
        if event.uuid not in self._health:
            logger.info("health event for GPU %s, which is not offered on this node: ignored", event.uuid)
            return False
        if self._health[event.uuid] == event.healthy:
            return False
        self._health[event.uuid] = event.healthy
        if event.healthy:
            self._reasons.pop(event.uuid, None)
            logger.info("GPU %s is healthy again (%s)", event.uuid, event.reason)
        else:
            self._reasons[event.uuid] = event.reason
            logger.warning("GPU %s is unhealthy: %s", event.uuid, event.reason)
        self._bump()
        return True

    def mark_all(self, healthy: bool, reason: str) -> None:
        for gpu in self.gpus:
            self.apply(HealthEvent(uuid=gpu.uuid, healthy=healthy, reason=reason))

    def _bump(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_change(self, seen: int) -> int:
        """Return the current version once it differs from ``seen``."""
        while self.version == seen:
            await self._changed.wait()
        return self.version

    def kubelet_devices(self) -> tuple[tuple[str, Health], ...]:
        return kubelet_devices(self.gpus, self._health, self.settings.split_count)

    def registered_devices(self) -> tuple[DeviceInfo, ...]:
        return registered_devices(self.gpus, self._health, self.settings)
