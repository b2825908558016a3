from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.core.packing import (
    best_fit_score,
    dot_product_score,
    first_with_value,
    gpu_clustering_score,
    gpu_packing_score,
    hami_choose_gpus,
    hami_device_fits,
    hami_device_score,
    hami_node_score,
    hami_request,
    lowest_idle,
    pod_tag,
    reservoir_pick,
    tightest_fit,
)


def test_best_fit_truncates_the_weighted_leftover() -> None:
    # 1 - (32000/128000*0.5 + 1000/8000*0.5) = 0.8125 -> 81
    assert best_fit_score(64000, 2000, 32000, 1000) == 81
    # an exact fit scores 100; one raw point is about 2.56 cores of leftover
    assert best_fit_score(4000, 1000, 4000, 1000) == 100
    assert best_fit_score(6560, 1000, 4000, 1000) == 99
    assert best_fit_score(6561, 1000, 4000, 1000) == 98


def test_dot_product_prefers_the_smaller_product() -> None:
    # dot = (0.5*0.25 + 1*0.125)/2 = 0.125 -> 87
    assert dot_product_score(64000, 8000, 32000, 1000) == 87
    assert dot_product_score(1000, 8000, 2000, 1000) == 0
    assert dot_product_score(16000, 1000, 4000, 1000) > dot_product_score(64000, 8000, 4000, 1000)


def test_gpu_packing_tiers() -> None:
    assert gpu_packing_score([1000] * 8, 500, 1) == 25  # idle 8-GPU node
    assert gpu_packing_score([1000] * 2, 500, 1) == 31
    assert gpu_packing_score([1000, 500], 300, 1) == 95  # partly used GPU: 100 - 50//10
    assert gpu_packing_score([1000, 200], 1000, 1) == 49  # needs an idle GPU on a used node
    assert gpu_packing_score([1000, 1000, 0, 0], 1000, 2) == 48
    assert gpu_packing_score([1000, 900], 0, 0) == 0  # CPU-only: a pure tie-break


def test_gpu_clustering_tags() -> None:
    assert pod_tag(500, 1) == "share-gpu" and pod_tag(1000, 4) == "4-gpu" and pod_tag(0, 0) is None
    assert gpu_clustering_score(8000, {}, "share-gpu") == 25
    assert gpu_clustering_score(6000, {"share-gpu": 2}, "share-gpu") == 6 + 75
    assert gpu_clustering_score(4000, {"share-gpu": 1, "1-gpu": 1}, "share-gpu") == 12 + 50
    assert gpu_clustering_score(7000, {"1-gpu": 1}, "share-gpu") == 3
    assert gpu_clustering_score(2000, {}, None) == 0


def test_gpu_choosers() -> None:
    assert lowest_idle([500, 1000, 1000, 0, 1000], 2) == (1, 2)
    with pytest.raises(ValueError, match="idle GPUs"):
        lowest_idle([500, 1000], 2)
    assert tightest_fit([1000, 300, 500, 300], 250) == 1
    assert tightest_fit([-1, 300, 1000], 300) == 1  # -1: out of task slots
    assert reservoir_pick([100, 600, 700, 800], 500, lambda n: 0) == 3  # every draw replaces
    assert reservoir_pick([100, 600, 700, 800], 500, lambda n: n - 1) == 1  # only the first
    assert first_with_value([300, 700, 700], (700,)) == 1


def test_hami_spec_worked_example() -> None:
    # hami-scheduler-spec §5.7: 2 x A10 (count 10, 23028 MiB); GPU-0 has 4000 MiB / 30 cores.
    node = hami_node_score(1, 20, 30, 200, 4000, 46056)
    assert node == pytest.approx(2.87, abs=0.005)
    assert hami_device_score(1, 30, 3000, 1, 10, 30, 4000, 23028) == pytest.approx(11.04, abs=0.005)
    assert hami_device_score(1, 30, 3000, 0, 10, 0, 0, 23028) == pytest.approx(5.30, abs=0.005)
    args = (1, 30, 3000, [1, 0], [30, 0], [4000, 0], 10, 23028)
    assert hami_choose_gpus("spread", *args) == (1,)
    assert hami_choose_gpus("binpack", *args) == (0,)


def test_hami_end_to_end_golden_policies() -> None:
    # spec §5.7 golden example: node1 = (device1 used 2000/25, device2 idle),
    # node2 = (device3 idle, device4 used 6000/75); pod 1 GPU, 1000 MiB, 20 cores.
    assert hami_node_score(1, 20, 25, 200, 2000, 16000) == pytest.approx(3.0)
    assert hami_node_score(1, 20, 75, 200, 6000, 16000) == pytest.approx(8.0)
    node1 = ([1, 0], [25, 0], [2000, 0])
    node2 = ([0, 1], [0, 75], [0, 6000])
    assert hami_choose_gpus("binpack", 1, 20, 1000, *node2, 10, 8000) == (1,)  # device4
    assert hami_choose_gpus("spread", 1, 20, 1000, *node2, 10, 8000) == (0,)  # device3
    assert hami_choose_gpus("binpack", 1, 20, 1000, *node1, 10, 8000) == (0,)  # device1
    assert hami_choose_gpus("spread", 1, 20, 1000, *node1, 10, 8000) == (1,)  # device2


def test_hami_ties_take_the_last_device_and_exclusive_needs_an_idle_card() -> None:
    idle = ([0, 0], [0, 0], [0, 0])
    assert hami_choose_gpus("binpack", 1, 30, 100, *idle, 10, 8000) == (1,)
    assert hami_choose_gpus("spread", 1, 30, 100, *idle, 10, 8000) == (1,)
    assert not hami_device_fits(100, 8000, 1, 10, 0, 0, 8000)
    assert hami_choose_gpus("spread", 2, 100, 8000, [0, 1], [0, 10], [0, 800], 10, 8000) is None
    assert not hami_device_fits(10, 100, 10, 10, 50, 100, 8000)  # split count exhausted


def test_topology_aware_choices() -> None:
    full = ([1] * 8, [100] * 8, [100] * 8)
    free = [0, 4, 5]
    tasks = [0 if g in free else 1 for g in range(8)]
    cores = [0 if g in free else 100 for g in range(8)]
    mem = [0 if g in free else 8000 for g in range(8)]
    # one GPU: the worst-connected candidate (GPU 0 is far from 4 and 5)
    assert hami_choose_gpus("topology-aware", 1, 100, 8000, tasks, cores, mem, 10, 8000) == (0,)
    # two GPUs: the best-connected pair
    assert set(hami_choose_gpus("topology-aware", 2, 100, 8000, tasks, cores, mem, 10, 8000) or ()) == {4, 5}
    assert hami_choose_gpus("topology-aware", 1, 100, 8000, *full, 10, 8000) is None


@given(
    st.lists(st.integers(min_value=1, max_value=100).map(lambda c: c * 10), max_size=12),
    st.sampled_from([15109, 16160, 16280, 22731, 32510, 16384]),
)
def test_hami_fit_agrees_with_milli_fit(shares: list[int], card: int) -> None:
    """Placing shares one by one: HAMi's cores/memory fit accepts exactly the milli fit."""
    left, cores_used, mem_used, tasks = 1000, 0, 0, 0
    for milli in shares:
        cores, mem = hami_request(milli, card)
        fits_milli = milli <= left and (milli < 1000 or tasks == 0)
        assert hami_device_fits(cores, mem, tasks, 1000, cores_used, mem_used, card) == fits_milli
        if fits_milli:
            left -= milli
            cores_used += cores
            mem_used += mem
            tasks += 1
