"""A pod asking two vendors: one annotation pair per vendor (spec §4.5), placed only where both fit;
failures name the vendor whose predicate failed (``hami why``)."""

from __future__ import annotations

from datetime import UTC, datetime

from vendor_builders import NOW, annotations_for, cluster, place, pod, registry

from hami.core import keys
from hami.core.placement import Decision, Unschedulable
from hami.scheduler.explain import unschedulable_record

NVIDIA_REGISTER = (
    '[{"id":"GPU-a","count":10,"devmem":23028,"devcore":100,"type":"NVIDIA A10","mode":"hami-core",'
    '"health":true,"devicepairscore":{}}]'
)
DCU_REGISTER = "DCU-a,4,16368,100,DCU-Z100,0,true,0,hami-core:"
MLU_CAPACITY = {"cambricon.com/mlu.smlu.vcore": "200", "cambricon.com/mlu.smlu.vmemory": "192"}


def mixed_cluster() -> tuple[object, object]:
    reg = registry()
    ledger = cluster(
        reg,
        {
            "mixed": ({keys.NODE_NVIDIA_REGISTER: NVIDIA_REGISTER}, MLU_CAPACITY),
            "nvidia-only": ({keys.NODE_NVIDIA_REGISTER: NVIDIA_REGISTER}, {}),
            "mlu-only": ({}, MLU_CAPACITY),
            "dcu-and-mlu": ({"hami.io/node-dcu-register": DCU_REGISTER}, MLU_CAPACITY),
        },
    )
    return reg, ledger


def test_two_vendors_in_one_container_fit_only_where_both_fit() -> None:
    reg, ledger = mixed_cluster()
    raw = pod({"nvidia.com/gpu": 1, "nvidia.com/gpumem": 3000, "cambricon.com/vmlu": 1})
    decision = place(reg, ledger.snapshot(), raw)  # type: ignore[arg-type]
    assert isinstance(decision, Decision)
    assert decision.node == "mixed"
    notes = annotations_for(reg, decision, raw)  # type: ignore[arg-type]
    assert notes == {
        "hami.io/vgpu-devices-to-allocate": "GPU-a,NVIDIA,3000,0:;",
        "hami.io/vgpu-devices-allocated": "GPU-a,NVIDIA,3000,0:;",
        "hami.io/cambricon-mlu-devices-to-allocate": "mixed-cambricon-mlu-1,MLU,24576,100:;",
        "hami.io/cambricon-mlu-devices-allocated": "mixed-cambricon-mlu-1,MLU,24576,100:;",
        "CAMBRICON_DSMLU_ASSIGNED": "false",
        "CAMBRICON_DSMLU_PROFILE": "1_100_96",
    }
    decoded = reg.decode_allocations(notes)  # type: ignore[attr-defined]
    assert {v: _wire(p) for v, p in decoded.items()} == {v: _wire(p) for v, p in decision.devices.items()}


def _wire(psd: object) -> list[list[tuple[str, str, int, int]]]:
    return [[(cd.uuid, cd.type, cd.usedmem, cd.usedcores) for cd in c] for c in psd]  # type: ignore[attr-defined]


def test_two_vendors_in_two_containers_keep_container_positions() -> None:
    reg, ledger = mixed_cluster()
    raw = pod({"hygon.com/dcunum": 1, "hygon.com/dcumem": 1000}, None, {"cambricon.com/vmlu": 1})
    decision = place(reg, ledger.snapshot(), raw)  # type: ignore[arg-type]
    assert isinstance(decision, Decision) and decision.node == "dcu-and-mlu"
    notes = annotations_for(reg, decision, raw)  # type: ignore[arg-type]
    assert notes["hami.io/dcu-devices-allocated"] == "DCU-a,DCU,1000,100:;;;"
    assert notes["hami.io/cambricon-mlu-devices-allocated"] == ";;dcu-and-mlu-cambricon-mlu-1,MLU,24576,100:;"
    assert notes["CAMBRICON_DSMLU_PROFILE"] == "1_100_96"


def test_a_pod_that_fits_nowhere_names_the_failing_vendor_predicate() -> None:
    reg, ledger = mixed_cluster()
    raw = pod(
        {"nvidia.com/gpu": 1, "cambricon.com/vmlu": 1, "cambricon.com/mlu.smlu.vmemory": 200},  # 51200 MiB
        name="too-big",
    )
    result = place(reg, ledger.snapshot(), raw)  # type: ignore[arg-type]
    assert isinstance(result, Unschedulable)
    failures = result.failures
    assert failures["mixed"].vendor == "MLU"
    assert failures["mixed"].detail == "2/2 CardInsufficientMemory"
    assert failures["mlu-only"].vendor == "NVIDIA"  # its MLUs would do, no NVIDIA GPU: NVIDIA fails first
    assert failures["nvidia-only"].vendor == "MLU"
    assert result.event_messages() == ["1 nodes CardInsufficientMemory(mixed)"]

    from vendor_builders import request_of

    record = unschedulable_record(
        request_of(reg, raw),
        result,
        when=datetime(2026, 1, 20, tzinfo=UTC),
        candidates=4,
        max_nodes=10,  # type: ignore[arg-type]
    ).to_json()
    by_node = {n["node"]: n for n in record["nodes"]}
    assert by_node["mixed"]["vendor"] == "MLU"
    assert {d["reason"] for d in by_node["mixed"]["devices"]} == {"CardInsufficientMemory"}
    assert by_node["mixed"]["devices"][0]["message"].endswith("free 24576 MiB < 51200 MiB")
    assert by_node["nvidia-only"]["devices"][0]["message"] == (
        "MLU: NodeInsufficientDevice (the node has no MLU devices)"
    )
    assert any("1 x MLU, 51200 MiB" in line for line in record["request"])
    assert NOW.tzinfo is UTC
