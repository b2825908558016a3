"""Mock-capacity mode (node spec §9): HAMi's non-count resources as node capacity.

Like Project-HAMi/mock-device-plugin, counts come from the node's registration annotation:
``gpumem`` = Σ devmem (integer-divided by ``memoryFactor`` when > 1), ``gpucores`` = Σ devcore,
``gpumem-percentage`` = 100 per GPU; all zero when the node advertises no ``nvidia.com/gpu``.
Instead of one fake kubelet plugin per resource, the counts are merge-patched into
``status.capacity`` and ``status.allocatable``, which Kueue and ResourceQuota read the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hami.core import keys
from hami.core.errors import DecodeError
from hami.core.node_annotations import decode_node_devices
from hami.core.quantity import parse_quantity
from hami.deviceplugin.podlookup import NodeApi, annotations_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityNames:
    count: str = keys.RESOURCE_GPU
    memory: str = keys.RESOURCE_GPUMEM
    cores: str = keys.RESOURCE_GPUCORES
    memory_percentage: str = keys.RESOURCE_GPUMEM_PERCENTAGE
    memory_factor: int = 1


def _advertised_count(node: Mapping[str, Any], resource: str) -> int:
    status = node.get("status")
    capacity = status.get("capacity") if isinstance(status, Mapping) else None
    raw = capacity.get(resource) if isinstance(capacity, Mapping) else None
    if raw is None:
        return 0
    try:
        return int(parse_quantity(str(raw)))
    except (ValueError, DecodeError):
        return 0


def mock_capacity(node: Mapping[str, Any], names: CapacityNames = CapacityNames()) -> dict[str, int]:
    """The counts mock-device-plugin would publish for this node."""
    counts = {names.memory: 0, names.cores: 0, names.memory_percentage: 0}
    if _advertised_count(node, names.count) <= 0:
        return counts
    raw = annotations_of(node).get(keys.NODE_NVIDIA_REGISTER)
    if raw is None:
        return counts
    try:
        devices = decode_node_devices(raw)
    except DecodeError as e:
        logger.warning("mock capacity: %s", e)
        return counts
    memory = sum(d.devmem for d in devices)
    if names.memory_factor > 1:
        memory //= names.memory_factor
    counts[names.memory] = memory
    counts[names.cores] = sum(d.devcore for d in devices)
    counts[names.memory_percentage] = 100 * len(devices)
    return counts


def capacity_patch(counts: Mapping[str, int]) -> dict[str, Any]:
    """Merge patch for the node ``status`` subresource."""
    values = {name: str(value) for name, value in counts.items()}
    return {"status": {"capacity": dict(values), "allocatable": dict(values)}}


def needs_update(node: Mapping[str, Any], counts: Mapping[str, int]) -> bool:
    status = node.get("status")
    status = status if isinstance(status, Mapping) else {}
    for section in ("capacity", "allocatable"):
        current = status.get(section)
        current = current if isinstance(current, Mapping) else {}
        if any(str(current.get(name)) != str(value) for name, value in counts.items()):
            return True
    return False


class MockCapacityPublisher:
    def __init__(
        self,
        nodes: NodeApi,
        node_name: str,
        names: CapacityNames = CapacityNames(),
        *,
        interval_s: float = 30.0,
    ) -> None:
        self._nodes = nodes
        self._node = node_name
        self._names = names
        self._interval_s = interval_s

    async def publish(self) -> bool:
        node = await self._nodes.get_node(self._node)
        counts = mock_capacity(node, self._names)
        if not needs_update(node, counts):
            return False
        await self._nodes.patch_node_status(self._node, capacity_patch(counts))
        logger.info("node %s: mock capacity %s", self._node, counts)
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.publish()
            except Exception as e:
                logger.warning("node %s: publishing mock capacity failed: %s", self._node, e)
            await asyncio.sleep(self._interval_s)
