"""Dynamic MIG (hami-scheduler-spec.md §5.3, §5.6): AddResourceUsage goldens, the A100 worked
example end to end, feasibility, and the ledger's accounting of MIG-suffixed UUIDs."""

from __future__ import annotations

import pytest
from alloc_builders import cd, gpu, ledger_with, pod, req, usage

from hami.core.deviceconfig import NvidiaConfig
from hami.core.fit import FitContext, nvidia_fit
from hami.core.ledger import Ledger
from hami.core.mig import (
    MigAllocationError,
    MigUsage,
    account_instances,
    materialise,
    mig_allocate,
    mig_feasible,
)
from hami.core.model import NVIDIA, MigTemplate
from hami.core.placement import Decision, schedule
from hami.core.vendor import NvidiaVendor, default_registry


def t(name: str, core: int, memory: int, count: int) -> MigTemplate:
    return MigTemplate(name=name, core=core, memory=memory, count=count)


G_DEV0 = ((t("1g.5gb", 25, 5120, 1),), (t("1g.5gb", 25, 5120, 1), t("2g.10gb", 50, 10240, 1)))
G_DEV1 = ((t("1g.3gb", 25, 3072, 1),), (t("1g.5gb", 25, 5120, 1), t("2g.10gb", 50, 10240, 1)))
G_DEV2 = ((t("1g.5gb", 25, 5120, 1), t("2g.10gb", 50, 10240, 1)), (t("3g.20gb", 100, 20480, 1),))
G_DEV3 = ((t("1g.5gb", 50, 5120, 2), t("2g.10gb", 100, 10240, 1)),)


@pytest.mark.parametrize(
    ("uuid", "geometries", "usedmem", "expected_uuid", "geometry"),
    [
        ("dev-0", G_DEV0, 6000, "dev-0[1-1]", 1),
        ("dev-1", G_DEV1, 8000, "dev-1[1-1]", 1),
        ("dev-2", G_DEV2, 6000, "dev-2[0-1]", 0),
    ],
)
def test_add_resource_usage_mig_goldens(
    uuid: str,
    geometries: tuple[tuple[MigTemplate, ...], ...],
    usedmem: int,
    expected_uuid: str,
    geometry: int,
) -> None:
    device = usage(uuid, mode="mig", mem=40960, mig=geometries)
    updated, entry = NvidiaVendor().add_resource_usage(device, cd(uuid, usedmem, 0))
    assert entry.uuid == expected_uuid
    assert (entry.usedmem, entry.usedcores) == (10240, 50)
    assert updated.mig.geometry == geometry
    assert (updated.used, updated.usedmem, updated.usedcores) == (1, 10240, 50)


def test_template_index_quirk_is_reproducible_and_fixed_by_default() -> None:
    """dev-3: the 2g.10gb template has index 1 but its instance is list position 2 (spec §14 #7)."""
    device = usage("dev-3", mode="mig", mem=40960, mig=G_DEV3)
    updated, entry = NvidiaVendor(template_index_suffix=True).add_resource_usage(device, cd("dev-3", 8000, 0))
    assert entry.uuid == "dev-3[0-1]"  # v2.8.0's wire value
    assert (entry.usedmem, entry.usedcores) == (10240, 100)
    assert [i.in_use for i in updated.mig.instances] == [False, False, True]
    _, fixed = NvidiaVendor().add_resource_usage(device, cd("dev-3", 8000, 0))
    assert fixed.uuid == "dev-3[0-2]"  # the slot the device plugin will carve, and the ledger will mark


def test_add_resource_usage_non_mig_adds_up() -> None:
    device = usage("dev", used=0, usedmem=2000, usedcores=15)
    updated, entry = NvidiaVendor().add_resource_usage(device, cd("dev", 1024, 50))
    assert entry == cd("dev", 1024, 50)
    assert (updated.used, updated.usedmem, updated.usedcores) == (1, 3024, 65)


def test_second_allocation_takes_next_free_instance_and_errors_when_full() -> None:
    first_usage, first = mig_allocate(MigUsage(), G_DEV0, cd("g", 6000, 0))
    assert first.uuid == "g[1-1]"
    second_usage, second = mig_allocate(first_usage, G_DEV0, cd("g", 1000, 0))
    assert second.uuid == "g[1-0]"
    assert (second.usedmem, second.usedcores) == (5120, 25)
    with pytest.raises(MigAllocationError, match="allocate resource fail"):
        mig_allocate(second_usage, G_DEV0, cd("g", 1000, 0))
    with pytest.raises(MigAllocationError):
        mig_allocate(MigUsage(), G_DEV0, cd("g", 50000, 0))  # no template that large


def test_feasibility_replays_the_containers_picks() -> None:
    assert mig_feasible(MigUsage(), G_DEV0, 6000, [])
    assert not mig_feasible(MigUsage(), G_DEV0, 60000, [])
    # geometry 0 of G_DEV2 has one 5 GiB and one 10 GiB instance: two picks use both.
    assert mig_feasible(MigUsage(), G_DEV2, 1000, [cd("x", 1000, 0)])
    assert not mig_feasible(MigUsage(), G_DEV2, 1000, [cd("x", 1000, 0), cd("y", 1000, 0)])


def test_fit_places_several_instances_of_one_container_on_one_mig_gpu() -> None:
    device = usage("A", mode="mig", mem=40960, count=10, mig=G_DEV2)
    result = nvidia_fit([device], req(2, mem=1000), FitContext(vendor=NVIDIA))
    assert [d.uuid for d in result.devices] == ["A", "A"]
    assert nvidia_fit([device], req(3, mem=1000), FitContext(vendor=NVIDIA)).reason == (
        "1/1 CardNotFoundCustomFilterRule, 1/1 AllocatedCardsInsufficientRequest"
    )


def test_a100_worked_example_end_to_end() -> None:
    """A100-40GB in mig mode, gpumem 8000: [1-1] then [1-2], each 10240 MiB / 28 cores (spec §5.6)."""
    config = NvidiaConfig()
    a100 = gpu(
        "GPU-xxxx",
        type="NVIDIA A100-SXM4-40GB",
        mode="mig",
        mem=40960,
        mig=config.mig_geometries_for("A100-SXM4-40GB"),
    )
    ledger = ledger_with({"node-a": [a100]})
    vendors = default_registry(config)
    first = schedule(ledger.snapshot(), ["node-a"], pod(req(1, mem=8000), uid="p1"), vendors)
    assert isinstance(first, Decision)
    nvidia = NvidiaVendor(config)
    assert nvidia.allocation_annotations(first.devices[NVIDIA])["hami.io/vgpu-devices-allocated"] == (
        "GPU-xxxx[1-1],NVIDIA,10240,28:;"
    )
    ledger.assume("p1", "node-a", first.devices)
    second = schedule(ledger.snapshot(), ["node-a"], pod(req(1, mem=8000), uid="p2"), vendors)
    assert isinstance(second, Decision)
    assert nvidia.allocation_annotations(second.devices[NVIDIA])["hami.io/vgpu-devices-to-allocate"] == (
        "GPU-xxxx[1-2],NVIDIA,10240,28:;"
    )
    ledger.assume("p2", "node-a", second.devices)
    device = ledger.snapshot().nodes["node-a"].devices[0]
    assert device.mig.geometry == 1
    assert [i.in_use for i in device.mig.instances] == [False, True, True, False]
    assert (device.used, device.usedmem, device.usedcores) == (2, 20480, 56)
    assert ledger.check_invariants() == []


def test_ledger_accounts_mig_suffixes_from_annotations() -> None:
    config = NvidiaConfig()
    a100 = gpu(
        "GPU-m",
        type="NVIDIA A100-SXM4-40GB",
        mode="mig",
        mem=40960,
        mig=config.mig_geometries_for("A100-SXM4-40GB"),
    )
    ledger = ledger_with({"n": [a100]}, [("p", "n", [cd("GPU-m[2-1]", 20480, 42)])])
    device = ledger.snapshot().nodes["n"].devices[0]
    assert device.mig.geometry == 2
    assert [i.in_use for i in device.mig.instances] == [False, True]
    assert device.usedmem == 20480 and device.used == 1
    ledger.commit("q", "n", {NVIDIA: ((cd("GPU-m[2-1]", 20480, 42),),)})
    assert [str(v) for v in ledger.check_invariants()] == ["n/GPU-m: MIG slot 1 (geometry 2) allocated twice"]


def test_mig_allocation_on_a_hami_core_gpu_marks_it_unhealthy() -> None:
    ledger = ledger_with({"n": [gpu("GPU-h")]}, [("p", "n", [cd("GPU-h[0-0]", 5120, 14)])])
    device = ledger.snapshot().nodes["n"].devices[0]
    assert not device.health
    assert [v.kind for v in ledger.check_invariants()] == ["mig"]


def test_malformed_mig_suffix_quarantines_the_node() -> None:
    ledger = Ledger()
    ledger.set_node_devices("n", [gpu("GPU-q")])
    assert not ledger.commit("bad", "n", {NVIDIA: ((cd("GPU-q[x-1]", 10, 1),),)})
    node = ledger.snapshot().nodes["n"]
    assert not node.schedulable
    assert "GPU-q[x-1]" in node.quarantined[0][1]
    ledger.release("bad")
    assert ledger.snapshot().nodes["n"].schedulable


def test_account_instances_reports_impossible_states() -> None:
    usage_, problems = account_instances(G_DEV0, [(5, 0)])
    assert usage_.instances == () and problems == ["MIG geometry 5 unknown (2 geometries)"]
    usage_, problems = account_instances(G_DEV0, [(1, 0), (0, 1), (1, 9)])
    assert problems == [
        "MIG geometry 0 differs from current geometry 1",
        "MIG slot 9 out of range (geometry 1)",
    ]
    assert [i.in_use for i in usage_.instances] == [True, True]
    assert materialise(G_DEV3, 0).instances[2].name == "2g.10gb"
