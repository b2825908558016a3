"""Impersonating another vendor's node agent (``hami device-plugin --backend mock --vendor <name>``).

A real Cambricon, Hygon, Ascend... device plugin registers its devices with kubelet, which turns
them into node capacity, and some also write a registration annotation and answer the
scheduler's handshake. What each one publishes is the vendor's own business
(:meth:`hami.core.vendors.BaseVendor.impersonate`); this agent only keeps the Node equal to it:

* annotations (registration, topology) are merge-patched when they differ from the live Node;
* the handshake annotation is answered with ``Reported <time>`` whenever it does not already hold
  a ``Reported`` value (the scheduler writes ``Requesting_<time>``; ``Deleted_<time>`` after it
  gave up), like the vendors' register loops;
* the extended resources go to ``status.capacity`` and ``status.allocatable`` (status
  subresource), as kubelet would publish them for the plugin's resources.

The cycle runs every ``interval_s`` (30 s, as HAMi's plugins), after an error every 5 s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from hami.core.vendors import BaseVendor, NodePublication
from hami.deviceplugin.podlookup import NodeApi, annotations_of

logger = logging.getLogger(__name__)

REPORTED_PREFIX = "Reported"


def _status_section(node: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    status = node.get("status")
    section = status.get(name) if isinstance(status, Mapping) else None
    return section if isinstance(section, Mapping) else {}


def annotation_patch(
    node: Mapping[str, Any], publication: NodePublication, handshake_key: str | None
) -> dict[str, Any] | None:
    """Merge patch bringing the node's annotations up to the publication (None: nothing to do).

    The handshake is left alone while it holds a ``Reported`` answer, so a running agent does
    not rewrite the timestamp every cycle."""
    current = annotations_of(node)
    changed: dict[str, str] = {}
    for key, value in publication.annotations.items():
        if key == handshake_key:
            if not str(current.get(key, "")).startswith(REPORTED_PREFIX):
                changed[key] = value
        elif current.get(key) != value:
            changed[key] = value
    return {"metadata": {"annotations": changed}} if changed else None


def capacity_patch(node: Mapping[str, Any], publication: NodePublication) -> dict[str, Any] | None:
    """Merge patch for the status subresource (None when capacity and allocatable already match)."""
    wanted = dict(publication.capacity)
    if not wanted:
        return None
    capacity = _status_section(node, "capacity")
    allocatable = _status_section(node, "allocatable")
    if all(str(capacity.get(k)) == v and str(allocatable.get(k)) == v for k, v in wanted.items()):
        return None
    return {"status": {"capacity": dict(wanted), "allocatable": dict(wanted)}}


class VendorMockAgent:
    """Keeps one node's annotations and capacity equal to what ``vendor``'s plugin publishes."""

    def __init__(
        self,
        nodes: NodeApi,
        node_name: str,
        vendor: BaseVendor,
        *,
        devices: int,
        memory_mib: int | None = None,
        interval_s: float = 30.0,
        error_interval_s: float = 5.0,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if devices < 0:
            raise ValueError(f"devices must be >= 0, got {devices}")
        self._nodes = nodes
        self._node = node_name
        self.vendor = vendor
        self._devices = devices
        self._memory = memory_mib
        self._interval_s = interval_s
        self._error_interval_s = error_interval_s
        self._now = now if now is not None else (lambda: datetime.now(UTC))
        self.publishes = 0  # patches written, for tests

    def publication(self) -> NodePublication:
        return self.vendor.impersonate(self._node, self._devices, memory_mib=self._memory, now=self._now())

    async def publish(self) -> bool:
        """One cycle; returns whether anything was patched."""
        node = await self._nodes.get_node(self._node)
        publication = self.publication()
        patched = False
        annotations = annotation_patch(node, publication, self.vendor.traits.handshake_key)
        if annotations is not None:
            await self._nodes.patch_node(self._node, annotations)
            patched = True
        status = capacity_patch(node, publication)
        if status is not None:
            await self._nodes.patch_node_status(self._node, status)
            patched = True
        if patched:
            self.publishes += 1
            logger.info(
                "node %s: published %d %s device(s) as its plugin would",
                self._node,
                self._devices,
                self.vendor.name,
            )
        return patched

    async def run(self) -> None:
        while True:
            try:
                await self.publish()
                delay = self._interval_s
            except Exception as e:  # API trouble: retry soon, never die
                logger.warning("node %s: publishing %s devices failed: %s", self._node, self.vendor.name, e)
                delay = self._error_interval_s
            await asyncio.sleep(delay)
