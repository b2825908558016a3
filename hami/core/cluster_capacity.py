"""Rule 8 of the pod webhook (:mod:`hami.core.admission`): what registered devices can ever host.

:func:`capacity_of` condenses the scheduler cache's snapshot into :class:`ClusterCapacity`: per
node, one :class:`DeviceClass` per vendor/type/mode with the largest memory and cores and the
number of devices (MIG: instances); nodes alike collapse into one shape, so the check costs the
same on a thousand identical nodes as on one. :func:`impossibility` says why a container's request
can never be placed, or None. The bounds over-approximate (MIG GPUs count their largest instance
count and memory), so a placeable pod is never rejected; a vendor with no registered devices
rejects nothing, since its device plugins may simply not have registered yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from hami.core.model import MODE_MIG, PERCENTAGE_UNSET, ContainerDeviceRequest
from hami.core.requests import DeviceSelectors
from hami.core.snapshot import ClusterSnapshot

MAX_CORES: Final = 100


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class DeviceClass:
    """Devices of one vendor/model/mode on one node: upper bounds of what one can give a container."""

    vendor: str
    type: str
    mode: str
    memory: int  # MiB, the largest device (MIG: largest instance) of the class
    cores: int  # the largest devcore of the class
    slots: int  # devices of the request the class can host on that node (MIG: instances)


NodeShape = tuple[DeviceClass, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterCapacity:
    """The distinct device make-ups of registered nodes (nodes alike collapse into one shape)."""

    shapes: frozenset[NodeShape] = frozenset()

    @property
    def empty(self) -> bool:
        return not any(self.shapes)

    def vendor_classes(self, vendor: str) -> list[DeviceClass]:
        return [c for shape in self.shapes for c in shape if c.vendor == vendor]


def _merge(classes: Iterable[DeviceClass]) -> NodeShape:
    merged: dict[tuple[str, str, str], DeviceClass] = {}
    for c in classes:
        prev = merged.get((c.vendor, c.type, c.mode))
        if prev is not None:
            c = DeviceClass(
                vendor=c.vendor,
                type=c.type,
                mode=c.mode,
                memory=max(c.memory, prev.memory),
                cores=max(c.cores, prev.cores),
                slots=c.slots + prev.slots,
            )
        merged[(c.vendor, c.type, c.mode)] = c
    return tuple(sorted(merged.values()))


def capacity_of(snapshot: ClusterSnapshot) -> ClusterCapacity:
    """Registered capacity of every node of ``snapshot`` (healthy or not: health can come back)."""
    shapes: set[NodeShape] = set()
    for node in snapshot.nodes.values():
        classes: list[DeviceClass] = []
        for d in node.devices:
            memory, slots = d.totalmem, 1
            templates = [t for g in d.mig_geometries for t in g] if d.mode == MODE_MIG else []
            if templates:
                slots = max(1, max(sum(max(t.count, 0) for t in g) for g in d.mig_geometries))
                memory = max(t.memory for t in templates)
            classes.append(
                DeviceClass(
                    vendor=d.vendor, type=d.type, mode=d.mode, memory=memory, cores=d.totalcore, slots=slots
                )
            )
        if classes:
            shapes.add(_merge(classes))
    return ClusterCapacity(shapes=frozenset(shapes))


def impossibility(
    container: str,
    vendor: str,
    request: ContainerDeviceRequest,
    selectors: DeviceSelectors,
    capacity: ClusterCapacity | None,
) -> str | None:
    """Why no node can ever host this container's request of ``vendor``, or None if one might."""
    where = f"container {container!r}"
    pct = request.mem_percentage_req
    if pct != PERCENTAGE_UNSET and pct > 100:
        return f"{where} asks for {pct}% of each {vendor} device's memory (at most 100)"
    if capacity is None:
        return None
    present = capacity.vendor_classes(vendor)
    if not present:
        return None
    allowed = [c for c in present if selectors.type_allowed(c.type) and selectors.mode_allowed(c.mode)]
    if not allowed:
        types = ", ".join(sorted({f"{c.type} ({c.mode or 'default'})" for c in present}))
        return (
            f"{where}: no registered {vendor} device matches the pod's type/mode annotations "
            f"(registered: {types})"
        )
    cores = min(request.coresreq, MAX_CORES)
    largest_mem = max(c.memory for c in allowed)
    if request.memreq > largest_mem:
        return (
            f"{where} asks for {request.memreq} MiB per {vendor} device but the largest registered "
            f"device has {largest_mem} MiB"
        )
    largest_cores = max(c.cores for c in allowed)
    if cores > largest_cores:
        return (
            f"{where} asks for {cores} cores per {vendor} device but the largest registered device "
            f"has {largest_cores}"
        )

    def usable(c: DeviceClass) -> bool:
        return (
            c.vendor == vendor
            and c.memory >= request.memreq
            and c.cores >= cores
            and selectors.type_allowed(c.type)
            and selectors.mode_allowed(c.mode)
        )

    best = max(sum(c.slots for c in shape if usable(c)) for shape in capacity.shapes)
    if request.nums > best:
        size = f" of at least {request.memreq} MiB" if request.memreq else ""
        return f"{where} asks for {request.nums} {vendor} devices{size} but no node has more than {best}"
    return None
