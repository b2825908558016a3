"""GPU fragmentation of a node with respect to a workload of typical pods (FGD, Weng et al. ATC'23).

A node's free GPU capacity is a *fragment* for a pod shape when that shape cannot use it: the
shape does not fit the node at all (GPU, CPU or model), or it fits but some GPUs have less left
than the shape needs per GPU. The fragmentation F(n) of a node is the expected fragment over the
distribution of typical pods (replay-method §6.6). FGD places a pod where F grows the least.

Everything here is pure and deterministic. :class:`FragmentationModel` memoises F by node state
(GPU model, the CPU "class" of the free CPU, the multiset of free GPU milli), which is what makes
scoring a 1213-node cluster per pod cheap: most states recur. :class:`ShapeWindow` learns the
typical pods from a sliding window of recent requests, for use outside replays.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

MILLI: Final = 1000
# Index of each accumulator; F sums every bin but Q3, in this order (bit-exact with Go).
_Q1, _Q2, _Q3, _Q4, _XL, _XR, _NA = range(7)
_KIND_CPU, _KIND_NO_ACCESS, _KIND_GPU = range(3)
_DEFAULT_THRESHOLD_PCT: Final = 95
# A memo this large is cleared rather than grown further (a long-running scheduler).
_MEMO_LIMIT: Final = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class ShapeKey:
    """What a pod asks, as far as fragmentation is concerned (memory is not part of it)."""

    cpu_milli: int
    gpu_milli: int  # per GPU, 0..1000; 0 = CPU-only
    gpu_number: int
    gpu_type: str = ""  # allowed models joined by "|"; "" = any model


@dataclass(frozen=True, slots=True, kw_only=True)
class TypicalPod:
    key: ShapeKey
    weight: float  # share of the typical workload, the weights sum to ~1


def model_allowed(gpu_type: str, model: str) -> bool:
    """The pod's ``|``-separated model list admits ``model`` (empty list or empty parts: any)."""
    if not gpu_type:
        return True
    if not model:
        return False
    names = [part for part in gpu_type.split("|") if part]
    return not names or model in names


def build_typical_pods(
    counts: Mapping[ShapeKey, float], threshold_pct: int = _DEFAULT_THRESHOLD_PCT
) -> tuple[TypicalPod, ...]:
    """The most frequent shapes covering ``threshold_pct`` % of the pods, with renormalised weights.

    Ordered by count, descending; equal counts put the larger key first (cpu, gpu milli, gpu
    number, type). Shapes are taken one at a time until the cumulative count reaches the
    threshold; each weight is (count/total) / (cumulative/total), computed in that order.
    """
    total = 0.0
    for value in counts.values():
        total += value
    if total <= 0:
        return ()
    ranked = sorted(
        counts.items(),
        key=lambda kv: (kv[1], kv[0].cpu_milli, kv[0].gpu_milli, kv[0].gpu_number, kv[0].gpu_type),
        reverse=True,
    )
    expected = float(threshold_pct) * total / 100.0
    cum = 0.0
    taken = 0
    shares: list[float] = []
    while cum < expected and taken < len(ranked):
        cum += ranked[taken][1]
        shares.append(ranked[taken][1] / total)
        taken += 1
    if taken >= len(ranked):
        return tuple(TypicalPod(key=k, weight=s) for (k, _), s in zip(ranked, shares, strict=True))
    norm = cum / total
    return tuple(TypicalPod(key=k, weight=s / norm) for (k, _), s in zip(ranked, shares, strict=False))


def sigmoid_score(delta: float) -> int:
    """FGD's node score for a fragmentation change ``delta`` = F(before) - F(after), in 0..100."""
    return int(1.0 / (1.0 + math.exp(-(delta / 1000.0))) * 100.0)


class FragmentationModel:
    """F(n) and FGD scores for one typical-pod distribution, memoised by node state.

    A node state is (GPU model, free CPU milli, free milli of each GPU). Only the comparisons of
    the free CPU with the typical pods' CPU matter, so the free CPU is reduced to its rank among
    their distinct CPU values; the GPU order does not matter to F, so the free milli are sorted.
    """

    __slots__ = ("_compiled", "_f_memo", "_score_memo", "_thresholds", "typical")

    def __init__(self, typical: Sequence[TypicalPod]) -> None:
        self.typical = tuple(typical)
        self._thresholds = sorted({t.key.cpu_milli for t in self.typical})
        self._compiled: dict[str, tuple[tuple[int, float, int, int, int], ...]] = {}
        self._f_memo: dict[tuple[str, int, tuple[int, ...]], float] = {}
        self._score_memo: dict[
            tuple[str, int, int, tuple[int, ...], int, int], tuple[int, tuple[int, ...]]
        ] = {}

    def cpu_class(self, cpu_left: int) -> int:
        return bisect_right(self._thresholds, cpu_left)

    def _compile(self, model: str) -> tuple[tuple[int, float, int, int, int], ...]:
        rows = []
        for t in self.typical:
            k = t.key
            rank = bisect_left(self._thresholds, k.cpu_milli)
            if k.gpu_milli == 0:
                kind = _KIND_CPU
            elif not model_allowed(k.gpu_type, model):
                kind = _KIND_NO_ACCESS
            else:
                kind = _KIND_GPU
            rows.append((kind, t.weight, k.gpu_milli, k.gpu_number, rank))
        compiled = tuple(rows)
        self._compiled[model] = compiled
        return compiled

    def fragmentation_sorted(self, model: str, cpu_class: int, lefts: tuple[int, ...]) -> float:
        """F for a node whose free GPU milli are ``lefts`` sorted ascending."""
        memo_key = (model, cpu_class, lefts)
        cached = self._f_memo.get(memo_key)
        if cached is not None:
            return cached
        rows = self._compiled.get(model) or self._compile(model)
        total = sum(lefts)
        q1 = q2 = q4 = xl = xr = na = 0.0
        ngpu = len(lefts)
        for kind, w, milli, number, rank in rows:
            cpu_ok = rank < cpu_class
            if kind == _KIND_CPU:
                if cpu_ok:
                    xl += w * total
                else:
                    xr += w * total
            elif kind == _KIND_NO_ACCESS:
                na += w * total
            else:
                short = bisect_left(lefts, milli)  # GPUs with left < milli
                if ngpu - short >= number and number > 0:
                    if cpu_ok:
                        q2 += w * sum(lefts[:short])
                    else:
                        q4 += w * total
                elif cpu_ok:
                    q2 += w * total
                else:
                    q1 += w * total
        value = 0.0 + q1 + q2 + q4 + xl + xr + na
        if len(self._f_memo) >= _MEMO_LIMIT:
            self._f_memo.clear()
        self._f_memo[memo_key] = value
        return value

    def node_fragmentation(self, model: str, cpu_left: int, lefts: Iterable[int]) -> float:
        return self.fragmentation_sorted(model, self.cpu_class(cpu_left), tuple(sorted(lefts)))

    def fgd_choice(
        self, model: str, cpu_left: int, lefts_sorted: tuple[int, ...], cpu: int, milli: int, number: int
    ) -> tuple[int, tuple[int, ...]]:
        """FGD score of placing a pod, and the free-milli values of the GPUs that achieve it.

        For a sharing pod every GPU value ``v >= milli`` is tried; the returned tuple lists the
        values reaching the best score (the GPU used is the lowest index holding one of them).
        Whole-GPU and CPU-only pods return an empty tuple (their GPUs are fixed by the caller).
        The caller guarantees that the pod fits.
        """
        c0 = self.cpu_class(cpu_left)
        c1 = self.cpu_class(cpu_left - cpu)
        memo_key = (model, c0, c1, lefts_sorted, milli, number)
        hit = self._score_memo.get(memo_key)
        if hit is not None:
            return hit
        before = self.fragmentation_sorted(model, c0, lefts_sorted)
        result: tuple[int, tuple[int, ...]]
        if milli <= 0:
            after = self.fragmentation_sorted(model, c1, lefts_sorted)
            result = (sigmoid_score(before - after), ())
        elif number == 1 and milli < MILLI:
            best = -1
            values: list[int] = []
            previous = -1
            for pos, v in enumerate(lefts_sorted):
                if v < milli or v == previous:
                    continue
                previous = v
                trial = list(lefts_sorted)
                del trial[pos]
                nv = v - milli
                trial.insert(bisect_left(trial, nv), nv)
                score = sigmoid_score(before - self.fragmentation_sorted(model, c1, tuple(trial)))
                if score > best:
                    best = score
                    values = [v]
                elif score == best:
                    values.append(v)
            result = (best, tuple(values))
        else:
            after_lefts = whole_gpu_after(lefts_sorted, milli, number)
            after = self.fragmentation_sorted(model, c1, after_lefts)
            result = (sigmoid_score(before - after), ())
        if len(self._score_memo) >= _MEMO_LIMIT:
            self._score_memo.clear()
        self._score_memo[memo_key] = result
        return result


def whole_gpu_after(lefts_sorted: tuple[int, ...], milli: int, number: int) -> tuple[int, ...]:
    """Free milli after taking ``number`` GPUs in ascending-free order among those with ``>= milli``."""
    start = bisect_left(lefts_sorted, milli)
    taken = [v - milli for v in lefts_sorted[start : start + number]]
    rest = list(lefts_sorted[:start]) + list(lefts_sorted[start + number :])
    return tuple(sorted(rest + taken))


class ShapeWindow:
    """Typical pod shapes learned from the most recent requests (a sliding window).

    The scheduler calls :meth:`observe` for every pod it is asked to place and :meth:`typical`
    when it needs the distribution. ``version`` changes whenever the typical set may have
    changed, so callers can cache a :class:`FragmentationModel` per version.
    """

    __slots__ = ("_counts", "_model", "_model_version", "_shapes", "threshold_pct", "version")

    def __init__(self, size: int = 2000, threshold_pct: int = _DEFAULT_THRESHOLD_PCT) -> None:
        if size <= 0:
            raise ValueError(f"ShapeWindow size must be positive, got {size}")
        if not 0 < threshold_pct <= 100:
            raise ValueError(f"ShapeWindow threshold_pct must be in 1..100, got {threshold_pct}")
        self.threshold_pct = threshold_pct
        self._shapes: deque[ShapeKey] = deque(maxlen=size)
        self._counts: Counter[ShapeKey] = Counter()
        self.version = 0
        self._model: FragmentationModel | None = None
        self._model_version = -1

    def __len__(self) -> int:
        return len(self._shapes)

    @property
    def size(self) -> int:
        maxlen = self._shapes.maxlen
        return maxlen if maxlen is not None else 0

    def observe(self, key: ShapeKey) -> None:
        if len(self._shapes) == self._shapes.maxlen:
            old = self._shapes[0]
            self._counts[old] -= 1
            if self._counts[old] == 0:
                del self._counts[old]
        self._shapes.append(key)
        self._counts[key] += 1
        self.version += 1

    def counts(self) -> dict[ShapeKey, int]:
        return dict(self._counts)

    def typical(self) -> tuple[TypicalPod, ...]:
        return build_typical_pods({k: float(v) for k, v in self._counts.items()}, self.threshold_pct)

    def model(self) -> FragmentationModel:
        """A fragmentation model of the current window (rebuilt only when the window changed)."""
        if self._model is None or self._model_version != self.version:
            self._model = FragmentationModel(self.typical())
            self._model_version = self.version
        return self._model


class PackingFragmentation:
    """Fragmentation counted by what repeated typical pods could still *fill* (our policy's measure).

    FGD asks whether one more typical pod fits. This asks how much of the node's free GPU a
    stream of pods of each typical shape could consume before the node runs out of fitting
    GPUs or CPU: ``copies_t = min(gpu slots for t, cpu_left // cpu_t)``, and the fragment for t
    is ``free GPU - copies_t x gpu_t``. It sees GPUs that will be stranded by a lack of CPU, and
    sub-GPU remainders no pod of t can use, both of which FGD only sees once a single pod no
    longer fits. (Memory was tried as a third cap and did not help on the openb traces.)

    Values are memoised by (model, per-shape copy caps clamped to what the GPUs could hold,
    sorted free milli), which recur often.
    """

    __slots__ = (
        "_caps_memo",
        "_delta_memo",
        "_rows_by_model",
        "_slots_memo",
        "_value_memo",
        "_wsum",
        "typical",
    )

    def __init__(self, typical: Sequence[TypicalPod]) -> None:
        self.typical = tuple(typical)
        self._wsum = math.fsum(t.weight for t in self.typical)
        # model -> rows (weight x milli per copy, cpu per copy, milli per GPU, GPUs per copy)
        self._rows_by_model: dict[str, tuple[tuple[float, int, int, int], ...]] = {}
        self._caps_memo: dict[tuple[str, int, int], tuple[int, ...]] = {}
        self._slots_memo: dict[tuple[str, tuple[int, ...]], tuple[int, ...]] = {}
        self._value_memo: dict[tuple[str, tuple[int, ...], tuple[int, ...]], float] = {}
        self._delta_memo: dict[
            tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...], int, int, tuple[int, ...]],
            tuple[float, tuple[int, ...]],
        ] = {}

    def _rows(self, model: str) -> tuple[tuple[float, int, int, int], ...]:
        rows = self._rows_by_model.get(model)
        if rows is None:
            rows = tuple(
                (
                    t.weight * t.key.gpu_milli * t.key.gpu_number,
                    t.key.cpu_milli,
                    t.key.gpu_milli,
                    t.key.gpu_number,
                )
                for t in self.typical
                # a shape that can use no GPU here has all free GPU as fragment: no row needed
                if t.key.gpu_milli > 0 and t.key.gpu_number > 0 and model_allowed(t.key.gpu_type, model)
            )
            self._rows_by_model[model] = rows
        return rows

    def caps(self, model: str, ngpu: int, cpu_left: int) -> tuple[int, ...]:
        """Copies of each shape the free CPU allows, clamped to what ``ngpu`` GPUs could hold."""
        memo_key = (model, ngpu, cpu_left)
        hit = self._caps_memo.get(memo_key)
        if hit is None:
            free = max(cpu_left, 0)
            out = []
            for _, cpu, milli, number in self._rows(model):
                cap = ngpu * (MILLI // milli) if milli < MILLI else ngpu // number
                if cpu > 0 and free // cpu < cap:
                    cap = free // cpu
                out.append(cap)
            hit = tuple(out)
            if len(self._caps_memo) >= _MEMO_LIMIT:
                self._caps_memo.clear()
            self._caps_memo[memo_key] = hit
        return hit

    def _slots(self, model: str, lefts: tuple[int, ...]) -> tuple[int, ...]:
        memo_key = (model, lefts)
        hit = self._slots_memo.get(memo_key)
        if hit is None:
            slots = []
            for _, _, milli, number in self._rows(model):
                if milli < MILLI:
                    slots.append(sum(v // milli for v in lefts))
                else:
                    slots.append(sum(1 for v in lefts if v >= milli) // number)
            hit = tuple(slots)
            if len(self._slots_memo) >= _MEMO_LIMIT:
                self._slots_memo.clear()
            self._slots_memo[memo_key] = hit
        return hit

    def value(self, model: str, caps: tuple[int, ...], lefts: tuple[int, ...]) -> float:
        """The measure for sorted free milli ``lefts`` under copy caps ``caps``."""
        memo_key = (model, caps, lefts)
        hit = self._value_memo.get(memo_key)
        if hit is None:
            usable = 0.0
            for row, slot, cap in zip(self._rows(model), self._slots(model, lefts), caps, strict=True):
                usable += row[0] * (slot if slot < cap else cap)
            hit = self._wsum * sum(lefts) - usable
            if len(self._value_memo) >= _MEMO_LIMIT:
                self._value_memo.clear()
            self._value_memo[memo_key] = hit
        return hit

    def fragmentation(self, model: str, cpu_left: int, lefts: Sequence[int]) -> float:
        lefts_sorted = tuple(sorted(lefts))
        return self.value(model, self.caps(model, len(lefts_sorted), cpu_left), lefts_sorted)

    def delta(
        self,
        model: str,
        cpu_left: int,
        lefts_sorted: tuple[int, ...],
        cpu: int,
        milli: int,
        number: int,
        candidates: Sequence[int] = (),
    ) -> tuple[float, tuple[int, ...]]:
        """Increase of the measure when the pod is placed, and (sharing pods) the best GPU values.

        For a sharing pod each distinct free value ``v >= milli`` (restricted to ``candidates``
        when given) is tried; the returned values reach the smallest increase.
        """
        ngpu = len(lefts_sorted)
        caps0 = self.caps(model, ngpu, cpu_left)
        caps1 = self.caps(model, ngpu, cpu_left - cpu)
        memo_key = (model, caps0, caps1, lefts_sorted, milli, number, tuple(candidates))
        hit = self._delta_memo.get(memo_key)
        if hit is not None:
            return hit
        before = self.value(model, caps0, lefts_sorted)
        result: tuple[float, tuple[int, ...]]
        if milli <= 0:
            result = (self.value(model, caps1, lefts_sorted) - before, ())
        elif not (number == 1 and milli < MILLI):
            result = (self.value(model, caps1, whole_gpu_after(lefts_sorted, milli, number)) - before, ())
        else:
            best = math.inf
            values: list[int] = []
            previous = -1
            for pos, v in enumerate(lefts_sorted):
                if v < milli or v == previous or (candidates and v not in candidates):
                    continue
                previous = v
                trial = list(lefts_sorted)
                del trial[pos]
                nv = v - milli
                trial.insert(bisect_left(trial, nv), nv)
                d = self.value(model, caps1, tuple(trial)) - before
                if d < best - 1e-9:
                    best = d
                    values = [v]
                elif d <= best + 1e-9:
                    values.append(v)
            result = (best, tuple(values))
        if len(self._delta_memo) >= _MEMO_LIMIT:
            self._delta_memo.clear()
        self._delta_memo[memo_key] = result
        return result
