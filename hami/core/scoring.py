"""HAMi's device and node scores (hami-scheduler-spec.md §5.7), in Go's float32 arithmetic.

HAMi computes every ratio as ``float32(int32 sum) / float32(int32 total)`` and adds and scales in
float32. The scores only order devices and nodes, so float64 would nearly always agree, but two
devices can tie in float32 and not in float64 (and the tie then decides the search order), so we
round every operation to float32. Rounding a float64 result of one ``+ - * /`` on float32-exact
inputs to float32 gives the correctly rounded float32 result (53 >= 2*24 + 2), which is what Go
computes.

Division by zero: Go yields ``+Inf`` for ``x/0`` (x > 0) and NaN for ``0/0``. NaN breaks any sort, so
``0/0`` counts as 0 here (a device with no capacity of that kind and no use of it adds nothing);
``x/0`` stays ``+inf``, which keeps Go's ordering.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
from typing import Final, Protocol

from hami.core.model import PERCENTAGE_UNSET, ContainerDeviceRequest

WEIGHT: Final = 10  # util.Weight

_F32: Final = struct.Struct("f")
_pack = _F32.pack
_unpack = _F32.unpack
_INF: Final = float("inf")  # struct packs infinities as float32 infinities


def f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (as a Python float)."""
    return _unpack(_pack(x))[0]  # type: ignore[no-any-return]


def _ratio(num: int, den: int) -> float:
    # float64 quotient; rounded to float32 by the caller (batched, it is the hot path).
    if den == 0:
        return 0.0 if num == 0 else (_INF if num > 0 else -_INF)
    return num / den


def _weighted(a: float, b: float, c: float) -> float:
    """``W * (a + b + c)`` in float32, ``a, b, c`` being float64 quotients of int32 values."""
    a, b, c = _f32_all([a, b, c])
    return f32(WEIGHT * f32(f32(a + b) + c))


class UsageView(Protocol):
    """What the scores read of a device (``snapshot.DeviceUsage`` satisfies it)."""

    @property
    def count(self) -> int: ...
    @property
    def used(self) -> int: ...
    @property
    def totalcore(self) -> int: ...
    @property
    def usedcores(self) -> int: ...
    @property
    def totalmem(self) -> int: ...
    @property
    def usedmem(self) -> int: ...


class RequestLoad:
    """A container's request folded into the four numbers the device score needs.

    ``mem`` on a device of ``totalmem`` MiB is ``fixed_mem + totalmem * pct_units``. HAMi turns a
    percentage request into ``totalmem * (pct / 100)`` with *integer* division, so 100 % counts as
    the whole card and anything below 100 % counts as 0 (spec §14 item 3; the fit itself computes
    the percentage correctly). Percentage 0 and the "unset" sentinel 101 fall back to ``memreq``.
    """

    __slots__ = ("cores", "fixed_mem", "nums", "pct_units")

    def __init__(self, requests: Iterable[ContainerDeviceRequest]) -> None:
        nums = cores = fixed = units = 0
        for r in requests:
            nums += r.nums
            cores += r.coresreq
            pct = r.mem_percentage_req
            if pct != 0 and pct != PERCENTAGE_UNSET:
                units += int(pct / 100)  # Go int32 division truncates toward zero
            else:
                fixed += r.memreq
        self.nums = nums
        self.cores = cores
        self.fixed_mem = fixed
        self.pct_units = units


NO_LOAD: Final = RequestLoad(())


def device_score(dev: UsageView, load: RequestLoad = NO_LOAD) -> float:
    """``W * ((req+Used)/Count + (core+Usedcores)/Totalcore + (mem+Usedmem)/Totalmem)`` (float32)."""
    return device_scores((dev,), load)[0]


def device_scores(devices: Sequence[UsageView], load: RequestLoad = NO_LOAD) -> list[float]:
    """:func:`device_score` of every device, batched: four float32 roundings per *node*, not per
    device, which is what keeps scoring a 500-node candidate list cheap."""
    nums, cores, fixed, units = load.nums, load.cores, load.fixed_mem, load.pct_units
    q: list[float] = []
    push = q.append
    for d in devices:
        x, y = nums + d.used, d.count
        push(x / y if y else _ratio(x, y))
        x, y = cores + d.usedcores, d.totalcore
        push(x / y if y else _ratio(x, y))
        y = d.totalmem
        x = fixed + y * units + d.usedmem
        push(x / y if y else _ratio(x, y))
    r = _f32_all(q)
    n = len(devices)
    s1 = _f32_all([r[3 * k] + r[3 * k + 1] for k in range(n)])
    s2 = _f32_all([s1[k] + r[3 * k + 2] for k in range(n)])
    return list(_f32_all([WEIGHT * v for v in s2]))


@functools.lru_cache(maxsize=64)
def _f32_struct(n: int) -> struct.Struct:
    return struct.Struct(f"{n}f")


def _f32_all(values: list[float]) -> tuple[float, ...]:
    packer = _f32_struct(len(values))
    return packer.unpack(packer.pack(*values))


def node_score(devices: Iterable[UsageView]) -> float:
    """HAMi's default node score over all devices of all vendors, from usage before the pod."""
    used = count = usedcores = totalcore = usedmem = totalmem = 0
    for d in devices:
        used += d.used
        count += d.count
        usedcores += d.usedcores
        totalcore += d.totalcore
        usedmem += d.usedmem
        totalmem += d.totalmem
    return _weighted(_ratio(used, count), _ratio(usedcores, totalcore), _ratio(usedmem, totalmem))


def add_score(score: float, extra: float) -> float:
    """Default node score plus a vendor's ScoreNode, added in float32."""
    if extra == 0.0:
        return score
    return f32(score + f32(extra))
