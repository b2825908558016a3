"""NVIDIA device Fit (hami-scheduler-spec.md §5.5): golden examples, reason strings, filters, NUMA,
topology, quota (§8) and the per-device explanations."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from alloc_builders import cd, gpu, ledger_with, pod, req, usage
from hypothesis import given, settings
from hypothesis import strategies as st

from hami.core import keys
from hami.core.fit import (
    ContainerFit,
    DeviceRejection,
    FitContext,
    NamespaceQuota,
    QuotaAmounts,
    Reason,
    nvidia_fit,
    reason_text,
)
from hami.core.model import NVIDIA
from hami.core.placement import Unschedulable, schedule
from hami.core.policy import GpuPolicy, best_connected, worst_connected
from hami.core.requests import nvidia_selectors
from hami.core.snapshot import DeviceUsage, summarise
from hami.core.vendor import NvidiaVendor, default_registry


def ctx(
    annotations: Mapping[str, str] | None = None,
    *,
    policy: GpuPolicy = GpuPolicy.SPREAD,
    quota: NamespaceQuota | None = None,
) -> FitContext:
    return FitContext(
        vendor=NVIDIA, selectors=nvidia_selectors(dict(annotations or {}), []), policy=policy, quota=quota
    )


def small(uuid: str = "dev-0", **kw: int | bool) -> DeviceUsage:
    """The upstream tests' card: count 100, 128 MiB, 100 cores."""
    fields: dict[str, int | bool] = {"count": 100, "mem": 128, "cores": 100}
    fields.update(kw)
    return usage(uuid, **fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- golden examples


def test_search_runs_from_the_end_of_the_list() -> None:
    result = nvidia_fit([small("dev-0"), small("dev-1")], req(1, mem=64, cores=50), ctx())
    assert result.ok
    assert [d.uuid for d in result.devices] == ["dev-1"]
    assert result.reason == ""
    assert result.devices[0].usedmem == 64 and result.devices[0].usedcores == 50


@pytest.mark.parametrize(
    ("device", "request_", "annotations", "expected"),
    [
        (small(), req(1, mem=512, cores=50), {}, "1/1 CardInsufficientMemory"),
        (small(usedcores=100), req(1, mem=64, cores=50), {}, "1/1 CardInsufficientCore"),
        (small(), req(1, mem=64, cores=50, type="OtherType"), {}, "1/1 CardTypeMismatch"),
        (small("dev-1"), req(1, mem=64, cores=50), {keys.USE_GPUUUID: "dev-0"}, "1/1 CardUuidMismatch"),
        (small("dev-0"), req(1, mem=64, cores=50), {keys.NOUSE_GPUUUID: "dev-0"}, "1/1 CardUuidMismatch"),
        (small(used=100), req(1, mem=64, cores=50), {}, "1/1 CardTimeSlicingExhausted"),
        (small(used=20), req(1, mem=64, cores=100), {}, "1/1 ExclusiveDeviceAllocateConflict"),
        (small(usedcores=100), req(1, mem=64, cores=0), {}, "1/1 CardComputeUnitsExhausted"),
        (small(), req(2, mem=64, cores=50), {}, "1/1 AllocatedCardsInsufficientRequest"),
        (small(health=False), req(1, mem=64, cores=50), {}, "1/1 CardNotHealth"),
    ],
)
def test_single_device_reason_strings(
    device: DeviceUsage, request_: object, annotations: dict[str, str], expected: str
) -> None:
    result = nvidia_fit([device], request_, ctx(annotations))  # type: ignore[arg-type]
    assert not result.ok
    assert result.reason == expected
    assert result.devices == ()


def test_cores_above_100_are_clamped_and_fit() -> None:
    result = nvidia_fit([small()], req(1, mem=64, cores=120), ctx())
    assert result.ok
    assert result.devices[0].usedcores == 100


def test_percentage_memory_request_fits_with_its_share() -> None:
    result = nvidia_fit([small()], req(1, mem=0, pct=10, cores=0), ctx())
    assert result.ok
    assert result.devices[0].usedmem == 12  # 128 * 10 / 100, integer arithmetic


def test_reason_string_aggregates_counts_over_devices() -> None:
    devices = [
        usage("GPU-0", type="NVIDIA-T4"),
        usage("GPU-1", usedmem=7000),
        usage("GPU-2", usedmem=7500),
        usage("GPU-3", usedmem=800),
    ]
    result = nvidia_fit(devices, req(1, mem=8000), ctx({keys.USE_GPUTYPE: "V100"}))
    assert result.reason == "3/4 CardInsufficientMemory, 1/4 CardTypeMismatch"
    assert result.reasons == {Reason.CARD_INSUFFICIENT_MEMORY: 3, Reason.CARD_TYPE_MISMATCH: 1}
    assert result.considered == 4


def test_device_rejections_explain_with_numbers() -> None:
    devices = [usage("GPU-3", usedmem=800), usage("GPU-4", used=10), usage("GPU-5", health=False)]
    result = nvidia_fit(devices, req(1, mem=8000, cores=10), ctx())
    messages = {r.device: r.message for r in result.rejections}
    assert messages == {
        "GPU-3": "GPU-3: free 7200 MiB < 8000 MiB",
        "GPU-4": "GPU-4: 10/10 tasks, split count exhausted",
        "GPU-5": "GPU-5: unhealthy",
    }
    assert all(isinstance(r, DeviceRejection) for r in result.rejections)


def test_reason_text_orders_by_count_then_check_order() -> None:
    text = reason_text({"CardInsufficientCore": 1, "CardNotHealth": 1, "CardInsufficientMemory": 2}, 4)
    assert text == "2/4 CardInsufficientMemory, 1/4 CardNotHealth, 1/4 CardInsufficientCore"
    assert ContainerFit(ok=True).reason == ""


# ------------------------------------------------------------------------------- type / uuid / mode filters


def test_gputype_entries_are_not_trimmed() -> None:
    t4 = [usage("GPU-0", type="NVIDIA-T4")]
    assert not nvidia_fit(t4, req(1), ctx({keys.USE_GPUTYPE: "A10, T4"})).ok  # entry " T4"
    assert nvidia_fit(t4, req(1), ctx({keys.USE_GPUTYPE: "A10,T4"})).ok
    assert nvidia_fit(t4, req(1), ctx({keys.USE_GPUTYPE: "a10,t4"})).ok  # case-insensitive


def test_empty_use_type_matches_all_and_empty_nouse_type_excludes_all() -> None:
    devs = [usage("GPU-0")]
    assert nvidia_fit(devs, req(1), ctx({keys.USE_GPUTYPE: ""})).ok
    assert nvidia_fit(devs, req(1), ctx({keys.NOUSE_GPUTYPE: ""})).reason == "1/1 CardTypeMismatch"
    assert nvidia_fit(devs, req(1), ctx({keys.NOUSE_GPUTYPE: "A100"})).ok


def test_use_uuid_overrides_nouse_uuid() -> None:
    devs = [usage("GPU-0"), usage("GPU-1")]
    result = nvidia_fit(devs, req(1), ctx({keys.USE_GPUUUID: "GPU-0", keys.NOUSE_GPUUUID: "GPU-0"}))
    assert [d.uuid for d in result.devices] == ["GPU-0"]


def test_vgpu_mode_must_contain_device_mode() -> None:
    devs = [usage("GPU-0", mode="hami-core")]
    assert nvidia_fit(devs, req(1), ctx({keys.VGPU_MODE: "mig"})).reason == "1/1 CardTypeMismatch"
    assert nvidia_fit(devs, req(1), ctx({keys.VGPU_MODE: "hami-core,mig"})).ok


# ------------------------------------------------------------------------------- NUMA


def test_numa_bind_keeps_one_container_on_one_numa_node() -> None:
    devs = [usage("a", numa=0), usage("b", numa=1, index=1), usage("c", numa=1, index=2)]
    result = nvidia_fit(devs, req(2), ctx({keys.NUMA_BIND: "true"}))
    assert sorted(d.uuid for d in result.devices) == ["b", "c"]


def test_numa_bind_failure_counts_numa_not_fit() -> None:
    devs = [usage("a", numa=0), usage("b", numa=0), usage("c", numa=1), usage("d", numa=1)]
    result = nvidia_fit(devs, req(3), ctx({keys.NUMA_BIND: "1"}))
    assert not result.ok
    assert result.reason == "1/4 NumaNotFit, 1/4 AllocatedCardsInsufficientRequest"
    numa = [r for r in result.rejections if r.reason == Reason.NUMA_NOT_FIT]
    assert [r.message for r in numa] == [
        "d: NUMA node 1 offered 2 of the 3 devices requested",
        "c: NUMA node 1 offered 2 of the 3 devices requested",
    ]


def test_without_numa_bind_devices_span_numa_nodes() -> None:
    devs = [usage("a", numa=0), usage("b", numa=1)]
    assert nvidia_fit(devs, req(2), ctx({keys.NUMA_BIND: "false"})).ok
    assert nvidia_fit(devs, req(2), ctx({keys.NUMA_BIND: "yes"})).ok  # not a Go bool: false


# ------------------------------------------------------------------------------- topology-aware


PAIRS = {
    "g0": {"g1": 200, "g2": 10, "g3": 10},
    "g1": {"g0": 200, "g2": 10, "g3": 10},
    "g2": {"g0": 10, "g1": 10, "g3": 300},
    "g3": {"g0": 10, "g1": 10, "g2": 300},
}


def topo_devices() -> list[DeviceUsage]:
    return [usage(u, index=i, pairs=PAIRS[u]) for i, u in enumerate(("g0", "g1", "g2", "g3"))]


def test_topology_two_devices_take_the_best_connected_pair() -> None:
    result = nvidia_fit(topo_devices(), req(2), ctx(policy=GpuPolicy.TOPOLOGY_AWARE))
    assert sorted(d.uuid for d in result.devices) == ["g2", "g3"]


def test_topology_one_device_takes_the_worst_connected_card() -> None:
    devs = topo_devices()
    devs[0] = usage("g0", pairs={"g1": 5, "g2": 5, "g3": 5})
    result = nvidia_fit(devs, req(1), ctx(policy=GpuPolicy.TOPOLOGY_AWARE))
    assert [d.uuid for d in result.devices] == ["g0"]


def test_topology_exact_count_and_shortage() -> None:
    devs = topo_devices()[:2]
    assert len(nvidia_fit(devs, req(2), ctx(policy=GpuPolicy.TOPOLOGY_AWARE)).devices) == 2
    short = nvidia_fit(devs, req(3), ctx(policy=GpuPolicy.TOPOLOGY_AWARE))
    assert short.reason == "1/2 AllocatedCardsInsufficientRequest"


def test_topology_without_scores_still_returns_devices() -> None:
    """v2.8.0 returns an empty device list when every pair scores 0 (spec §14 item 6); fixed."""
    devs = [usage(f"g{i}", index=i) for i in range(3)]
    result = nvidia_fit(devs, req(2), ctx(policy=GpuPolicy.TOPOLOGY_AWARE))
    assert result.ok
    assert [d.uuid for d in result.devices] == ["g2", "g1"]  # first combination in search order


def test_pair_selection_helpers() -> None:
    def pair(a: str, b: str) -> int:
        return PAIRS.get(a, {}).get(b, 0)

    assert best_connected(["g0", "g1", "g2", "g3"], 2, str, pair) == ("g2", "g3")
    assert best_connected(["x", "y", "z"], 2, str, pair) == ("x", "y")
    assert worst_connected(["g0", "g2"], str, pair) == "g0"  # tie: first minimum wins
    assert worst_connected(["g0", "g1", "g2"], str, pair) == "g2"


# ------------------------------------------------------------------------------- quota (spec §8)


def quota(
    mem_limit: int, cores_limit: int, *, mem_used: int = 0, cores_used: int = 0, factor: int = 1
) -> NamespaceQuota:
    return NamespaceQuota(
        vendors={
            NVIDIA: QuotaAmounts(
                mem_used=mem_used,
                mem_limit=mem_limit,
                cores_used=cores_used,
                cores_limit=cores_limit,
                memory_factor=factor,
            )
        }
    )


def test_quota_totals_equal_to_the_limit_fit() -> None:
    devs = [usage("d0"), usage("d1", index=1)]
    result = nvidia_fit(devs, req(2, mem=2000, cores=100), ctx(quota=quota(4000, 200)))
    assert result.ok and len(result.devices) == 2


def test_quota_second_pick_over_the_limit_fails_and_filter_reports_node_unfit() -> None:
    devs = [usage("d0"), usage("d1", index=1)]
    result = nvidia_fit(devs, req(2, mem=3000, cores=60), ctx(quota=quota(4000, 200)))
    assert result.reason == "1/2 ResourceQuotaNotFit, 1/2 AllocatedCardsInsufficientRequest"
    ledger = ledger_with({"node1": [gpu("d0"), gpu("d1", index=1)]})
    decision = schedule(
        ledger.snapshot(),
        ["node1"],
        pod(req(2, mem=3000, cores=60)),
        default_registry(),
        quota=quota(4000, 200),
    )
    assert isinstance(decision, Unschedulable)
    assert decision.failed_nodes == {"node1": "NodeUnfitPod"}


def test_quota_counts_used_and_earlier_containers() -> None:
    q = quota(20000, 0, mem_used=16000)
    result = nvidia_fit([usage("a", mem=80000), usage("b", mem=80000)], req(1, mem=6000), ctx(quota=q))
    assert result.reason == "2/2 ResourceQuotaNotFit"  # on every device
    assert nvidia_fit([usage("a", mem=80000)], req(1, mem=4000), ctx(quota=q)).ok
    earlier = [cd("x", 3000, 0)]
    assert not nvidia_fit([usage("a", mem=80000)], req(1, mem=2000), ctx(quota=q), earlier).ok


def test_quota_limit_zero_is_unlimited_and_memory_factor_scales() -> None:
    assert quota(0, 0, mem_used=10**9)(NVIDIA, 10**6, 10**6)
    assert quota(100, 0, factor=10)(NVIDIA, 1000, 0)
    assert not quota(100, 0, factor=10)(NVIDIA, 1001, 0)
    assert not quota(0, 50, cores_used=30)(NVIDIA, 0, 21)
    assert quota(1, 1)("OTHER", 10**6, 10**6)  # no entry for that vendor
    assert NamespaceQuota()(NVIDIA, 10**6, 10**6)


def test_quota_rejection_explains_totals() -> None:
    result = nvidia_fit([usage("a")], req(1, mem=6000, cores=10), ctx(quota=quota(5000, 0)))
    assert result.rejections[0].message == "a: namespace quota exceeded by a total of 6000 MiB, 10 cores"


# ------------------------------------------------------------------------------- properties

device_st = st.builds(
    lambda i, used, count, usedmem, usedcores, health, numa: usage(
        f"GPU-{i}",
        index=i,
        count=count,
        used=min(used, count),
        usedmem=usedmem,
        usedcores=usedcores,
        health=health,
        numa=numa,
    ),
    st.integers(0, 1000),
    st.integers(0, 10),
    st.integers(0, 10),
    st.integers(0, 8000),
    st.sampled_from([0, 20, 50, 100]),
    st.booleans(),
    st.integers(0, 1),
)
request_st = st.builds(
    req,
    nums=st.integers(1, 4),
    mem=st.sampled_from([0, 1000, 4000, 7999]),
    pct=st.sampled_from([101, 10, 50, 100]),
    cores=st.sampled_from([0, 10, 50, 100, 120]),
)


def _unique(devices: list[DeviceUsage]) -> list[DeviceUsage]:
    return list({d.id: d for d in devices}.values())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(device_st, min_size=1, max_size=8).map(_unique), request_st, st.randoms(use_true_random=False)
)
def test_fit_outcome_does_not_depend_on_device_order(
    devices: list[DeviceUsage], request_: object, rnd: object
) -> None:
    """Without quota, NUMA binding or MIG, fit/unfit and the reason counts are order-independent,
    which is what lets the scheduler decide unfit nodes without scoring and sorting them."""
    shuffled = list(devices)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a = nvidia_fit(devices, request_, ctx())  # type: ignore[arg-type]
    b = nvidia_fit(shuffled, request_, ctx())  # type: ignore[arg-type]
    assert a.ok == b.ok
    assert dict(a.reasons) == dict(b.reasons)


@settings(max_examples=200, deadline=None)
@given(st.lists(device_st, min_size=1, max_size=8).map(_unique), request_st)
def test_prefilter_never_rejects_a_fitting_node(devices: list[DeviceUsage], request_: object) -> None:
    summary = summarise(tuple(devices), NVIDIA)
    if not NvidiaVendor().prefilter(summary, request_):  # type: ignore[arg-type]
        assert not nvidia_fit(devices, request_, ctx()).ok  # type: ignore[arg-type]
