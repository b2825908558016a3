"""The device Fit loop HAMi's non-NVIDIA vendors share (Cambricon, Hygon, Iluvatar, Ascend, Metax
GPU, Mthreads, Enflame VGCU, AMD... in ``pkg/device/<vendor>/device.go``).

Each of those Fits is a copy of one loop over the devices **from the end** of the sorted list; per
device the first failing check counts one reason and skips it:

 1. ``CardNotHealth``                 (ours: HAMi's vendor loops skip it and would place on a
                                      device its plugin reports unhealthy; deliberate fix)
 2. ``CardTypeMismatch``              request type is not the vendor's; optional type selectors
                                      (Hygon ``use/nouse-dcutype``)
 3. ``CardUuidMismatch``              the vendor's use/nouse UUID annotations
 4. ``CardTimeSlicingExhausted``      ``count <= used``
 5. cores > 100 clamped to 100        (a request, not a failure)
 6. memory need                        ``Memreq`` MiB, or ``% × total`` when ``MemPercentagereq != 101``
 7. ``CardInsufficientMemory``, ``CardInsufficientCore``, ``ExclusiveDeviceAllocateConflict``,
    ``CardComputeUnitsExhausted``     as NVIDIA (spec §5.5 steps 9-12)
 8. ``CardNotFoundCustomFilterRule``  Metax GPU / Mthreads: every device of the pod's earlier
                                      containers must be this one ("needs all devices on a device")

No vendor but NVIDIA checks NUMA binding or the ResourceQuota in v2.8.0, so neither is here.
The result carries HAMi's reasons and, per rejected device, the numbers behind them, in the
structure :mod:`hami.core.fit` defines (so ``hami why`` explains every vendor alike).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from hami.core.fit import ContainerFit, FitContext, RawRejection, Reason
from hami.core.model import PERCENTAGE_UNSET, ContainerDevice, ContainerDeviceRequest
from hami.core.snapshot import DeviceUsage

MAX_CORES: Final = 100

HEALTH: Final[str] = Reason.CARD_NOT_HEALTH.value
TYPE: Final[str] = Reason.CARD_TYPE_MISMATCH.value
UUID: Final[str] = Reason.CARD_UUID_MISMATCH.value
SLICES: Final[str] = Reason.CARD_TIME_SLICING_EXHAUSTED.value
MEM: Final[str] = Reason.CARD_INSUFFICIENT_MEMORY.value
CORE: Final[str] = Reason.CARD_INSUFFICIENT_CORE.value
EXCL: Final[str] = Reason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT.value
UNITS: Final[str] = Reason.CARD_COMPUTE_UNITS_EXHAUSTED.value
CUSTOM: Final[str] = Reason.CARD_NOT_FOUND_CUSTOM_FILTER_RULE.value
SHORT: Final[str] = Reason.ALLOCATED_CARDS_INSUFFICIENT_REQUEST.value
NUMA: Final[str] = Reason.NUMA_NOT_FIT.value


@dataclass(frozen=True, slots=True, kw_only=True)
class FitRules:
    """The per-vendor switches of the shared loop."""

    type_selectors: bool = False
    """Apply the pod's use/nouse type annotations (``DeviceSelectors.type_allowed``)."""
    same_device_as_earlier: bool = False
    """Metax GPU / Mthreads ``customFilterRule``."""
    type_note: str = "device type"
    """What the type check is about, for explanations (e.g. the annotation keys)."""


class Rejections:
    """Reason counts and per-device rejections being collected by one Fit."""

    __slots__ = ("raw", "reasons")

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}
        self.raw: list[RawRejection] = []

    def add(self, device: str, reason: str, have: int = 0, need: int = 0, note: str = "") -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.raw.append((device, reason, have, need, note))

    def failed(self, considered: int, picks: Sequence[ContainerDevice] = (), wanted: int = 0) -> ContainerFit:
        """The failed Fit; ``picks`` (of the ``wanted``) that did fit add HAMi's one
        ``AllocatedCardsInsufficientRequest``."""
        if picks:
            self.reasons[SHORT] = 1
            self.raw.append((",".join(p.uuid for p in picks), SHORT, len(picks), wanted, ""))
        return ContainerFit(
            ok=False, reasons=dict(self.reasons), raw_rejections=tuple(self.raw), considered=considered
        )


def no_devices(vendor: str, request: ContainerDeviceRequest) -> ContainerFit:
    """The Fit of a node without this vendor's devices: HAMi's empty reason string (no ``n/m``
    item), plus one explanation row for ``hami why``."""
    note = f"the node has no {vendor} devices"
    raw: RawRejection = (vendor, Reason.NODE_INSUFFICIENT_DEVICE.value, 0, request.nums, note)
    return ContainerFit(ok=False, raw_rejections=(raw,), considered=0)


def go_div(a: int, b: int) -> int:
    """Go integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def memory_need(device: DeviceUsage, request: ContainerDeviceRequest) -> int:
    """MiB one device gives this request (HAMi: ``Memreq``, or ``Totalmem × pct / 100`` when
    ``MemPercentagereq != 101`` and ``Memreq == 0``)."""
    if request.memreq == 0 and request.mem_percentage_req != PERCENTAGE_UNSET:
        return go_div(device.totalmem * request.mem_percentage_req, 100)
    return max(request.memreq, 0)


def generic_fit(
    devices: Sequence[DeviceUsage],
    request: ContainerDeviceRequest,
    ctx: FitContext,
    allocated: Sequence[ContainerDevice],
    rules: FitRules,
    *,
    extra_check: Callable[[DeviceUsage, Rejections], bool] | None = None,
) -> ContainerFit:
    """The shared vendor Fit (module docstring). ``extra_check(device, rejections)`` runs after the
    UUID check and returns False (having recorded a reason) to skip a device."""
    if not devices:
        return no_devices(ctx.vendor, request)
    nums = request.nums
    cores = request.coresreq
    selectors = ctx.selectors
    wrong_type = request.type != ctx.vendor
    check_uuid = ctx.check_uuid
    earlier = {cd.uuid for cd in allocated} if rules.same_device_as_earlier else set()
    out = Rejections()
    picks: list[ContainerDevice] = []
    for i in range(len(devices) - 1, -1, -1):
        d = devices[i]
        if not d.health:
            out.add(d.id, HEALTH)
            continue
        if wrong_type or (rules.type_selectors and not selectors.type_allowed(d.type)):
            out.add(d.id, TYPE, note=f"{d.type!r} ({rules.type_note})")
            continue
        if check_uuid and not selectors.uuid_allowed(d.id):
            out.add(d.id, UUID)
            continue
        if extra_check is not None and not extra_check(d, out):
            continue
        if d.count <= d.used:
            out.add(d.id, SLICES, d.used, d.count)
            continue
        if cores > MAX_CORES:  # HAMi logs "core limit can't exceed 100" and clamps
            cores = MAX_CORES
        memreq = memory_need(d, request)
        free = d.totalmem - d.usedmem
        if free < memreq:
            out.add(d.id, MEM, free, memreq)
            continue
        if d.totalcore - d.usedcores < cores:
            out.add(d.id, CORE, d.totalcore - d.usedcores, cores)
            continue
        if d.totalcore == MAX_CORES and cores == MAX_CORES and d.used > 0:
            out.add(d.id, EXCL, d.used)
            continue
        if d.totalcore != 0 and d.usedcores == d.totalcore and cores == 0:
            out.add(d.id, UNITS, d.totalcore)
            continue
        if earlier and any(uuid != d.id for uuid in earlier):
            out.add(d.id, CUSTOM, note="the pod's earlier containers use another device of this vendor")
            continue
        if nums > 0:
            nums -= 1
            picks.append(
                ContainerDevice(uuid=d.id, type=ctx.vendor, usedmem=memreq, usedcores=cores, idx=d.index)
            )
        if nums == 0:
            return ContainerFit(ok=True, devices=tuple(picks), considered=len(devices))
    return out.failed(len(devices), picks, request.nums)


def whole_device_fit(
    devices: Sequence[DeviceUsage],
    request: ContainerDeviceRequest,
    ctx: FitContext,
    *,
    admit: Callable[[DeviceUsage, Rejections], bool],
    vendor: str,
    usedmem: int,
    usedcores: int,
) -> ContainerFit:
    """HAMi's whole-card Fits (AMD, Enflame GCU): from the end of the list, each healthy device that
    ``admit`` accepts (it records the reason when it refuses) until ``request.nums`` are picked,
    each pick holding ``usedmem`` MiB and ``usedcores``; no memory/core arithmetic."""
    if not devices:
        return no_devices(ctx.vendor, request)
    out = Rejections()
    nums = request.nums
    picks: list[ContainerDevice] = []
    for i in range(len(devices) - 1, -1, -1):
        d = devices[i]
        if not d.health:
            out.add(d.id, HEALTH)
            continue
        if not admit(d, out):
            continue
        nums -= 1
        picks.append(
            ContainerDevice(uuid=d.id, type=vendor, usedmem=usedmem, usedcores=usedcores, idx=d.index)
        )
        if nums == 0:
            return ContainerFit(ok=True, devices=tuple(picks), considered=len(devices))
    return out.failed(len(devices), picks, request.nums)
