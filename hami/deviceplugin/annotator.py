"""Publishing the node's inventory in ``hami.io/node-nvidia-register`` (node spec §3).

The value is computed from :class:`~hami.deviceplugin.state.DeviceState` (devices sorted by
index, so it is stable) and merge-patched only when it differs from the **live** node
annotation: a deleted or edited annotation is repaired on the next cycle, and an unchanged one
is never rewritten. With topology scores enabled, ``hami.io/node-nvidia-score`` goes in the
same patch. The loop runs every 30 s, 5 s after an error, and at once after a health change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hami.core import keys
from hami.core.node_annotations import DevicePairScore, encode_node_devices, encode_node_scores
from hami.deviceplugin.backend import Topology
from hami.deviceplugin.podlookup import NodeApi, annotations_of
from hami.deviceplugin.state import DeviceState

logger = logging.getLogger(__name__)


def score_entries(topology: Topology, uuids: list[str]) -> tuple[DevicePairScore, ...]:
    """Pair scores restricted to the offered GPUs, in their order."""
    offered = set(uuids)
    return tuple(
        DevicePairScore(
            uuid=uuid,
            scores={peer: s for peer, s in topology.scores.get(uuid, {}).items() if peer in offered},
        )
        for uuid in uuids
    )


def annotation_patch(current: Mapping[str, str], register: str, score: str | None) -> dict[str, Any] | None:
    """The merge patch bringing ``current`` annotations up to date, or None when nothing differs."""
    wanted = {keys.NODE_NVIDIA_REGISTER: register}
    if score is not None:
        wanted[keys.NODE_NVIDIA_SCORE] = score
    changed = {k: v for k, v in wanted.items() if current.get(k) != v}
    return {"metadata": {"annotations": changed}} if changed else None


class NodeAnnotator:
    def __init__(
        self,
        nodes: NodeApi,
        node_name: str,
        state: DeviceState,
        *,
        topology: Callable[[], Awaitable[Topology]] | None = None,
        interval_s: float = 30.0,
        error_interval_s: float = 5.0,
    ) -> None:
        self._nodes = nodes
        self._node = node_name
        self._state = state
        self._topology = topology
        self._interval_s = interval_s
        self._error_interval_s = error_interval_s
        self._scores: str | None = None
        self.publishes = 0  # patches written, for tests and metrics

    def register_value(self) -> str:
        return encode_node_devices(self._state.registered_devices())

    async def publish(self) -> bool:
        """One cycle; returns whether the node was patched."""
        if self._topology is not None and self._scores is None:
            topology = await self._topology()
            self._scores = encode_node_scores(score_entries(topology, [g.uuid for g in self._state.gpus]))
        node = await self._nodes.get_node(self._node)
        patch = annotation_patch(annotations_of(node), self.register_value(), self._scores)
        if patch is None:
            return False
        await self._nodes.patch_node(self._node, patch)
        self.publishes += 1
        logger.info("node %s: published %s", self._node, ", ".join(sorted(patch["metadata"]["annotations"])))
        return True

    async def run(self) -> None:
        while True:
            seen = self._state.version
            try:
                await self.publish()
                delay = self._interval_s
            except Exception as e:  # API trouble: retry soon, never die
                logger.warning("node %s: registering devices failed: %s", self._node, e)
                delay = self._error_interval_s
            try:
                await asyncio.wait_for(self._state.wait_change(seen), timeout=delay)
            except TimeoutError:
                pass
