"""Offer a trace's pods one at a time to a cluster under one policy (replay-method §4-§7, §10).

Each pod is filtered (kube NodeResourcesFit on pods/CPU/memory, then the GPU fit: model, and
enough GPUs with enough free milli and a free HAMi task slot), every feasible node is scored by
the policy, the best score wins with ties going to the node of smallest seeded rank, and the
policy's GPU chooser reserves devices. A pod with no feasible node fails and is not retried.

Speed comes from caching, not from approximations: a node's score for a pod depends only on
the node's state and the pod's shape (CPU, memory, GPU number, milli and allowed models), and a
placement changes one node. So every shape keeps a heap of (score, rank) over the nodes, and
before a pod is offered only the nodes changed since that shape was last seen are re-scored.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from hami.core.fragmentation import FragmentationModel, ShapeKey, ShapeWindow, build_typical_pods
from hami.core.packing import (
    HAMI_DEFAULT_SPLIT,
    HAMI_POLICIES,
    MILLI,
    OUR_POLICY,
    POLICIES,
    FragmentationAware,
    best_fit_score,
    dot_product_score,
    first_with_value,
    gpu_clustering_score,
    gpu_packing_score,
    hami_choose_gpus,
    hami_node_score,
    hami_request,
    is_sharing,
    lowest_idle,
    pod_tag,
    reservoir_pick,
    tightest_fit,
)
from hami.replay.curve import discretize
from hami.replay.trace import NodeSpec, PodSpec, gpu_capacity, prepare_workload

MAX_PODS_PER_NODE: Final = 1001  # node allocatable "pods" in the FGD cluster
DEFAULT_WINDOW: Final = 0  # 0: our policy uses the trace's typical pods, like FGD
# Our policy's model is refreshed after 128, 256, 512, ... arrivals, then every window.
_FIRST_REFRESH: Final = 128
_PROGRESS_EVERY: Final = 256

Key = tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayResult:
    policy: str
    seed: int
    tune: float
    pods: int  # offered (after tuning)
    placed: int
    failed: int
    failed_gpu_milli: int
    arrived_gpu_milli: int
    used_gpu_milli: int
    capacity_gpu_milli: int
    alloc_pct: tuple[float, ...]  # allocated GPU % at arrived GPU % 0..130
    final_alloc_pct: float
    frag_pct: float  # FGD fragmentation of the final state, % of GPU capacity
    wall_s: float
    failed_pods: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Shape:
    cpu: int
    mem: int
    number: int
    milli: int
    allowed: frozenset[str] | None  # None: any model
    sharing: bool
    tag: str | None
    key: ShapeKey


class _ShapeCache:
    __slots__ = ("feasible", "heap", "log_pos", "seen")

    def __init__(self, n: int) -> None:
        self.seen = [-1] * n
        self.heap: list[tuple[Key, int, int, int]] = []
        self.feasible: set[int] = set()
        self.log_pos = 0


class Replay:
    """One experiment: a cluster, a workload order, a policy. Call :meth:`run` once."""

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        trace: Sequence[PodSpec],
        policy: str,
        seed: int,
        tune: float = 1.3,
        split: int = HAMI_DEFAULT_SPLIT,
        keep_failed_names: bool = False,
        window: int = 0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        if split <= 0:
            raise ValueError(f"split count must be positive, got {split}")
        self.policy = policy
        self.seed = seed
        self.tune = tune
        self.split = split
        self.keep_failed_names = keep_failed_names
        self.nodes = tuple(nodes)
        n = len(self.nodes)
        self.workload, self._rng = prepare_workload(self.nodes, trace, seed, tune)
        self.capacity = gpu_capacity(self.nodes)
        # Typical pods of the original (untuned) trace, CPU-only pods included (§6.6).
        counts: dict[ShapeKey, float] = {}
        for p in trace:
            k = _shape_key(p)
            counts[k] = counts.get(k, 0.0) + 1.0
        self.frag = FragmentationModel(build_typical_pods(counts))
        self.rank = list(self.workload.node_rank)
        self.model = [nd.model for nd in self.nodes]
        self.card_mem = [nd.gpu_memory_mib for nd in self.nodes]
        self.cpu_left = [nd.cpu_milli for nd in self.nodes]
        self.mem_left = [nd.memory_mib for nd in self.nodes]
        self.npods = [0] * n
        self.lefts = [[MILLI] * nd.gpus for nd in self.nodes]
        self.tasks = [[0] * nd.gpus for nd in self.nodes]
        self.gcores = [[0] * nd.gpus for nd in self.nodes]
        self.gmem = [[0] * nd.gpus for nd in self.nodes]
        self.tags: list[dict[str, int]] = [{} for _ in range(n)]
        self.g_left = [MILLI * nd.gpus for nd in self.nodes]
        self.free = [nd.gpus for nd in self.nodes]
        self.max_usable = [MILLI if nd.gpus else -1 for nd in self.nodes]
        self.sorted_lefts = [tuple(lf) for lf in self.lefts]
        self.version = [0] * n
        self.log: list[int] = []
        self.shapes: dict[tuple[int, int, int, int, tuple[str, ...]], _Shape] = {}
        self.caches: dict[_Shape, _ShapeCache] = {}
        # Ours learns the shapes online from the arrivals (window > 0), as the scheduler does;
        # window 0 gives it the same trace-derived typical pods as FGD.
        self.ours: FragmentationAware | None = None
        self.window = window
        if policy == OUR_POLICY:
            self.ours = (
                FragmentationAware(window=ShapeWindow(window))
                if window > 0
                else FragmentationAware(typical=self.frag.typical)
            )
        self._next_refresh = _FIRST_REFRESH
        self._arrivals = 0
        self._score: Callable[[int, _Shape], Key] = self._scorer(policy)

    # ------------------------------------------------------------ scoring per policy

    def _scorer(self, policy: str) -> Callable[[int, _Shape], Key]:
        if policy == "best-fit":
            return lambda i, s: (
                -best_fit_score(self.cpu_left[i], self.g_left[i], s.cpu, s.number * s.milli),
            )
        if policy == "dotprod":
            return lambda i, s: (
                -dot_product_score(self.cpu_left[i], self.g_left[i], s.cpu, s.number * s.milli),
            )
        if policy == "gpu-packing":
            return lambda i, s: (-gpu_packing_score(self.lefts[i], s.milli, s.number),)
        if policy == "gpu-clustering":
            return lambda i, s: (-gpu_clustering_score(self.g_left[i], self.tags[i], s.tag),)
        if policy == "fgd":
            return self._fgd_key
        if policy in HAMI_POLICIES:
            sign = 1.0 if policy == "spread" else -1.0
            return lambda i, s: (sign * self._hami_node(i),)
        if policy == "random":
            return lambda i, s: (0.0,)
        assert self.ours is not None
        return self._ours_key

    def _ours_key(self, i: int, s: _Shape) -> Key:
        assert self.ours is not None
        return self.ours.node_key(
            self.model[i],
            self.cpu_left[i],
            self.sorted_lefts[i],
            s.cpu,
            s.milli,
            s.number,
        )

    def _fgd_key(self, i: int, s: _Shape) -> Key:
        score, _ = self.frag.fgd_choice(
            self.model[i], self.cpu_left[i], self.usable_sorted(i), s.cpu, s.milli, s.number
        )
        return (-score,)

    def _hami_node(self, i: int) -> float:
        g = len(self.lefts[i])
        return hami_node_score(
            sum(self.tasks[i]),
            g * self.split,
            sum(self.gcores[i]),
            100 * g,
            sum(self.gmem[i]),
            g * self.card_mem[i],
        )

    def usable_sorted(self, i: int) -> tuple[int, ...]:
        """Free milli of node i's GPUs, sorted; GPUs out of task slots count as full."""
        return self.sorted_lefts[i]

    def usable(self, i: int) -> list[int]:
        tasks = self.tasks[i]
        return [v if tasks[g] < self.split else -1 for g, v in enumerate(self.lefts[i])]

    # ------------------------------------------------------------ filter

    def feasible(self, i: int, s: _Shape) -> bool:
        if self.npods[i] >= MAX_PODS_PER_NODE or self.cpu_left[i] < s.cpu or self.mem_left[i] < s.mem:
            return False
        if s.milli <= 0:
            return True
        if s.allowed is not None and self.model[i] not in s.allowed:
            return False
        if s.sharing:
            return self.max_usable[i] >= s.milli
        return self.free[i] >= s.number

    # ------------------------------------------------------------ per-shape caches

    def feasible_among(self, s: _Shape, candidates: Iterable[int]) -> list[int]:
        """The candidates that pass :meth:`feasible`, in order (one pass per condition: this
        runs over the whole cluster for every new pod shape)."""
        npods, cpu_left, mem_left = self.npods, self.cpu_left, self.mem_left
        cpu, mem = s.cpu, s.mem
        ok = [
            i
            for i in candidates
            if cpu_left[i] >= cpu and mem_left[i] >= mem and npods[i] < MAX_PODS_PER_NODE
        ]
        if s.milli <= 0:
            return ok
        if s.allowed is not None:
            model, allowed = self.model, s.allowed
            ok = [i for i in ok if model[i] in allowed]
        if s.sharing:
            max_usable, milli = self.max_usable, s.milli
            return [i for i in ok if max_usable[i] >= milli]
        free, number = self.free, s.number
        return [i for i in ok if free[i] >= number]

    def _refresh(self, s: _Shape, cache: _ShapeCache | None) -> _ShapeCache:
        n = len(self.nodes)
        version, rank, score = self.version, self.rank, self._score
        if cache is None or len(self.log) - cache.log_pos >= n:
            cache = _ShapeCache(n)
            feasible = self.feasible_among(s, range(n))
            cache.heap = [(score(i, s), rank[i], i, version[i]) for i in feasible]
            heapq.heapify(cache.heap)
            cache.feasible = set(feasible)
            cache.seen = list(version)
        else:
            seen = cache.seen
            heap = cache.heap
            changed = [i for i in set(self.log[cache.log_pos :]) if seen[i] != version[i]]
            ok = self.feasible_among(s, changed)
            cache.feasible.difference_update(changed)
            cache.feasible.update(ok)
            for i in changed:
                seen[i] = version[i]
            push = heapq.heappush
            for i in ok:
                push(heap, (score(i, s), rank[i], i, version[i]))
            if len(heap) > 4 * n:
                cache.heap = [e for e in heap if version[e[2]] == e[3]]
                heapq.heapify(cache.heap)
        cache.log_pos = len(self.log)
        self.caches[s] = cache
        return cache

    def invalidate_scores(self) -> None:
        """Forget every cached score (the policy's scoring function changed)."""
        self.caches.clear()

    def _best(self, s: _Shape) -> int | None:
        cache = self._refresh(s, self.caches.get(s))
        heap = cache.heap
        version = self.version
        while heap:
            _, _, i, ver = heap[0]
            if version[i] == ver:
                return i
            heapq.heappop(heap)
        return None

    # ------------------------------------------------------------ reserve

    def _choose_gpus(self, i: int, s: _Shape, p: PodSpec) -> tuple[int, ...]:
        if s.milli <= 0:
            return ()
        policy = self.policy
        if policy in HAMI_POLICIES:
            cores, mem = hami_request(s.milli, self.card_mem[i])
            picked = hami_choose_gpus(
                policy,
                s.number,
                cores,
                mem,
                self.tasks[i],
                self.gcores[i],
                self.gmem[i],
                self.split,
                self.card_mem[i],
            )
            if picked is None:
                raise AssertionError(
                    f"HAMi fit disagrees with the filter for {p.name} on {self.nodes[i].name}"
                )
            return picked
        if not s.sharing:
            return lowest_idle(self.lefts[i], s.number)
        usable = self.usable(i)
        if policy == "fgd":
            _, values = self.frag.fgd_choice(
                self.model[i], self.cpu_left[i], self.usable_sorted(i), s.cpu, s.milli, s.number
            )
            return (first_with_value(usable, values),)
        if policy == "random":
            return (reservoir_pick(usable, s.milli, self._intn),)
        if self.ours is not None:
            values = self.ours.gpu_values(
                self.model[i], self.cpu_left[i], self.sorted_lefts[i], s.cpu, s.milli
            )
            return (first_with_value(usable, values),)
        return (tightest_fit(usable, s.milli),)

    def _intn(self, n: int) -> int:
        return self._rng.intn(n)

    def _place(self, i: int, s: _Shape, gpus: tuple[int, ...]) -> None:
        self.cpu_left[i] -= s.cpu
        self.mem_left[i] -= s.mem
        self.npods[i] += 1
        if gpus:
            lefts, tasks = self.lefts[i], self.tasks[i]
            cores, mem = hami_request(s.milli, self.card_mem[i])
            for g in gpus:
                lefts[g] -= s.milli
                tasks[g] += 1
                self.gcores[i][g] += cores
                self.gmem[i][g] += mem
            self.g_left[i] = sum(lefts)
            self.free[i] = sum(1 for v in lefts if v == MILLI)
            self.max_usable[i] = max(
                (v for g, v in enumerate(lefts) if tasks[g] < self.split and v > 0), default=-1
            )
            # A GPU out of task slots can take nothing more: its free milli is a fragment.
            split = self.split
            self.sorted_lefts[i] = tuple(sorted(v if tasks[g] < split else 0 for g, v in enumerate(lefts)))
            if s.tag is not None:
                self.tags[i][s.tag] = self.tags[i].get(s.tag, 0) + 1
        self.version[i] += 1
        self.log.append(i)

    # ------------------------------------------------------------ main loop

    def shape_of(self, p: PodSpec) -> _Shape:
        raw = (p.cpu_milli, p.memory_mib, p.num_gpu, p.gpu_milli, p.gpu_spec)
        s = self.shapes.get(raw)
        if s is None:
            s = _Shape(
                cpu=p.cpu_milli,
                mem=p.memory_mib,
                number=p.num_gpu,
                milli=p.gpu_milli,
                allowed=frozenset(p.gpu_spec) if p.gpu_spec and p.gpu_milli > 0 else None,
                sharing=is_sharing(p.gpu_milli, p.num_gpu),
                tag=pod_tag(p.gpu_milli, p.num_gpu),
                key=_shape_key(p),
            )
            self.shapes[raw] = s
        return s

    def offer(self, p: PodSpec) -> tuple[int | None, tuple[int, ...]]:
        """Offer one pod: the node index it was bound to (None: it failed) and its GPU indices."""
        s = self.shape_of(p)
        self._rng.intn(100)  # kube's per-cycle metrics sampling draw
        if self.ours is not None:
            self._learn(s)
        chosen = self._random_node(s) if self.policy == "random" else self._best(s)
        if chosen is None:
            return None, ()
        gpus = self._choose_gpus(chosen, s, p)
        self._place(chosen, s, gpus)
        return chosen, gpus

    def run(self, progress: Callable[[int, int], None] | None = None) -> ReplayResult:
        """Offer the whole workload in order and measure (call once)."""
        start = time.perf_counter()
        pods = self.workload.pods
        arrived_series: list[int] = []
        used_series: list[int] = []
        arrived = used = failed = failed_milli = placed = 0
        failed_names: list[str] = []
        total = len(pods)
        for index, p in enumerate(pods):
            request = p.gpu_request
            arrived += request
            chosen, _ = self.offer(p)
            if chosen is None:
                failed += 1
                failed_milli += request
                if self.keep_failed_names:
                    failed_names.append(p.name)
            else:
                used += request
                placed += 1
            arrived_series.append(arrived)
            used_series.append(used)
            if progress is not None and (index % _PROGRESS_EVERY == 0 or index == total - 1):
                progress(index + 1, total)
        frag = sum(
            self.frag.fragmentation_sorted(
                self.model[i], self.frag.cpu_class(self.cpu_left[i]), self.sorted_lefts[i]
            )
            for i in range(len(self.nodes))
        )
        wall = time.perf_counter() - start
        return ReplayResult(
            policy=self.policy,
            seed=self.seed,
            tune=self.tune,
            pods=total,
            placed=placed,
            failed=failed,
            failed_gpu_milli=failed_milli,
            arrived_gpu_milli=arrived,
            used_gpu_milli=used,
            capacity_gpu_milli=self.capacity,
            alloc_pct=discretize(arrived_series, used_series, self.capacity),
            final_alloc_pct=round(100.0 * used / self.capacity, 4),
            frag_pct=round(100.0 * frag / self.capacity, 4),
            wall_s=round(wall, 3),
            failed_pods=tuple(failed_names),
        )

    def _learn(self, s: _Shape) -> None:
        assert self.ours is not None
        self.ours.observe(s.key)
        self._arrivals += 1
        if self._arrivals >= self._next_refresh:
            step = self._next_refresh if self._next_refresh < self.window else self.window
            self._next_refresh += max(step, 1)
            if self.ours.refresh():
                self.invalidate_scores()

    def _random_node(self, s: _Shape) -> int | None:
        cache = self._refresh(s, self.caches.get(s))
        if not cache.feasible:
            return None
        if len(cache.feasible) == 1:
            return next(iter(cache.feasible))
        candidates = sorted(cache.feasible)
        return candidates[self._rng.intn(len(candidates))]


def _shape_key(p: PodSpec) -> ShapeKey:
    return ShapeKey(cpu_milli=p.cpu_milli, gpu_milli=p.gpu_milli, gpu_number=p.num_gpu, gpu_type=p.gpu_type)


def run_replay(
    nodes: Sequence[NodeSpec],
    trace: Sequence[PodSpec],
    policy: str,
    seed: int,
    tune: float = 1.3,
    split: int = HAMI_DEFAULT_SPLIT,
    progress: Callable[[int, int], None] | None = None,
    window: int = 0,
) -> ReplayResult:
    """One experiment (see :class:`Replay`)."""
    return Replay(nodes, trace, policy, seed, tune, split, window=window).run(progress)
