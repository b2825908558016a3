"""The paper's metric: allocated GPU % at each whole arrived GPU % (replay-method §8).

After every pod event the replay records ``(arrived, used)`` in GPU milli. Each event falls in
column ``round(arrived / cap%)`` (half to even); a column is the mean of the events' allocation
(each rounded to 2 decimals), or, when no event falls in it, the mean over the columns X-1..X+1.
The analysis that produced the published figures averaged with numpy; its pairwise summation
is reproduced, and Python's correctly rounded ``round`` is applied, so that the columns match
the published ones to the last digit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

COLUMNS: Final = 131  # arrived 0..130 %
_PAIRWISE_BLOCK: Final = 128


def _pairwise_sum(values: Sequence[float], start: int, n: int) -> float:
    """numpy's pairwise summation of ``values[start:start+n]`` (float64, unit stride)."""
    if n < 8:
        res = 0.0
        for i in range(start, start + n):
            res += values[i]
        return res
    if n <= _PAIRWISE_BLOCK:
        r = [values[start + j] for j in range(8)]
        i = 8
        limit = n - (n % 8)
        while i < limit:
            for j in range(8):
                r[j] += values[start + i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += values[start + i]
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return _pairwise_sum(values, start, half) + _pairwise_sum(values, start + half, n - half)


def numpy_mean(values: Sequence[float]) -> float:
    """The mean of a 1-D float64 array as pandas/numpy compute it (pairwise sum, then divide).

    Published columns that fall exactly on a rounding tie (a mean of x.xx5) are reproduced in
    all but rare cases; those differ by 0.01.
    """
    if not values:
        return math.nan
    return _pairwise_sum(values, 0, len(values)) / len(values)


def discretize(arrived: Sequence[int], used: Sequence[int], capacity_milli: int) -> tuple[float, ...]:
    """Allocated GPU % at arrived GPU % 0..130 from the per-event series (both in milli)."""
    if capacity_milli <= 0:
        raise ValueError("cluster has no GPU capacity")
    per_pct = capacity_milli / 1000  # GPUs, as the analysis divides by the GPU count then 10
    buckets: list[list[float]] = [[] for _ in range(COLUMNS)]
    for a, u in zip(arrived, used, strict=True):
        column = round(a / per_pct / 10)
        if 0 <= column < COLUMNS:
            buckets[column].append(round(u / per_pct / 10, 2))
    curve: list[float] = []
    for x in range(COLUMNS):
        values = buckets[x]
        if not values:
            values = [v for c in (x - 1, x, x + 1) if 0 <= c < COLUMNS for v in buckets[c]]
        curve.append(round(numpy_mean(values), 2) if values else math.nan)
    return tuple(curve)
