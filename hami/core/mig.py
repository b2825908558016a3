"""Dynamic-MIG instance bookkeeping (hami-scheduler-spec.md §5.3, §5.6; node spec §6).

A GPU in ``mig`` mode carries the geometries allowed for its model (``knownMigGeometries``): each
geometry is an ordered list of templates ``{name, memory, core, count}``. *Materialising* geometry
``g`` expands its templates in order, each repeated ``count`` times, into an instance list. An
allocation is written as ``<GPU uuid>[<g>-<slot>]`` where ``slot`` is a position in that list.

HAMi v2.8.0 writes the template's index inside the geometry instead of the slot on the first
allocation of an idle GPU (spec §14 item 7). The two agree for every geometry the chart ships (all
templates before the chosen one have count 1), and the device plugin reads the number as a slot, so
we write the slot by default; ``template_index_suffix=True`` reproduces v2.8.0 exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hami.core.errors import HamiError
from hami.core.model import ContainerDevice, MigTemplate
from hami.core.pod_annotations import device_id_of

Geometries = tuple[tuple[MigTemplate, ...], ...]


class MigAllocationError(HamiError):
    """No MIG instance can host an allocation (HAMi: ``mig template allocate resource fail``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MigInstance:
    name: str
    memory: int  # MiB
    core: int
    in_use: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MigUsage:
    """The instance list of one GPU (HAMi ``MigInUse``): current geometry and instance states."""

    geometry: int = 0
    instances: tuple[MigInstance, ...] = ()

    @property
    def any_in_use(self) -> bool:
        return any(i.in_use for i in self.instances)


NO_MIG: Final = MigUsage()


def materialise(geometries: Geometries, index: int) -> MigUsage:
    """Geometry ``index`` expanded into free instances."""
    instances = tuple(
        MigInstance(name=t.name, memory=t.memory, core=t.core)
        for t in geometries[index]
        for _ in range(max(t.count, 0))
    )
    return MigUsage(geometry=index, instances=instances)


def _first_free(instances: Sequence[MigInstance], memory: int, taken: Sequence[bool]) -> int:
    for pos, inst in enumerate(instances):
        if not taken[pos] and inst.memory >= memory:
            return pos
    return -1


def mig_feasible(
    usage: MigUsage, geometries: Geometries, memreq: int, picked: Sequence[ContainerDevice]
) -> bool:
    """Fit check 13 (HAMi ``CustomFilterRule``): can this GPU host one more instance of ``memreq``?

    Works on a copy of the instance list. An empty list is materialised with the first geometry
    holding any template of at least ``memreq`` MiB (``memreq`` is the raw request, 0 for
    percentage requests). Every device already picked for this container, on this GPU or not, then
    takes the first free instance large enough for it; finally one more such instance must remain.
    """
    instances = usage.instances
    if not instances:
        for g, geometry in enumerate(geometries):
            if any(t.memory >= memreq for t in geometry):
                instances = materialise(geometries, g).instances
                break
    taken = [i.in_use for i in instances]
    for pick in picked:
        pos = _first_free(instances, pick.usedmem, taken)
        if pos < 0:
            return False
        taken[pos] = True
    return _first_free(instances, memreq, taken) >= 0


def mig_allocate(
    usage: MigUsage,
    geometries: Geometries,
    assigned: ContainerDevice,
    *,
    template_index_suffix: bool = False,
) -> tuple[MigUsage, ContainerDevice]:
    """MIG half of HAMi's NVIDIA ``AddResourceUsage``: choose the instance, rewrite the entry.

    On an idle GPU (no instance in use) the first template, across geometries in order, with
    ``memory >= assigned.usedmem`` selects the geometry, which is materialised afresh; otherwise the
    first free instance large enough in the current geometry is taken. The entry's memory and cores
    become the instance's and its UUID gets the ``[g-slot]`` suffix (unless it already has one).

    Raises MigAllocationError when nothing fits. (v2.8.0 silently leaves a plain UUID when no
    template of any geometry is large enough, which would hand a whole MIG-mode GPU to the pod.)
    """
    suffixed = "[" in assigned.uuid
    if not usage.any_in_use:
        for g, geometry in enumerate(geometries):
            for t_index, template in enumerate(geometry):
                if template.memory < assigned.usedmem:
                    continue
                fresh = materialise(geometries, g)
                slot = sum(max(t.count, 0) for t in geometry[:t_index])
                if slot >= len(fresh.instances):  # a template with count 0 was chosen
                    continue
                label = t_index if template_index_suffix else slot
                return _take(fresh, slot, assigned, g, label, suffixed)
        raise MigAllocationError(
            f"no MIG template of {device_id_of(assigned.uuid)} holds {assigned.usedmem} MiB"
        )
    taken = [i.in_use for i in usage.instances]
    slot = _first_free(usage.instances, assigned.usedmem, taken)
    if slot < 0:
        raise MigAllocationError(
            f"mig template allocate resource fail: no free instance of {device_id_of(assigned.uuid)} "
            f"holds {assigned.usedmem} MiB"
        )
    return _take(usage, slot, assigned, usage.geometry, slot, suffixed)


def _take(
    usage: MigUsage, slot: int, assigned: ContainerDevice, geometry: int, label: int, suffixed: bool
) -> tuple[MigUsage, ContainerDevice]:
    inst = usage.instances[slot]
    instances = (*usage.instances[:slot], _in_use(inst), *usage.instances[slot + 1 :])
    uuid = assigned.uuid if suffixed else f"{assigned.uuid}[{geometry}-{label}]"
    entry = ContainerDevice(
        uuid=uuid, type=assigned.type, usedmem=inst.memory, usedcores=inst.core, idx=assigned.idx
    )
    return MigUsage(geometry=geometry, instances=instances), entry


def _in_use(inst: MigInstance) -> MigInstance:
    return MigInstance(name=inst.name, memory=inst.memory, core=inst.core, in_use=True)


def account_instances(
    geometries: Geometries, entries: Sequence[tuple[int, int]]
) -> tuple[MigUsage, list[str]]:
    """Instance usage of one GPU rebuilt from allocation suffixes ``(g, slot)`` (spec §5.3 step 2).

    The first entry materialises its geometry; each entry marks its slot. Returns the usage and the
    problems found (unknown geometry, slot out of range, slot used twice, geometry mismatch), which
    the ledger reports as invariant violations rather than hiding.
    """
    usage = NO_MIG
    taken: list[bool] = []
    problems: list[str] = []
    for g, slot in entries:
        if not usage.instances:
            if not 0 <= g < len(geometries):
                problems.append(f"MIG geometry {g} unknown ({len(geometries)} geometries)")
                continue
            usage = materialise(geometries, g)
            taken = [False] * len(usage.instances)
        elif g != usage.geometry:
            problems.append(f"MIG geometry {g} differs from current geometry {usage.geometry}")
        if not 0 <= slot < len(taken):
            problems.append(f"MIG slot {slot} out of range (geometry {usage.geometry})")
            continue
        if taken[slot]:
            problems.append(f"MIG slot {slot} (geometry {usage.geometry}) allocated twice")
        taken[slot] = True
    if any(taken):
        usage = MigUsage(
            geometry=usage.geometry,
            instances=tuple(
                _in_use(inst) if t else inst for inst, t in zip(usage.instances, taken, strict=True)
            ),
        )
    else:
        usage = NO_MIG
    return usage, problems
