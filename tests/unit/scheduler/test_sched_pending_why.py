"""Why records formatted on read (PendingRecord) equal the eager ones; event texts from counts equal
the texts parsed from HAMi's reason strings."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from hami.core.fit import Reason
from hami.core.ids import DeviceID, NodeName
from hami.core.ledger import Ledger
from hami.core.model import NVIDIA, ContainerDevice, ContainerDeviceRequest, DeviceInfo
from hami.core.placement import Decision, NodeFailure, Unschedulable, schedule
from hami.core.requests import ContainerRequest, PodRequest
from hami.core.vendor import default_registry
from hami.scheduler.explain import (
    PENDING_FACTOR,
    WhyBook,
    error_record,
    pending_scheduled_record,
    pending_unschedulable_record,
    scheduled_record,
    unschedulable_record,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def cluster() -> Ledger:
    ledger = Ledger()
    for n in range(6):
        ledger.set_node_devices(
            f"n{n}",
            [
                DeviceInfo(
                    id=DeviceID(f"GPU-{n}-{g}"),
                    index=g,
                    count=2,
                    devmem=8000,
                    devcore=100,
                    type="NVIDIA A10",
                    mode="hami-core",
                    health=n != 4,
                    devicevendor=NVIDIA,
                )
                for g in range(2)
            ],
        )
        for g in range(n % 3):  # varied usage, so nodes fail for different reasons
            used = {
                NVIDIA: ((ContainerDevice(uuid=f"GPU-{n}-{g}", type=NVIDIA, usedmem=7000, usedcores=50),),)
            }
            ledger.commit(f"pre-{n}-{g}", f"n{n}", used)  # type: ignore[arg-type]
    ledger.quarantine("n5", "bad-pod", "unreadable")
    return ledger


def request(mem: int, nums: int = 1) -> PodRequest:
    req = ContainerDeviceRequest(nums=nums, type=NVIDIA, memreq=mem, coresreq=30)
    return PodRequest(
        uid="u1",
        namespace="ns",
        name="p",
        containers=(ContainerRequest(index=0, name="main", devices={NVIDIA: req}),),
    )


CANDIDATES = [f"n{n}" for n in range(6)] + ["gone"]


def test_pending_unschedulable_record_equals_the_eager_one() -> None:
    pod = request(mem=9000)
    result = schedule(cluster().snapshot(), CANDIDATES, pod, default_registry())
    assert isinstance(result, Unschedulable) and len(result.failures) == 7
    overrides = {"gone": NodeFailure(node=NodeName("gone"), reason="NodeQuarantined", note="unreadable")}
    # 100: failures kept as they are, chosen on read; 1: more than PENDING_FACTOR x max_nodes, so
    # the shown ones are chosen at once.
    for max_nodes in (100, 3, 1):
        for extra in (None, overrides):
            args = dict(when=NOW, candidates=len(CANDIDATES), max_nodes=max_nodes, overrides=extra)
            eager = unschedulable_record(pod, result, **args)  # type: ignore[arg-type]
            pending = pending_unschedulable_record(pod, result, **args)  # type: ignore[arg-type]
            assert (pending.namespace, pending.name, pending.uid) == ("ns", "p", "u1")
            assert pending.record() == eager and pending.record() is pending.record()
            assert eager.omitted_nodes == max(0, 7 - max_nodes)
    assert 7 > PENDING_FACTOR * 1
    lines = unschedulable_record(pod, result, when=NOW, candidates=7, max_nodes=100).nodes
    assert any(d.message for line in lines for d in line.devices)  # device lines were built on read


def test_pending_scheduled_record_equals_the_eager_one() -> None:
    pod = request(mem=1000)
    decision = schedule(cluster().snapshot(), CANDIDATES, pod, default_registry())
    assert isinstance(decision, Decision)
    annotations = {"hami.io/vgpu-node": decision.node}
    args = dict(when=NOW, candidates=len(CANDIDATES), annotations=annotations)
    pending = pending_scheduled_record(pod, decision, **args)  # type: ignore[arg-type]
    assert pending.record() == scheduled_record(pod, decision, **args)  # type: ignore[arg-type]


def test_why_book_formats_pending_records_on_read_without_reordering() -> None:
    pod = request(mem=9000)
    result = schedule(cluster().snapshot(), CANDIDATES, pod, default_registry())
    assert isinstance(result, Unschedulable)
    book = WhyBook(capacity=2)
    book.put(pending_unschedulable_record(pod, result, when=NOW, candidates=7, max_nodes=10))
    book.put(error_record("ns", "other", "u2", "boom", when=NOW))
    first = book.get("ns", "p")
    assert first is not None and first.outcome == "unschedulable" and book.get("ns", "p") is first
    book.put(error_record("ns", "third", "u3", "boom", when=NOW))  # evicts the least recently written
    assert book.get("ns", "p") is None and book.get("ns", "other") is not None
    book.put(pending_unschedulable_record(pod, result, when=NOW, candidates=7, max_nodes=10))
    book.drop("ns", "p", "u1")
    assert book.get("ns", "p") is None


def event_messages_from_text(result: Unschedulable) -> list[str]:
    """The former implementation: parse each node's HAMi reason string."""
    by_reason: dict[str, list[str]] = {}
    for name, failure in result.failures.items():
        for item in failure.detail.split(", "):
            count, sep, reason = item.partition(" ")
            if sep and "/" in count and reason:
                by_reason.setdefault(reason, []).append(name)
    return [f"{len(nodes)} nodes {r}({','.join(sorted(nodes))})" for r, nodes in sorted(by_reason.items())]


failure_st = st.one_of(
    st.builds(
        lambda counts, considered: ("", counts, considered),
        st.dictionaries(st.sampled_from([r.value for r in Reason]), st.integers(0, 8), max_size=4),
        st.integers(0, 8),
    ),
    st.builds(
        lambda note: (note, {}, 0),
        st.sampled_from(["NodeInsufficientDevice", "unreadable allocation of pod x: 1/2 bad, 3/4 Worse", ""])
        | st.text(max_size=20),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(failure_st, max_size=8))
def test_event_messages_from_counts_equal_the_parsed_text(
    failures: list[tuple[str, dict[str, int], int]],
) -> None:
    result = Unschedulable(
        generation=1,
        failures=MappingProxyType(
            {
                NodeName(f"n{i}"): NodeFailure(
                    node=NodeName(f"n{i}"),
                    reason="NodeUnfitPod",
                    note=note,
                    counts=counts,
                    considered=considered,
                )
                for i, (note, counts, considered) in enumerate(failures)
            }
        ),
    )
    assert result.event_messages() == event_messages_from_text(result)
