"""Node and GPU packing policies over GPU-sharing nodes: HAMi's and the FGD paper's, and ours.

Every function here is pure and works on plain numbers, so the scheduler and the trace replay
(`hami replay`) run the same code. GPU state is the free milli of each GPU (1000 = idle) as in
the FGD simulator; HAMi's request of a sharing pod maps to it one to one (:func:`hami_request`).

Paper policies follow replay-method §5-§6 exactly (integer truncation included): the *node*
score is an int and the caller breaks ties by a fixed node order. HAMi's follow
hami-scheduler-spec §5.7 (W = 10, binpack takes the highest node score, spread the lowest).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from typing import Final

from hami.core.fragmentation import (
    CpuAwareFragmentation,
    ShapeKey,
    ShapeWindow,
    TypicalPod,
    sigmoid_score,
)

MILLI: Final = 1000
MAX_CPU: Final = 128000  # milli, normaliser of the paper's scores
MAX_GPU: Final = 8000  # milli
HAMI_WEIGHT: Final = 10.0
HAMI_DEFAULT_SPLIT: Final = 10  # HAMi deviceSplitCount default: tasks per GPU
SHARE_TAG: Final = "share-gpu"

# Policy names accepted by `hami replay` (and, for the non-paper ones, by the scheduler).
PAPER_POLICIES: Final = ("random", "dotprod", "gpu-clustering", "gpu-packing", "best-fit", "fgd")
HAMI_POLICIES: Final = ("binpack", "spread", "topology-aware")
OUR_POLICY: Final = "fragmentation-aware"
POLICIES: Final = (*HAMI_POLICIES, *PAPER_POLICIES, OUR_POLICY)

# Pair score of two GPUs of one node for the topology-aware policy, when the node carries no
# measured topology (the traces do not): GPUs i and j share a board of 4 (NVLink-class score) or
# cross the CPU interconnect (hami-scheduler-spec §5.5 scale: NVLink 100 per link, cross-CPU 10).
TOPOLOGY_GROUP: Final = 4
TOPOLOGY_NEAR: Final = 100
TOPOLOGY_FAR: Final = 10
# A memo this large is cleared rather than grown further (a long-running scheduler).
_KEY_MEMO_LIMIT: Final = 1_000_000


def is_sharing(milli: int, number: int) -> bool:
    return number == 1 and 0 < milli < MILLI


def pod_tag(milli: int, number: int) -> str | None:
    """GpuClustering's tag of a pod: ``share-gpu``, ``"<k>-gpu"``, or None for a CPU-only pod."""
    if milli <= 0:
        return None
    if is_sharing(milli, number):
        return SHARE_TAG
    return f"{number}-gpu"


def hami_request(milli: int, card_memory_mib: int) -> tuple[int, int]:
    """HAMi (gpucores, gpumem MiB) of a per-GPU share of ``milli``/1000 of one card.

    Cores are ``milli // 10`` and memory ``milli * card // 1000`` (floor), so a set of shares
    whose milli sum to at most 1000 also fits the card's cores and memory, and vice versa when
    the milli are multiples of 10: HAMi's Fit and the milli fit agree.
    """
    return milli // 10, milli * card_memory_mib // MILLI


# ---------------------------------------------------------------- paper node scores (§6)


def best_fit_score(cpu_left: int, gpu_left: int, cpu: int, gpu_request: int) -> int:
    """BestFit raw score: 100 x (1 - weighted leftover share), truncated (§6.1)."""
    score = 0.0
    score += float(cpu_left - cpu) / MAX_CPU * 0.5
    score += float(gpu_left - gpu_request) / MAX_GPU * 0.5
    return int((1.0 - score) * 100.0)


def dot_product_score(cpu_left: int, gpu_left: int, cpu: int, gpu_request: int) -> int:
    """DotProd (dimext merge, norm max): a smaller dot product of free and asked scores higher."""
    if cpu_left < cpu:
        return 0
    dot = 0.0
    dot += (cpu_left / MAX_CPU) * (cpu / MAX_CPU)
    dot += (gpu_left / MAX_GPU) * (gpu_request / MAX_GPU)
    dot /= 2.0
    return int(100.0 * (1.0 - dot))


def gpu_packing_score(lefts: Sequence[int], milli: int, number: int) -> int:
    """GpuPacking tiers (§6.3): partly used GPUs > idle GPUs on a used node > an idle node."""
    if milli <= 0:
        return 0
    ngpu = len(lefts)
    free = sum(1 for v in lefts if v == MILLI)
    if free == ngpu:
        return max(33 - free, free)
    taken = [v for v in sorted(lefts) if v >= milli][:number]
    idle_taken = sum(1 for v in taken if v == MILLI)
    if idle_taken:
        return max(50 - idle_taken, 33)
    return max(100 - sum(v * 100 // MILLI for v in taken) // 10, 50)


def gpu_clustering_score(gpu_left: int, tags: Mapping[str, int], tag: str | None) -> int:
    """GpuClustering (§6.4): prefer nodes already running pods of the same GPU shape."""
    if tag is None:
        return 0
    base = 25 * (MAX_GPU - gpu_left) // MAX_GPU
    present = [t for t, n in tags.items() if n > 0]
    if tag in present:
        return base + (75 if len(present) == 1 else 50)
    if not present:
        return base + 25
    return base


# ---------------------------------------------------------------- GPU choice (§5)


def lowest_idle(lefts: Sequence[int], number: int) -> tuple[int, ...]:
    """Whole-GPU pods, every paper policy: the lowest-index fully idle GPUs."""
    picked = tuple(i for i, v in enumerate(lefts) if v == MILLI)[:number]
    if len(picked) < number:
        raise ValueError(f"node has {len(picked)} idle GPUs, pod needs {number}")
    return picked


def tightest_fit(usable: Sequence[int], milli: int) -> int:
    """``best``: the GPU with the least free milli that still fits; ties to the lowest index.

    ``usable`` is the free milli per GPU, with GPUs that cannot take another task set to -1.
    """
    best = -1
    best_left = MILLI + 1
    for i, v in enumerate(usable):
        if milli <= v < best_left:
            best, best_left = i, v
    if best < 0:
        raise ValueError(f"no GPU has {milli} milli free")
    return best


def reservoir_pick(usable: Sequence[int], milli: int, intn: Callable[[int], int]) -> int:
    """``random``: reservoir sampling over the fitting GPUs in index order."""
    picked = -1
    count = 0
    for i, v in enumerate(usable):
        if v >= milli:
            count += 1
            if intn(count) == 0:
                picked = i
    if picked < 0:
        raise ValueError(f"no GPU has {milli} milli free")
    return picked


def first_with_value(usable: Sequence[int], values: Sequence[int]) -> int:
    """The lowest-index GPU whose free milli is one of ``values`` (FGD's GPU after scoring)."""
    for i, v in enumerate(usable):
        if v in values:
            return i
    raise ValueError(f"no GPU with free milli in {tuple(values)}")


# ---------------------------------------------------------------- HAMi (spec §5.7)


def hami_node_score(
    tasks: int, split_total: int, used_cores: int, total_cores: int, used_mem: int, total_mem: int
) -> float:
    """HAMi's node score from the usage before the pod; binpack takes the max, spread the min."""
    score = 0.0
    if split_total:
        score += tasks / split_total
    if total_cores:
        score += used_cores / total_cores
    if total_mem:
        score += used_mem / total_mem
    return HAMI_WEIGHT * score


def hami_device_score(
    number: int, cores: int, mem: int, tasks: int, split: int, used_cores: int, used_mem: int, card_mem: int
) -> float:
    return HAMI_WEIGHT * ((number + tasks) / split + (cores + used_cores) / 100 + (mem + used_mem) / card_mem)


def hami_device_fits(
    cores: int, mem: int, tasks: int, split: int, used_cores: int, used_mem: int, card_mem: int
) -> bool:
    """HAMi's NVIDIA Fit checks that apply to a healthy, type-matched card (spec §5.5)."""
    if tasks >= split:
        return False
    if card_mem - used_mem < mem or 100 - used_cores < cores:
        return False
    if cores == 100 and tasks > 0:
        return False
    return not (used_cores == 100 and cores == 0)


def topology_pair_score(i: int, j: int) -> int:
    return TOPOLOGY_NEAR if i // TOPOLOGY_GROUP == j // TOPOLOGY_GROUP else TOPOLOGY_FAR


def hami_choose_gpus(
    policy: str,
    number: int,
    cores: int,
    mem: int,
    tasks: Sequence[int],
    used_cores: Sequence[int],
    used_mem: Sequence[int],
    split: int,
    card_mem: int,
) -> tuple[int, ...] | None:
    """HAMi's device choice on one node for one container, or None if it does not fit.

    The search order is the reverse of Go's sort: binpack most-loaded first, spread and
    topology-aware least-loaded first; among equal scores the last GPU index is tried first.
    """
    scores = [
        hami_device_score(number, cores, mem, tasks[g], split, used_cores[g], used_mem[g], card_mem)
        for g in range(len(tasks))
    ]
    order = list(range(len(tasks)))
    if policy == "binpack":
        order.sort(key=lambda g: scores[g])
    else:
        order.sort(key=lambda g: -scores[g])
    order.reverse()
    fitting = [
        g
        for g in order
        if hami_device_fits(cores, mem, tasks[g], split, used_cores[g], used_mem[g], card_mem)
    ]
    if len(fitting) < number:
        return None
    if policy != "topology-aware" or len(fitting) == number:
        return tuple(fitting[:number])
    if number == 1:
        sums = [sum(topology_pair_score(g, h) for h in fitting if h != g) for g in fitting]
        return (fitting[sums.index(min(sums))],)
    best: tuple[int, ...] | None = None
    best_score = 0
    for combo in combinations(fitting, number):
        total = sum(topology_pair_score(a, b) for a, b in combinations(combo, 2))
        if total > best_score:
            best, best_score = combo, total
    return best


# ---------------------------------------------------------------- ours


class FragmentationAware:
    """Our policy: FGD's score computed on a fragmentation that also counts CPU-stranded GPU.

    FGD scores a node by ``int(100 x sigmoid(-dF / 1000))``, dF being the change of its
    fragmentation F when the pod lands there (replay-method §6.6). Ours scores the change of
    G = F + S instead, S being the free GPU the node's remaining CPU cannot feed at the CPU per
    GPU that typical pods ask (:class:`~hami.core.fragmentation.CpuAwareFragmentation`). Most of
    what FGD leaves unallocated on CPU-lean nodes (8-GPU nodes with 12 cores per GPU against
    pods asking 11-19) is GPU whose CPU went to other pods; S makes that cost visible when the
    CPU is spent, not when it is too late. The score is truncated like FGD's (equal scores mean
    "equally good"); among equal scores the node whose stranded GPU grows least wins, and the
    caller's fixed node order breaks what is left.

    Node key (smaller is better): ``(-score, dS)``. A sharing pod takes the GPU minimising F
    after it, the tightest such GPU when several do (:meth:`gpu_values`).

    The typical shapes come from a :class:`ShapeWindow` of recent requests (:meth:`observe`),
    or are fixed at construction (``typical``). Models are rebuilt by :meth:`refresh`, which
    returns True when scores may have changed so that a caller caching them can drop them.
    """

    __slots__ = ("_fixed", "_keys", "_measure", "_version", "window")

    def __init__(
        self, window: ShapeWindow | None = None, typical: Sequence[TypicalPod] | None = None
    ) -> None:
        if window is None and typical is None:
            raise ValueError("FragmentationAware needs a ShapeWindow or a fixed typical-pod list")
        self.window = window
        self._fixed = typical is not None
        self._measure = CpuAwareFragmentation(tuple(typical) if typical is not None else ())
        # Node keys by exact node state and pod shape: a replay asks ~10x more than it has states.
        self._keys: dict[tuple[str, int, tuple[int, ...], int, int, int], tuple[int, float]] = {}
        self._version = -1

    def observe(self, key: ShapeKey) -> None:
        if self.window is not None:
            self.window.observe(key)

    def refresh(self) -> bool:
        if self._fixed or self.window is None or self.window.version == self._version:
            return False
        typical = self.window.typical()
        self._version = self.window.version
        if typical == self._measure.typical:
            return False
        self._measure = CpuAwareFragmentation(typical)
        self._keys = {}
        return True

    @property
    def typical(self) -> tuple[TypicalPod, ...]:
        return self._measure.typical

    @property
    def measure(self) -> CpuAwareFragmentation:
        return self._measure

    def node_key(
        self, model: str, cpu_left: int, lefts_sorted: tuple[int, ...], cpu: int, milli: int, number: int
    ) -> tuple[int, float]:
        """Sort key of a feasible node (smaller is better); ``lefts_sorted``: free milli, ascending."""
        memo_key = (model, cpu_left, lefts_sorted, cpu, milli, number)
        hit = self._keys.get(memo_key)
        if hit is None:
            d_frag, d_strand, _ = self._measure.delta(model, cpu_left, lefts_sorted, cpu, milli, number)
            hit = (-sigmoid_score(-(d_frag + d_strand)), round(d_strand, 6))
            if len(self._keys) >= _KEY_MEMO_LIMIT:
                self._keys.clear()
            self._keys[memo_key] = hit
        return hit

    def gpu_values(
        self, model: str, cpu_left: int, lefts_sorted: tuple[int, ...], cpu: int, milli: int
    ) -> tuple[int, ...]:
        """Free-milli value of the GPU a sharing pod takes (use the lowest index holding it)."""
        _, _, values = self._measure.delta(model, cpu_left, lefts_sorted, cpu, milli, 1)
        return (min(values),) if values else ()
