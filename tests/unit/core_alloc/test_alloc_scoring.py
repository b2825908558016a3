"""Device and node scores: the golden values of hami-scheduler-spec.md §5.7 and float32 semantics."""

from __future__ import annotations

import pytest
from alloc_builders import req, usage

from hami.core.policy import GpuPolicy, NodePolicy, gpu_policy_of, node_policy_of, sort_for_search
from hami.core.scoring import NO_LOAD, RequestLoad, add_score, device_score, device_scores, f32, node_score

# Device Count 10 / Used 2, Totalcore 4 / Usedcores 1, Totalmem 8192 / Usedmem 2048 (spec §5.7 goldens).
GOLDEN_DEVICE = usage("dev", count=10, used=2, cores=4, usedcores=1, mem=8192, usedmem=2048)


def test_device_score_without_requests_is_7() -> None:
    assert device_score(GOLDEN_DEVICE) == 7.0
    assert device_score(GOLDEN_DEVICE, NO_LOAD) == 7.0


def test_device_score_50_percent_request_contributes_no_memory() -> None:
    load = RequestLoad([req(1, mem=1024, pct=0, cores=1), req(2, mem=0, pct=50, cores=2)])
    assert device_score(GOLDEN_DEVICE, load) == 18.75


def test_device_score_percentage_wins_over_memreq_and_counts_zero() -> None:
    load = RequestLoad([req(1, mem=1024, pct=30, cores=1), req(2, mem=200, pct=101, cores=3)])
    score = device_score(GOLDEN_DEVICE, load)
    assert score == pytest.approx(20.24414, abs=1e-5)
    assert score == f32(score)  # a float32 value


def test_device_score_two_small_percentages_is_20() -> None:
    load = RequestLoad([req(1, mem=1024, pct=30, cores=1), req(2, mem=200, pct=30, cores=3)])
    assert device_score(GOLDEN_DEVICE, load) == 20.0


def test_hundred_percent_counts_the_whole_card() -> None:
    load = RequestLoad([req(1, pct=100)])
    dev = usage("d", count=10, mem=8000, cores=100)
    assert device_score(dev, load) == 10 * (1 / 10 + 0 + 1.0)


def test_batched_scores_equal_single_scores() -> None:
    devices = [
        GOLDEN_DEVICE,
        usage("a", used=1, usedmem=4000, usedcores=30, mem=23028),
        usage("b", mem=23028),
        usage("z", count=0, mem=0, cores=0),
    ]
    load = RequestLoad([req(1, mem=3000, cores=30)])
    assert device_scores(devices, load) == [device_score(d, load) for d in devices]


def test_node_default_score_goldens() -> None:
    busy = usage("a", count=10, used=5, mem=8000, usedmem=4000, cores=100, usedcores=50)
    idle = usage("b", count=10, mem=8000, cores=100)
    assert node_score([busy]) == 15.0
    assert node_score([busy, idle]) == 7.5


def test_a10_worked_example_scores() -> None:
    """spec §5.7: 2 × A10 (count 10, 23028 MiB); GPU-0 hosts 4000 MiB / 30 cores; pod 3000 MiB / 30 cores."""
    gpu0 = usage("GPU-0", used=1, mem=23028, usedmem=4000, usedcores=30)
    gpu1 = usage("GPU-1", index=1, mem=23028)
    assert round(node_score([gpu0, gpu1]), 2) == 2.87
    load = RequestLoad([req(1, mem=3000, cores=30)])
    s0, s1 = device_scores([gpu0, gpu1], load)
    assert round(s0, 2) == 11.04
    assert round(s1, 2) == 5.30


def test_scores_are_float32_not_float64() -> None:
    dev = usage("d", count=10, used=1, usedcores=30, mem=23028, usedmem=3000)
    score = device_score(dev)
    assert score == f32(10 * f32(f32(f32(1 / 10) + f32(30 / 100)) + f32(3000 / 23028)))
    assert score == 5.302762031555176
    assert score != 10 * (1 / 10 + 30 / 100 + 3000 / 23028)  # float64 gives 5.302761855...


def test_division_by_zero_is_guarded() -> None:
    empty = usage("e", count=0, mem=0, cores=0)
    assert device_score(empty) == 0.0  # 0/0 counts as 0, never NaN
    assert device_score(empty, RequestLoad([req(1, mem=1)])) == float("inf")
    assert node_score([]) == 0.0


def test_add_score_adds_in_float32() -> None:
    assert add_score(7.5, 0.0) == 7.5
    assert add_score(0.1, 0.2) == f32(f32(0.1) + f32(0.2))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, GpuPolicy.SPREAD),
        ("binpack", GpuPolicy.BINPACK),
        ("topology-aware", GpuPolicy.TOPOLOGY_AWARE),
        ("x", GpuPolicy.SPREAD),
    ],
)
def test_gpu_policy_parsing(value: str | None, expected: GpuPolicy) -> None:
    assert gpu_policy_of(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, NodePolicy.BINPACK), ("spread", NodePolicy.SPREAD), ("foo", NodePolicy.BINPACK)],
)
def test_node_policy_parsing(value: str | None, expected: NodePolicy) -> None:
    assert node_policy_of(value) is expected


def test_sort_for_search_orders_numa_then_score_stably() -> None:
    numa = [0, 1, 0, 1]
    scores = [5.0, 5.0, 9.0, 1.0]
    binpack = [0, 1, 2, 3]
    sort_for_search(binpack, numa, scores, GpuPolicy.BINPACK)
    # NUMA descending, score ascending: search from the end meets NUMA 0's busiest card first.
    assert binpack == [3, 1, 0, 2]
    spread = [0, 1, 2, 3]
    sort_for_search(spread, numa, scores, GpuPolicy.SPREAD)
    assert spread == [2, 0, 1, 3]
    ties = [0, 1, 2]
    sort_for_search(ties, [0, 0, 0], [1.0, 1.0, 1.0], GpuPolicy.SPREAD)
    assert ties == [0, 1, 2]  # equal devices keep their incoming order (Go's insertion sort)
