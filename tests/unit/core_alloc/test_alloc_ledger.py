"""The allocation ledger: assume/confirm/forget/release, commits, quarantine, incremental snapshots."""

from __future__ import annotations

import pytest
from alloc_builders import cd, gpu, ledger_with

from hami.core.errors import LedgerError
from hami.core.ledger import Ledger, PodState
from hami.core.model import NVIDIA, DeviceInfo
from hami.core.snapshot import ClusterSnapshot


def one(uuid: str, mem: int, cores: int) -> dict[str, tuple[tuple[object, ...], ...]]:
    return {NVIDIA: ((cd(uuid, mem, cores),),)}


def usage_of(snap: ClusterSnapshot, node: str) -> list[tuple[str, int, int, int]]:
    return [(d.id, d.used, d.usedmem, d.usedcores) for d in snap.nodes[node].devices]


@pytest.fixture
def ledger() -> Ledger:
    return ledger_with({"n1": [gpu("A"), gpu("B", index=1)], "n2": [gpu("C")]})


def test_assume_is_visible_to_the_next_snapshot(ledger: Ledger) -> None:
    ledger.assume("p", "n1", one("A", 3000, 30), namespace="ns")  # type: ignore[arg-type]
    assert usage_of(ledger.snapshot(), "n1") == [("A", 1, 3000, 30), ("B", 0, 0, 0)]
    entry = ledger.pod("p")
    assert entry is not None and entry.state is PodState.ASSUMED and entry.node == "n1"
    assert [p.uid for p in ledger.assumed()] == ["p"]
    assert ledger.namespace_usage("ns", NVIDIA) == (3000, 30)


def test_assume_then_forget_is_the_identity(ledger: Ledger) -> None:
    before = ledger.snapshot()
    ledger.assume("p", "n1", one("A", 3000, 30))  # type: ignore[arg-type]
    assert ledger.forget("p")
    after = ledger.snapshot()
    assert usage_of(after, "n1") == usage_of(before, "n1")
    assert after.nodes["n1"].score == before.nodes["n1"].score
    assert after.generation > before.generation
    assert ledger.pod("p") is None and ledger.namespace_usage("", NVIDIA) == (0, 0)
    assert not ledger.forget("p")  # idempotent


def test_forget_leaves_committed_pods_alone(ledger: Ledger) -> None:
    ledger.commit("p", "n1", one("A", 1000, 10))  # type: ignore[arg-type]
    assert not ledger.forget("p")
    assert usage_of(ledger.snapshot(), "n1")[0] == ("A", 1, 1000, 10)


def test_confirm_is_idempotent(ledger: Ledger) -> None:
    ledger.assume("p", "n1", one("A", 3000, 30))  # type: ignore[arg-type]
    generation = ledger.generation
    assert ledger.confirm("p") and ledger.confirm("p")
    assert ledger.generation == generation
    entry = ledger.pod("p")
    assert entry is not None and entry.state is PodState.COMMITTED
    assert not ledger.confirm("unknown")
    assert not ledger.forget("p")  # no longer an assumption


def test_commit_of_the_assumed_value_confirms_without_a_rebuild(ledger: Ledger) -> None:
    ledger.assume("p", "n1", one("A", 3000, 30))  # type: ignore[arg-type]
    snap = ledger.snapshot()
    assert ledger.commit("p", "n1", one("A", 3000, 30))  # type: ignore[arg-type]
    assert ledger.snapshot() is snap
    assert ledger.pod("p").state is PodState.COMMITTED  # type: ignore[union-attr]


def test_commit_replaces_a_different_assumption(ledger: Ledger) -> None:
    ledger.assume("p", "n1", one("A", 3000, 30))  # type: ignore[arg-type]
    ledger.commit("p", "n2", one("C", 1000, 5))  # type: ignore[arg-type]
    snap = ledger.snapshot()
    assert usage_of(snap, "n1") == [("A", 0, 0, 0), ("B", 0, 0, 0)]
    assert usage_of(snap, "n2") == [("C", 1, 1000, 5)]


def test_release_is_idempotent_and_drops_any_state(ledger: Ledger) -> None:
    ledger.commit("p", "n1", one("A", 1000, 10))  # type: ignore[arg-type]
    assert ledger.release("p")
    assert not ledger.release("p")
    assert usage_of(ledger.snapshot(), "n1")[0] == ("A", 0, 0, 0)


@pytest.mark.parametrize(
    ("node", "devices", "message"),
    [
        ("n1", one("A", 9000, 0), "memory 9000 > 8000"),
        ("n1", one("A", 10, 101), "cores 101 > 100"),
        ("n1", one("Z", 10, 1), "no device Z"),
        ("ghost", one("A", 10, 1), "node not registered"),
    ],
)
def test_assume_refuses_overcommit_and_leaves_no_trace(
    ledger: Ledger, node: str, devices: dict[str, object], message: str
) -> None:
    before = ledger.snapshot()
    with pytest.raises(LedgerError, match=message):
        ledger.assume("p", node, devices)  # type: ignore[arg-type]
    assert ledger.snapshot() is before
    assert ledger.pod("p") is None


def test_assume_refuses_split_count_and_duplicates(ledger: Ledger) -> None:
    ledger.set_node_devices("n3", [gpu("S", count=1)])
    ledger.assume("p", "n3", one("S", 10, 1))  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="tasks 2 > 1"):
        ledger.assume("q", "n3", one("S", 10, 1))  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="already assumed"):
        ledger.assume("p", "n3", one("S", 10, 1))  # type: ignore[arg-type]


def test_commit_never_refuses_and_invariants_report_it(ledger: Ledger) -> None:
    ledger.commit("p", "n2", one("C", 6000, 60))  # type: ignore[arg-type]
    ledger.commit("q", "n2", one("C", 6000, 60))  # type: ignore[arg-type]
    assert [str(v) for v in ledger.check_invariants()] == [
        "n2/C: memory 12000 > 8000",
        "n2/C: cores 120 > 100",
    ]


def test_quarantine_blocks_the_node_until_the_pod_is_released_or_readable(ledger: Ledger) -> None:
    ledger.quarantine("n1", "bad", "cannot decode hami.io/vgpu-devices-allocated")
    node = ledger.snapshot().nodes["n1"]
    assert not node.schedulable and node.quarantined == (
        ("bad", "cannot decode hami.io/vgpu-devices-allocated"),
    )
    assert dict(ledger.quarantined()) == {"bad": "n1"}
    with pytest.raises(LedgerError, match="quarantined"):
        ledger.assume("p", "n1", one("A", 10, 1))  # type: ignore[arg-type]
    assert ledger.release("bad")
    assert ledger.snapshot().nodes["n1"].schedulable
    ledger.quarantine("n1", "bad2", "x")
    ledger.commit("bad2", "n1", one("A", 100, 1))  # type: ignore[arg-type]  # the annotation became readable
    assert ledger.snapshot().nodes["n1"].schedulable
    assert usage_of(ledger.snapshot(), "n1")[0] == ("A", 1, 100, 1)


def test_quarantine_of_an_unregistered_node_is_kept_until_it_registers() -> None:
    ledger = Ledger()
    ledger.quarantine("later", "bad", "x")
    assert "later" not in ledger.snapshot().nodes
    ledger.set_node_devices("later", [gpu("L")])
    assert not ledger.snapshot().nodes["later"].schedulable


def test_snapshot_is_shared_while_nothing_changes_and_rebuilds_only_dirty_nodes(ledger: Ledger) -> None:
    first = ledger.snapshot()
    assert ledger.snapshot() is first
    ledger.assume("p", "n1", one("A", 1000, 10))  # type: ignore[arg-type]
    second = ledger.snapshot()
    assert second is not first and second.generation > first.generation
    assert second.nodes["n2"] is first.nodes["n2"]  # untouched node reused
    assert second.nodes["n1"] is not first.nodes["n1"]
    assert second.nodes["n1"].generation == second.generation
    assert first.nodes["n1"].devices[0].used == 0  # old snapshots never change
    with pytest.raises(TypeError):
        second.nodes["x"] = second.nodes["n1"]  # type: ignore[index]


def test_node_orders_follow_scores_with_name_ties(ledger: Ledger) -> None:
    ledger.set_node_devices("n0", [gpu("Z")])
    assert ledger.snapshot().binpack_order == ("n0", "n1", "n2")
    ledger.commit("p", "n2", one("C", 4000, 50))  # type: ignore[arg-type]
    snap = ledger.snapshot()
    assert snap.binpack_order == ("n2", "n0", "n1")
    assert snap.spread_order == ("n0", "n1", "n2")
    ledger.remove_node("n0")
    snap = ledger.snapshot()
    assert snap.binpack_order == ("n2", "n1") and "n0" not in snap.nodes


def test_capacity_changes_keep_pods_accounted() -> None:
    ledger = ledger_with({"n": [gpu("A")]}, [("p", "n", [cd("A", 1000, 10)])])
    ledger.remove_node("n")
    assert "n" not in ledger.snapshot().nodes
    assert ledger.pods_on("n") == ("p",)
    ledger.set_node_devices("n", [gpu("A", mem=16000)])
    device = ledger.snapshot().nodes["n"].devices[0]
    assert (device.totalmem, device.used, device.usedmem) == (16000, 1, 1000)


def test_vendor_scoped_capacity_updates() -> None:
    ledger = Ledger()
    other = DeviceInfo(
        id="X-1", count=4, devmem=1000, devcore=100, type="OTHER-card", health=True, devicevendor="OTHER"
    )  # type: ignore[arg-type]
    ledger.set_node_devices("n", [gpu("A"), other])
    ledger.set_node_devices("n", [gpu("A", mem=16000)], vendor=NVIDIA)
    devices = ledger.snapshot().nodes["n"].devices
    assert [(d.id, d.totalmem) for d in devices] == [("A", 16000), ("X-1", 1000)]
    generation = ledger.generation
    ledger.set_node_devices("n", [gpu("A", mem=16000)], vendor=NVIDIA)  # unchanged: no new generation
    assert ledger.generation == generation
    ledger.set_node_devices("n", [], vendor="OTHER")
    assert [d.id for d in ledger.snapshot().nodes["n"].devices] == ["A"]
    summary = ledger.snapshot().nodes["n"].summaries[NVIDIA]
    assert (summary.devices, summary.available, summary.max_free_mem) == (1, 1, 16000)
