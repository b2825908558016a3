"""GPU fragmentation of a node with respect to a workload of typical pods (FGD, Weng et al. ATC'23).

A node's free GPU capacity is a *fragment* for a pod shape when that shape cannot use it: the
shape does not fit the node at all (GPU, CPU or model), or it fits but some GPUs have less left
than the shape needs per GPU. The fragmentation F(n) of a node is the expected fragment over the
distribution of typical pods (replay-method §6.6). FGD places a pod where F grows the least.
:class:`CpuAwareFragmentation` adds what F cannot see: free GPU that the node's remaining CPU
will not be able to feed (our ``fragmentation-aware`` policy scores the change of the sum).

Everything here is pure and deterministic. :class:`FragmentationModel` memoises F by node state
(GPU model, the CPU "class" of the free CPU, the multiset of free GPU milli), which is what makes
scoring a 1213-node cluster per pod cheap: most states recur. :class:`ShapeWindow` learns the
typical pods from a sliding window of recent requests, for use outside replays.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
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

    __slots__ = ("_change_memo", "_compiled", "_f_memo", "_score_memo", "_thresholds", "typical")

    def __init__(self, typical: Sequence[TypicalPod]) -> None:
        self.typical = tuple(typical)
        self._thresholds = sorted({t.key.cpu_milli for t in self.typical})
        self._compiled: dict[str, tuple[tuple[int, float, int, int, int], ...]] = {}
        self._f_memo: dict[tuple[str, int, tuple[int, ...]], float] = {}
        self._score_memo: dict[
            tuple[str, int, int, tuple[int, ...], int, int], tuple[int, tuple[int, ...]]
        ] = {}
        self._change_memo: dict[
            tuple[str, int, int, tuple[int, ...], int, int], tuple[float, tuple[int, ...]]
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
            for v, trial in sharing_trials(lefts_sorted, milli):
                score = sigmoid_score(before - self.fragmentation_sorted(model, c1, trial))
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

    def least_change(
        self, model: str, cpu_left: int, lefts_sorted: tuple[int, ...], cpu: int, milli: int, number: int
    ) -> tuple[float, tuple[int, ...]]:
        """The smallest change of F a pod's placement can make, and (sharing pods) the GPU values
        reaching it.

        Like :meth:`fgd_choice` but exact: F(after) - F(before) in float, minimised over the GPU
        a sharing pod may take (each distinct free value ``v >= milli``), instead of FGD's
        truncated score. The caller guarantees that the pod fits.
        """
        thresholds = self._thresholds
        c0 = bisect_right(thresholds, cpu_left)
        c1 = bisect_right(thresholds, cpu_left - cpu)
        memo_key = (model, c0, c1, lefts_sorted, milli, number)
        hit = self._change_memo.get(memo_key)
        if hit is not None:
            return hit
        before = self.fragmentation_sorted(model, c0, lefts_sorted)
        result: tuple[float, tuple[int, ...]]
        if milli <= 0:
            result = (self.fragmentation_sorted(model, c1, lefts_sorted) - before, ())
        elif number == 1 and milli < MILLI:
            best = math.inf
            values: list[int] = []
            for v, trial in sharing_trials(lefts_sorted, milli):
                after = self.fragmentation_sorted(model, c1, trial)
                if after < best:
                    best = after
                    values = [v]
                elif after == best:
                    values.append(v)
            result = (best - before, tuple(values))
        else:
            after_lefts = whole_gpu_after(lefts_sorted, milli, number)
            result = (self.fragmentation_sorted(model, c1, after_lefts) - before, ())
        if len(self._change_memo) >= _MEMO_LIMIT:
            self._change_memo.clear()
        self._change_memo[memo_key] = result
        return result


def sharing_trials(lefts_sorted: tuple[int, ...], milli: int) -> Iterator[tuple[int, tuple[int, ...]]]:
    """Each distinct free value ``v >= milli`` a sharing pod may take, with the sorted free milli after."""
    previous = -1
    for pos, v in enumerate(lefts_sorted):
        if v < milli or v == previous:
            continue
        previous = v
        trial = list(lefts_sorted)
        del trial[pos]
        nv = v - milli
        trial.insert(bisect_left(trial, nv), nv)
        yield v, tuple(trial)


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


def cpu_per_gpu_milli(typical: Sequence[TypicalPod]) -> float:
    """CPU milli the typical GPU pods ask per GPU milli, weighted by popularity (0: no GPU pod).

    On the openb traces this is about 10.9 (cores per whole GPU); an 8-GPU node with 96 cores
    offers 12, a 2-GPU T4 node with 104 cores offers 52.
    """
    cpu = gpu = 0.0
    for t in typical:
        k = t.key
        if k.gpu_milli > 0 and k.gpu_number > 0:
            cpu += t.weight * k.cpu_milli
            gpu += t.weight * k.gpu_milli * k.gpu_number
    return cpu / gpu if gpu > 0 else 0.0


def stranded_gpu(gpu_left: int, cpu_left: int, cpu_per_milli: float) -> float:
    """Free GPU milli that the node's free CPU cannot feed at ``cpu_per_milli`` CPU per GPU milli."""
    if cpu_per_milli <= 0:
        return 0.0
    fed = max(cpu_left, 0) / cpu_per_milli
    return gpu_left - fed if gpu_left > fed else 0.0


class CpuAwareFragmentation:
    """Expected fragmentation that also counts GPU stranded by CPU: G(n) = F(n) + S(n).

    F is FGD's measure: it asks whether *one* more typical pod fits, so a node whose CPU is
    nearly gone still looks unfragmented as long as one pod's worth is left. S looks further:
    the typical GPU pods ask ``rho`` CPU milli per GPU milli (:func:`cpu_per_gpu_milli`), so a
    node with ``cpu_left`` can feed at most ``cpu_left / rho`` of its free GPU, and the rest
    (:func:`stranded_gpu`) will most likely never be allocated. Both are GPU milli, so they add.
    Placing a pod is judged by the change of G: CPU-hungry pods (and CPU-only ones) are steered
    to nodes with CPU to spare, and GPUs on CPU-lean nodes are kept for CPU-lean pods.
    """

    __slots__ = ("cpu_per_milli", "fgd")

    def __init__(self, typical: Sequence[TypicalPod]) -> None:
        self.fgd = FragmentationModel(typical)
        self.cpu_per_milli = cpu_per_gpu_milli(self.fgd.typical)

    @property
    def typical(self) -> tuple[TypicalPod, ...]:
        return self.fgd.typical

    def value(self, model: str, cpu_left: int, lefts: Iterable[int]) -> float:
        ordered = tuple(sorted(lefts))
        f = self.fgd.fragmentation_sorted(model, self.fgd.cpu_class(cpu_left), ordered)
        return f + stranded_gpu(sum(ordered), cpu_left, self.cpu_per_milli)

    def delta(
        self, model: str, cpu_left: int, lefts_sorted: tuple[int, ...], cpu: int, milli: int, number: int
    ) -> tuple[float, float, tuple[int, ...]]:
        """Change of F and of S for the best placement of a pod on a node it fits, and (sharing
        pods) the free-milli values of the GPUs reaching the smallest F."""
        d_frag, values = self.fgd.least_change(model, cpu_left, lefts_sorted, cpu, milli, number)
        rho = self.cpu_per_milli
        if rho <= 0:
            return d_frag, 0.0, values
        # stranded_gpu before and after, inlined: this runs for every (pod, changed node)
        gpu_left = sum(lefts_sorted)
        fed = cpu_left / rho if cpu_left > 0 else 0.0
        before = gpu_left - fed if gpu_left > fed else 0.0
        if milli > 0:
            gpu_left -= milli * number
        rest = cpu_left - cpu
        fed = rest / rho if rest > 0 else 0.0
        after = gpu_left - fed if gpu_left > fed else 0.0
        return d_frag, after - before, values
