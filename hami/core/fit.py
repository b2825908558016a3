"""NVIDIA device Fit for one container request (hami-scheduler-spec.md §5.5, §5.6, §8).

:func:`nvidia_fit` walks the devices it is given **from the end** (the list is in Go's sorted order,
:mod:`hami.core.policy`) and applies HAMi's checks in HAMi's order; the first failing check counts
one reason for the device and skips it:

 1. ``CardNotHealth``                      8. ``ResourceQuotaNotFit`` (the pluggable ``quota``)
 2. ``CardTypeMismatch`` (type/mode)       9. ``CardInsufficientMemory``
 3. NUMA grouping (``numa-bind`` only)    10. ``CardInsufficientCore``
 4. ``CardUuidMismatch``                  11. ``ExclusiveDeviceAllocateConflict``
 5. ``CardTimeSlicingExhausted``          12. ``CardComputeUnitsExhausted``
 6. cores > 100 clamped to 100            13. ``CardNotFoundCustomFilterRule`` (MIG feasibility)
 7. memory need (MiB or % of the card)    14. pick

The result carries HAMi's reason string (``"<count>/<devices> <Reason>"`` items joined by ``", "``;
HAMi's order is Go map order, ours is by count descending then check order) and, for
explanations, one :class:`DeviceRejection` with the numbers behind each device's reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NamedTuple

from hami.core.mig import mig_feasible
from hami.core.model import MODE_MIG, PERCENTAGE_UNSET, ContainerDevice, ContainerDeviceRequest
from hami.core.policy import GpuPolicy, best_connected, worst_connected
from hami.core.requests import DeviceSelectors
from hami.core.snapshot import DeviceUsage

MAX_CORES: Final = 100


class Reason(StrEnum):
    """HAMi's failure vocabulary (pkg/device/common), in the order of the fit checks."""

    CARD_NOT_HEALTH = "CardNotHealth"
    CARD_TYPE_MISMATCH = "CardTypeMismatch"
    NUMA_NOT_FIT = "NumaNotFit"
    CARD_UUID_MISMATCH = "CardUuidMismatch"
    CARD_TIME_SLICING_EXHAUSTED = "CardTimeSlicingExhausted"
    RESOURCE_QUOTA_NOT_FIT = "ResourceQuotaNotFit"
    CARD_INSUFFICIENT_MEMORY = "CardInsufficientMemory"
    CARD_INSUFFICIENT_CORE = "CardInsufficientCore"
    EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT = "ExclusiveDeviceAllocateConflict"
    CARD_COMPUTE_UNITS_EXHAUSTED = "CardComputeUnitsExhausted"
    CARD_NOT_FOUND_CUSTOM_FILTER_RULE = "CardNotFoundCustomFilterRule"
    ALLOCATED_CARDS_INSUFFICIENT_REQUEST = "AllocatedCardsInsufficientRequest"
    # Node-level reasons (not in the "n/m" format).
    NODE_INSUFFICIENT_DEVICE = "NodeInsufficientDevice"
    NODE_UNFIT_POD = "NodeUnfitPod"
    NODE_FIT_POD = "NodeFitPod"


_RANK: Final = {r.value: i for i, r in enumerate(Reason)}


class DeviceRejection(NamedTuple):
    """Why one device was skipped, with the numbers (a tuple: built per device on the hot path)."""

    device: str
    reason: str
    have: int = 0
    need: int = 0
    note: str = ""

    @property
    def message(self) -> str:
        d, h, n = self.device, self.have, self.need
        match self.reason:
            case Reason.CARD_NOT_HEALTH:
                return f"{d}: unhealthy"
            case Reason.CARD_TYPE_MISMATCH:
                return f"{d}: {self.note} excluded by the pod's gputype/vgpu-mode annotations"
            case Reason.NUMA_NOT_FIT:
                return f"{d}: NUMA node {self.note} offered {h} of the {n} devices requested"
            case Reason.CARD_UUID_MISMATCH:
                return f"{d}: excluded by the pod's use-gpuuuid/nouse-gpuuuid annotations"
            case Reason.CARD_TIME_SLICING_EXHAUSTED:
                return f"{d}: {h}/{n} tasks, split count exhausted"
            case Reason.RESOURCE_QUOTA_NOT_FIT:
                return f"{d}: namespace quota exceeded by a total of {h} MiB, {n} cores"
            case Reason.CARD_INSUFFICIENT_MEMORY:
                return f"{d}: free {h} MiB < {n} MiB"
            case Reason.CARD_INSUFFICIENT_CORE:
                return f"{d}: free {h} cores < {n} cores"
            case Reason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT:
                return f"{d}: exclusive request (100 cores) but {h} task(s) already on the card"
            case Reason.CARD_COMPUTE_UNITS_EXHAUSTED:
                return f"{d}: all {h} cores allocated and the request asks for 0 cores"
            case Reason.CARD_NOT_FOUND_CUSTOM_FILTER_RULE:
                return f"{d}: no free MIG instance of at least {n} MiB"
            case Reason.ALLOCATED_CARDS_INSUFFICIENT_REQUEST:
                return f"{d}: only {h} of {n} requested devices fit"
        return f"{d}: {self.reason}" + (f" ({self.note})" if self.note else "")


def reason_text(reasons: Mapping[str, int], devices: int) -> str:
    """HAMi ``GenReason``: ``"<count>/<devices> <Reason>"`` items joined by ``", "``."""
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], _RANK.get(kv[0], len(_RANK)), kv[0]))
    return ", ".join(f"{count}/{devices} {reason}" for reason, count in ranked)


# ---------------------------------------------------------------------------------------- quota

QuotaCheck = Callable[[str, int, int], bool]
"""``quota(vendor, total_mib, total_cores) -> fits``, bound to the pod's namespace by the caller.

Totals are the whole pod's so far: this device's need, plus the devices already picked for the
container, plus the pod's earlier containers (spec §5.5 step 8, HAMi #1579)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaAmounts:
    """One vendor's ResourceQuota state in one namespace (spec §8): ``Used`` and ``Limit`` of the
    memory and core resources (``limits.nvidia.com/gpumem``, ``limits.nvidia.com/gpucores``)."""

    mem_used: int = 0
    mem_limit: int = 0  # 0 = no limit (v2.8.0)
    cores_used: int = 0
    cores_limit: int = 0
    memory_factor: int = 1  # the memory limit is scaled like gpumem requests


@dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceQuota:
    """HAMi ``FitQuota`` for one namespace, usable as a :data:`QuotaCheck`.

    A vendor without entries fits. The check is strictly "greater than": totals equal to the limit
    fit. A limit of 0 means "no limit", as in v2.8.0.
    """

    vendors: Mapping[str, QuotaAmounts] = field(default_factory=dict)

    def __call__(self, vendor: str, mem: int, cores: int) -> bool:
        q = self.vendors.get(vendor)
        if q is None:
            return True
        mem_limit = q.mem_limit * q.memory_factor if q.memory_factor > 1 else q.mem_limit
        if mem_limit != 0 and q.mem_used + mem > mem_limit:
            return False
        return not (q.cores_limit != 0 and q.cores_used + cores > q.cores_limit)


# ---------------------------------------------------------------------------------------- fit


class FitContext:
    """What a vendor Fit needs beyond the devices and the request; built once per decision.

    It memoises the type/mode selector per device model (the upper-casing is per character).
    """

    __slots__ = ("_type_ok", "check_type", "check_uuid", "policy", "quota", "selectors", "topology", "vendor")

    def __init__(
        self,
        *,
        vendor: str,
        selectors: DeviceSelectors | None = None,
        policy: GpuPolicy = GpuPolicy.SPREAD,
        quota: QuotaCheck | None = None,
    ) -> None:
        if selectors is None:
            selectors = DeviceSelectors()
        self.vendor = vendor
        self.selectors = selectors
        self.policy = policy
        self.topology = policy is GpuPolicy.TOPOLOGY_AWARE
        self.quota = quota
        self.check_type = (
            selectors.use_types is not None
            or selectors.nouse_types is not None
            or selectors.vgpu_mode is not None
        )
        self.check_uuid = selectors.use_uuids is not None or selectors.nouse_uuids is not None
        self._type_ok: dict[tuple[str, str], bool] = {}

    def type_ok(self, device_type: str, mode: str) -> bool:
        key = (device_type, mode)
        ok = self._type_ok.get(key)
        if ok is None:
            sel = self.selectors
            ok = self._type_ok[key] = sel.type_allowed(device_type) and sel.mode_allowed(mode)
        return ok


RawRejection = tuple[str, str, int, int, str]  # the fields of DeviceRejection, as a plain tuple


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerFit:
    """The outcome of one vendor Fit for one container request.

    Rejections are kept as plain tuples (``raw_rejections``) because building a NamedTuple per
    device costs more than the check itself; :attr:`rejections` converts on demand.
    """

    ok: bool
    devices: tuple[ContainerDevice, ...] = ()
    reasons: Mapping[str, int] = field(default_factory=dict)
    raw_rejections: tuple[RawRejection, ...] = ()
    considered: int = 0  # devices handed to the Fit: the <numDevices> of the reason string

    @property
    def reason(self) -> str:
        return "" if self.ok else reason_text(self.reasons, self.considered)

    @property
    def rejections(self) -> tuple[DeviceRejection, ...]:
        return tuple(DeviceRejection._make(r) for r in self.raw_rejections)


# Plain-string reasons for the hot loop (enum member access and StrEnum hashing are slow).
_HEALTH: Final[str] = Reason.CARD_NOT_HEALTH.value
_TYPE: Final[str] = Reason.CARD_TYPE_MISMATCH.value
_NUMA: Final[str] = Reason.NUMA_NOT_FIT.value
_UUID: Final[str] = Reason.CARD_UUID_MISMATCH.value
_SLICES: Final[str] = Reason.CARD_TIME_SLICING_EXHAUSTED.value
_QUOTA: Final[str] = Reason.RESOURCE_QUOTA_NOT_FIT.value
_MEM: Final[str] = Reason.CARD_INSUFFICIENT_MEMORY.value
_CORE: Final[str] = Reason.CARD_INSUFFICIENT_CORE.value
_EXCL: Final[str] = Reason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT.value
_UNITS: Final[str] = Reason.CARD_COMPUTE_UNITS_EXHAUSTED.value
_MIG: Final[str] = Reason.CARD_NOT_FOUND_CUSTOM_FILTER_RULE.value
_SHORT: Final[str] = Reason.ALLOCATED_CARDS_INSUFFICIENT_REQUEST.value


def nvidia_fit(
    devices: Sequence[DeviceUsage],
    request: ContainerDeviceRequest,
    ctx: FitContext,
    allocated: Sequence[ContainerDevice] = (),
) -> ContainerFit:
    """HAMi's NVIDIA ``Fit``: pick ``request.nums`` devices for one container (see module doc).

    ``devices`` are this vendor's devices of the node in Go's sorted order; ``allocated`` are the
    vendor's devices of the pod's earlier containers (they count against the quota).
    """
    origin = request.nums
    nums = origin
    # HAMi logs "core limit can't exceed 100" and clamps (step 6); cores are read only after that
    # step, so clamping once here is the same.
    cores = MAX_CORES if request.coresreq > MAX_CORES else request.coresreq
    memreq_fixed = request.memreq if request.memreq > 0 else 0
    pct = request.mem_percentage_req
    use_pct = request.memreq == 0 and pct != PERCENTAGE_UNSET
    topology = ctx.topology
    numa_bind = ctx.selectors.numa_bind
    wrong_type = request.type != ctx.vendor  # HAMi checkType: the request must be this vendor's
    check_type = ctx.check_type or wrong_type
    check_uuid = ctx.check_uuid
    uuid_allowed = ctx.selectors.uuid_allowed
    quota = ctx.quota
    vendor = ctx.vendor
    base_mem = base_cores = 0
    if quota is not None:
        for cd in allocated:
            base_mem += cd.usedmem
            base_cores += cd.usedcores

    reasons: dict[str, int] = {}
    rejected: list[RawRejection] = []
    reject = rejected.append
    picks: list[ContainerDevice] = []
    prevnuma: int | None = None
    i = len(devices) - 1
    while i >= 0:
        d = devices[i]
        i -= 1
        if not d.health:
            reasons[_HEALTH] = reasons.get(_HEALTH, 0) + 1
            reject((d.id, _HEALTH, 0, 0, ""))
            continue
        if check_type and (wrong_type or not ctx.type_ok(d.type, d.mode)):
            reasons[_TYPE] = reasons.get(_TYPE, 0) + 1
            reject((d.id, _TYPE, 0, 0, f"{d.type!r} ({d.mode})"))
            continue
        if numa_bind and d.numa != prevnuma:
            if nums != origin:  # a NUMA group ran out before the request was met: start over
                reasons[_NUMA] = reasons.get(_NUMA, 0) + 1
                rejected.extend((p.uuid, _NUMA, len(picks), origin, str(prevnuma)) for p in picks)
            nums = origin
            prevnuma = d.numa
            picks = []
        if check_uuid and not uuid_allowed(d.id):
            reasons[_UUID] = reasons.get(_UUID, 0) + 1
            reject((d.id, _UUID, 0, 0, ""))
            continue
        used = d.used
        if d.count <= used:
            reasons[_SLICES] = reasons.get(_SLICES, 0) + 1
            reject((d.id, _SLICES, used, d.count, ""))
            continue
        totalmem = d.totalmem
        memreq = _go_div(totalmem * pct, 100) if use_pct else memreq_fixed
        if quota is not None:
            total_mem = base_mem + memreq
            total_cores = base_cores + cores
            for p in picks:
                total_mem += p.usedmem
                total_cores += p.usedcores
            if not quota(vendor, total_mem, total_cores):
                reasons[_QUOTA] = reasons.get(_QUOTA, 0) + 1
                reject((d.id, _QUOTA, total_mem, total_cores, ""))
                continue
        free = totalmem - d.usedmem
        if free < memreq:
            reasons[_MEM] = reasons.get(_MEM, 0) + 1
            reject((d.id, _MEM, free, memreq, ""))
            continue
        totalcore = d.totalcore
        usedcores = d.usedcores
        if totalcore - usedcores < cores:
            reasons[_CORE] = reasons.get(_CORE, 0) + 1
            reject((d.id, _CORE, totalcore - usedcores, cores, ""))
            continue
        if totalcore == MAX_CORES and cores == MAX_CORES and used > 0:
            reasons[_EXCL] = reasons.get(_EXCL, 0) + 1
            reject((d.id, _EXCL, used, 0, ""))
            continue
        if totalcore != 0 and usedcores == totalcore and cores == 0:
            reasons[_UNITS] = reasons.get(_UNITS, 0) + 1
            reject((d.id, _UNITS, totalcore, 0, ""))
            continue
        mig = d.mode == MODE_MIG
        if mig and not mig_feasible(d.mig, d.mig_geometries, request.memreq, picks):
            reasons[_MIG] = reasons.get(_MIG, 0) + 1
            reject((d.id, _MIG, 0, request.memreq, ""))
            continue
        if nums > 0:
            if not topology:
                nums -= 1
            picks.append(
                ContainerDevice(uuid=d.id, type=vendor, usedmem=memreq, usedcores=cores, idx=d.index)
            )
        if nums == 0 and not topology:
            return ContainerFit(ok=True, devices=tuple(picks), considered=len(devices))
        if mig:
            i += 1  # a MIG GPU may host several instances of one container: look at it again

    if topology and len(picks) >= origin > 0:
        pair = _pair_lookup(devices)
        if len(picks) == origin:
            chosen: tuple[ContainerDevice, ...] = tuple(picks)
        elif origin == 1:
            chosen = (worst_connected(picks, _uuid, pair),)
        else:
            chosen = best_connected(picks, origin, _uuid, pair)
        return ContainerFit(ok=True, devices=chosen, considered=len(devices))
    if picks:
        reasons[_SHORT] = 1
        reject((",".join(p.uuid for p in picks), _SHORT, len(picks), origin, ""))
    return ContainerFit(
        ok=False, devices=(), reasons=reasons, raw_rejections=tuple(rejected), considered=len(devices)
    )


def _go_div(a: int, b: int) -> int:
    """Go integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _uuid(cd: ContainerDevice) -> str:
    return cd.uuid


def _pair_lookup(devices: Sequence[DeviceUsage]) -> Callable[[str, str], int]:
    scores: dict[str, Mapping[str, int]] = {d.id: d.pair_scores for d in devices}

    def pair(a: str, b: str) -> int:
        got = scores.get(a)
        return got.get(b, 0) if got is not None else 0

    return pair
