"""GPU and node scheduling policies (hami-scheduler-spec.md §5.5, §5.7).

GPU policy: the node's devices are stable-sorted, then the vendor Fit searches them **from the
end**. ``binpack`` sorts NUMA descending then device score ascending, so the search meets the most
loaded card of the lowest NUMA node first; every other value (``spread``, the default,
``topology-aware`` and unknown values) sorts NUMA ascending then score descending, so the search
meets the least loaded card first. Python's stable sort on the same incoming order reproduces Go's
``sort.Sort`` exactly for up to 12 devices (Go's insertion-sort path, spec §5.7).

Node policy: ``binpack`` (the default, also for unknown values) prefers the highest node score,
``spread`` the lowest. HAMi breaks ties between nodes by goroutine completion order (spec §14 #13);
we break them by node name, the smallest name winning, so a decision is reproducible.

``topology-aware`` collects every fitting device and then picks by NVLink/PCIe pair scores:
:func:`worst_connected` for one device, :func:`best_connected` for several.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from itertools import combinations
from typing import TypeVar

T = TypeVar("T")


class GpuPolicy(StrEnum):
    BINPACK = "binpack"
    SPREAD = "spread"
    TOPOLOGY_AWARE = "topology-aware"


class NodePolicy(StrEnum):
    BINPACK = "binpack"
    SPREAD = "spread"
    # Ours: among every fitting node, the one whose fragmentation (FGD plus CPU-stranded GPU,
    # hami.core.packing.FragmentationAware) grows least for the recently seen pod shapes.
    FRAGMENTATION_AWARE = "fragmentation-aware"


DEFAULT_GPU_POLICY = GpuPolicy.SPREAD  # --gpu-scheduler-policy
DEFAULT_NODE_POLICY = NodePolicy.BINPACK  # --node-scheduler-policy


def gpu_policy_of(value: str | None, default: GpuPolicy = DEFAULT_GPU_POLICY) -> GpuPolicy:
    """The pod's ``hami.io/gpu-scheduler-policy`` (None: the default). Unknown values behave as
    ``spread`` in HAMi (they sort like it and are not topology-aware), so they map to it."""
    if value is None:
        return default
    try:
        return GpuPolicy(value)
    except ValueError:
        return GpuPolicy.SPREAD


def node_policy_of(value: str | None, default: NodePolicy = DEFAULT_NODE_POLICY) -> NodePolicy:
    """The pod's ``hami.io/node-scheduler-policy``; anything but ``spread`` or
    ``fragmentation-aware`` is binpack."""
    if value is None:
        return default
    if value == NodePolicy.SPREAD:
        return NodePolicy.SPREAD
    if value == NodePolicy.FRAGMENTATION_AWARE:
        return NodePolicy.FRAGMENTATION_AWARE
    return NodePolicy.BINPACK


def sort_for_search(
    order: list[int], numa: Sequence[int], scores: Sequence[float], policy: GpuPolicy
) -> None:
    """Stable-sort device positions ``order`` in place into Go's sorted order for ``policy``.

    The caller searches the result from the end. ``order`` is the incoming order: the node's
    registration order for the first container, the previous container's sorted order after that.
    """
    if policy is GpuPolicy.BINPACK:
        order.sort(key=lambda i: (-numa[i], scores[i]))
    else:
        order.sort(key=lambda i: (numa[i], -scores[i]))


def worst_connected(candidates: Sequence[T], uuid: Callable[[T], str], pair: Callable[[str, str], int]) -> T:
    """One device for a topology-aware request of 1: the candidate with the smallest sum of pair
    scores to the other candidates (the least connected card, keeping well-connected groups free);
    the first minimum wins. ``candidates`` must not be empty."""
    best = candidates[0]
    best_total = -1
    for a in candidates:
        ua = uuid(a)
        total = sum(pair(ua, uuid(b)) for b in candidates if uuid(b) != ua)
        if best_total == -1 or total < best_total:
            best, best_total = a, total
    return best


def best_connected(
    candidates: Sequence[T], n: int, uuid: Callable[[T], str], pair: Callable[[str, str], int]
) -> tuple[T, ...]:
    """``n`` devices for a topology-aware request: the ``n``-combination of candidates (in candidate
    order) with the highest sum of pairwise scores; the first maximum wins.

    HAMi v2.8.0 starts its running best at 0 with a strict ``>``, so when every combination scores
    0 it returns *no* device and reports success (spec §5.5, §14 item 6, fixed in HEAD). We start
    below 0: the first combination is chosen in that case.
    """
    best: tuple[T, ...] = ()
    best_total = -1
    for combo in combinations(candidates, n):
        total = 0
        for i in range(len(combo) - 1):
            ui = uuid(combo[i])
            for j in range(i + 1, len(combo)):
                total += pair(ui, uuid(combo[j]))
        if total > best_total:
            best, best_total = combo, total
    return best
