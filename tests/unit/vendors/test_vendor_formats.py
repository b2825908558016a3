"""Each vendor, from the wire formats of spec §4.4/§4.5/§11: its node's registration or capacity is
decoded, pods are placed through ``placement.schedule`` and the annotations are HAMi 2.8's bytes."""

from __future__ import annotations

import json

import pytest
from vendor_builders import NOW, annotations_for, cluster, place, pod, registry

from hami.core.placement import Decision, Unschedulable
from hami.core.vendor import VendorRegistry

NANOS = "1768893137000000000"  # NOW as Go UnixNano
SECONDS = "1768893137"


@pytest.fixture(scope="module")
def reg() -> VendorRegistry:
    return registry()


def decided(result: Decision | Unschedulable) -> Decision:
    assert isinstance(result, Decision), getattr(result, "failures", result)
    return result


def unschedulable(result: Decision | Unschedulable) -> Unschedulable:
    assert isinstance(result, Unschedulable), result
    return result


# --------------------------------------------------------------------------------------- Cambricon


def test_cambricon_capacity_256mib_units_and_dsmlu_profile(reg: VendorRegistry) -> None:
    node = {
        "cambricon.com/vmlu": "40",
        "cambricon.com/mlu.smlu.vcore": "400",
        "cambricon.com/mlu.smlu.vmemory": "384",  # 4 cards × 24576 MiB in 256 MiB units
    }
    ledger = cluster(reg, {"mlu": ({}, node)})
    devices = ledger.snapshot().nodes["mlu"].devices  # type: ignore[index]
    first = devices[0]
    assert (first.id, first.totalmem, first.count, first.totalcore, first.type) == (
        "mlu-cambricon-mlu-0",
        24576,
        100,
        100,
        "MLU",
    )
    assert len(devices) == 4
    raw = pod(
        {"cambricon.com/vmlu": 1, "cambricon.com/mlu.smlu.vmemory": 20, "cambricon.com/mlu.smlu.vcore": 10}
    )
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert annotations_for(reg, decision, raw) == {
        "hami.io/cambricon-mlu-devices-to-allocate": "mlu-cambricon-mlu-3,MLU,5120,10:;",
        "hami.io/cambricon-mlu-devices-allocated": "mlu-cambricon-mlu-3,MLU,5120,10:;",
        "CAMBRICON_DSMLU_ASSIGNED": "false",
        "CAMBRICON_DSMLU_PROFILE": "3_10_20",
    }
    # No memory: the whole card; no cores: 100. The profile comes from the first container holding an MLU.
    whole = pod(None, {"cambricon.com/vmlu": 1})
    decision = decided(place(reg, ledger.snapshot(), whole))
    notes = annotations_for(reg, decision, whole)
    assert notes["hami.io/cambricon-mlu-devices-allocated"] == ";mlu-cambricon-mlu-3,MLU,24576,100:;"
    assert notes["CAMBRICON_DSMLU_PROFILE"] == "3_100_96"


# --------------------------------------------------------------------------------------- Hygon

DCU_REGISTER = (
    "DCU-a,4,16368,100,DCU-Z100,0,true,0,hami-core:"
    "DCU-b,4,16368,100,DCU-Z100,0,true,1,hami-core:"
    "DCU-c,4,16368,100,DCU-Z100,0,false,2,hami-core:"
)


def test_hygon_legacy_register_and_type_uuid_selection(reg: VendorRegistry) -> None:
    ledger = cluster(reg, {"dcu": ({"hami.io/node-dcu-register": DCU_REGISTER}, {})})
    raw = pod({"hygon.com/dcunum": 1, "hygon.com/dcumem": 2000, "hygon.com/dcucores": 30})
    decision = decided(place(reg, ledger.snapshot(), raw))
    # DCU-c is unhealthy in its register entry: never chosen although it is searched first.
    assert annotations_for(reg, decision, raw) == {
        "hami.io/dcu-devices-to-allocate": "DCU-b,DCU,2000,30:;",
        "hami.io/dcu-devices-allocated": "DCU-b,DCU,2000,30:;",
    }
    avoid = pod({"hygon.com/dcunum": 1}, annotations={"hygon.com/nouse-gpuuuid": "DCU-b"})
    decision = decided(place(reg, ledger.snapshot(), avoid))
    assert decision.devices["DCU"] == ((decision.devices["DCU"][0][0],),)
    assert decision.devices["DCU"][0][0].uuid == "DCU-a"
    assert decision.devices["DCU"][0][0].usedmem == 16368  # no memory: 100 % of the card
    wrong = pod({"hygon.com/dcunum": 1}, annotations={"hygon.com/use-dcutype": "k100"})
    failure = unschedulable(place(reg, ledger.snapshot(), wrong)).failures["dcu"]
    assert failure.vendor == "DCU"
    assert failure.detail == "2/3 CardTypeMismatch, 1/3 CardNotHealth"


def test_hygon_register_errors_are_hami_messages(reg: VendorRegistry) -> None:
    dcu = reg["DCU"]
    with pytest.raises(Exception, match=r"annos not found hami\.io/node-dcu-register"):
        dcu.node_devices({}, {})
    with pytest.raises(Exception, match="node annotations not decode successfully"):
        dcu.node_devices({"hami.io/node-dcu-register": "a"}, {})
    with pytest.raises(Exception, match="no gpu found on node"):
        dcu.node_devices({"hami.io/node-dcu-register": ":"}, {})


# --------------------------------------------------------------------------------------- Iluvatar


def test_iluvatar_per_chip_keys_and_256mib_units(reg: VendorRegistry) -> None:
    register = "ILU-0,4,32768,100,BI-V100,0,true,0,hami-core:ILU-1,4,32768,100,BI-V100,0,true,1,hami-core:"
    ledger = cluster(reg, {"ilu": ({"hami.io/node-BI-V100-register": register}, {})})
    raw = pod({"iluvatar.ai/BI-V100-vgpu": 1, "iluvatar.ai/BI-V100.vMem": 8, "iluvatar.ai/BI-V100.vCore": 50})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert annotations_for(reg, decision, raw) == {
        "hami.io/BI-V100-devices-to-allocate": "ILU-1,BI-V100,2048,50:;",
        "hami.io/BI-V100-devices-allocated": "ILU-1,BI-V100,2048,50:;",
    }
    only = pod({"iluvatar.ai/BI-V100-vgpu": 1}, annotations={"hami.io/use-BI-V100-uuid": "ILU-0"})
    assert decided(place(reg, ledger.snapshot(), only)).devices["BI-V100"][0][0].uuid == "ILU-0"
    assert reg["BI-V100"].selection_keys == ("hami.io/use-BI-V100-uuid", "hami.io/no-use-BI-V100-uuid")


# --------------------------------------------------------------------------------------- Ascend


def ascend_register(word: str, network_ids: list[int] | None, memory: int = 65536) -> str:
    entries = []
    for i in range(4):
        custom = f'"custominfo":{{"NetworkID":{network_ids[i]}}},' if network_ids else ""
        entries.append(
            f'{{"id":"{word}-{i}","index":{i},"count":4,"devmem":{memory},"devcore":20,"type":"{word}",'
            f'"health":true,{custom}"devicepairscore":{{}}}}'
        )
    return "[" + ",".join(entries) + "]"


def test_ascend_910_template_rounding_and_runtime_annotation(reg: VendorRegistry) -> None:
    key = "hami.io/node-register-Ascend910B3"
    ledger = cluster(reg, {"npu": ({key: ascend_register("Ascend910B3", [0, 0, 1, 1])}, {})})
    raw = pod({"huawei.com/Ascend910B3": 1, "huawei.com/Ascend910B3-memory": 10000})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert annotations_for(reg, decision, raw) == {
        "hami.io/Ascend910B3-devices-to-allocate": "Ascend910B3-3,Ascend910B3,16384,0:;",
        "hami.io/Ascend910B3-devices-allocated": "Ascend910B3-3,Ascend910B3,16384,0:;",
        "predicate-time": SECONDS,
        "huawei.com/Ascend910B3": '[{"UUID":"Ascend910B3-3","temp":"vir05_1c_16g"}]',
    }
    whole = pod({"huawei.com/Ascend910B3": 1, "huawei.com/Ascend910B3-memory": 65536})
    notes = annotations_for(reg, decided(place(reg, ledger.snapshot(), whole)), whole)
    assert notes["huawei.com/Ascend910B3"] == '[{"UUID":"Ascend910B3-3"}]'  # no template: temp omitted


def test_ascend_910_network_id_grouping_score_decides_the_node(reg: VendorRegistry) -> None:
    key = "hami.io/node-register-Ascend910B3"
    ledger = cluster(
        reg,
        {
            "a-split": ({key: ascend_register("Ascend910B3", [0, 1, 2, 3])}, {}),
            "b-grouped": ({key: ascend_register("Ascend910B3", [0, 0, 1, 1])}, {}),
            "c-none": ({key: ascend_register("Ascend910B3", None)}, {}),
        },
    )
    raw = pod({"huawei.com/Ascend910B3": 2, "huawei.com/Ascend910B3-memory": 65536})
    decision = decided(place(reg, ledger.snapshot(), raw))
    scores = {f.node: f.score for f in decision.fits}
    # Both picks (devices 3 and 2) share NetworkID 1 on b: 10 × 2/2; on a they differ: 10 × 1/2.
    assert scores == {"b-grouped": 10.0, "a-split": 5.0, "c-none": 0.0}
    assert decision.node == "b-grouped"


def test_ascend_310p_has_no_network_score_and_rounds_to_its_templates(reg: VendorRegistry) -> None:
    key = "hami.io/node-register-Ascend310P"
    ledger = cluster(reg, {"p": ({key: ascend_register("Ascend310P", [0, 0, 1, 1], memory=21527)}, {})})
    raw = pod({"huawei.com/Ascend310P": 1, "huawei.com/Ascend310P-memory": 3000})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert decision.score == 0.0 and not reg["Ascend310P"].scores_nodes
    assert (
        annotations_for(reg, decision, raw)["huawei.com/Ascend310P"]
        == '[{"UUID":"Ascend310P-3","temp":"vir01"}]'
    )
    assert decision.devices["Ascend310P"][0][0].usedmem == 3072


# --------------------------------------------------------------------------------------- Metax


def test_metax_gpu_capacity_topology_score_and_one_card_per_pod(reg: VendorRegistry) -> None:
    ledger = cluster(
        reg,
        {
            "low-loss": (
                {"metax-tech.com/gpu.topology.losses": '{"1":0,"2":30}'},
                {"metax-tech.com/gpu": "2"},
            ),
            "high-loss": ({"metax-tech.com/gpu.topology.losses": '{"1":100}'}, {"metax-tech.com/gpu": "2"}),
        },
    )
    raw = pod({"metax-tech.com/gpu": 1})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert {f.node: f.score for f in decision.fits} == {"low-loss": 2000.0, "high-loss": 1900.0}
    assert annotations_for(reg, decision, raw) == {
        "hami.io/metax-gpu-devices-to-allocate": "low-loss-metax-1,Metax-GPU,65536,100:;",
        "hami.io/metax-gpu-devices-allocated": "low-loss-metax-1,Metax-GPU,65536,100:;",
    }
    two = pod({"metax-tech.com/gpu": 1}, {"metax-tech.com/gpu": 1})
    failure = unschedulable(place(reg, ledger.snapshot(), two, ["low-loss"])).failures["low-loss"]
    assert failure.container == 1 and failure.vendor == "Metax-GPU"
    assert failure.detail == "1/2 CardTimeSlicingExhausted, 1/2 CardNotFoundCustomFilterRule"


def sgpu_register(*entries: tuple[str, int, int, str, bool]) -> str:
    return json.dumps(
        [
            {"uuid": u, "totalDevCount": 16, "totalCompute": 100, "totalVRam": 65536, "healthy": h,
             "qosPolicy": q, "linkZone": z}
            for u, z, _, q, h in entries
        ]
    )  # fmt: skip


def test_metax_sgpu_annotation_units_and_vendor_annotations(reg: VendorRegistry) -> None:
    register = sgpu_register(("MX-0", 1, 0, "", True), ("MX-1", 1, 0, "", True))
    ledger = cluster(reg, {"mx": ({"metax-tech.com/node-gpu-devices": register}, {})})
    raw = pod({"metax-tech.com/sgpu": 1, "metax-tech.com/vcore": 30, "metax-tech.com/vmemory": 4})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert annotations_for(reg, decision, raw) == {
        "hami.io/metax-sgpu-devices-to-allocate": "MX-1,Metax-SGPU,4096,30:;",
        "hami.io/metax-sgpu-devices-allocated": "MX-1,Metax-SGPU,4096,30:;",
        "metax-tech.com/gpu-devices-allocated": '[[{"uuid":"MX-1","compute":30,"vRam":4096}]]',
        "metax-tech.com/predicate-time": NANOS,
    }
    bytes_unit = pod({"metax-tech.com/sgpu": 1, "metax-tech.com/vmemory": "2Gi"})
    assert decided(place(reg, ledger.snapshot(), bytes_unit)).devices["Metax-SGPU"][0][0].usedmem == 2048


def test_metax_sgpu_reasons_qos_health_and_metalink_preference(reg: VendorRegistry) -> None:
    register = sgpu_register(
        ("MX-0", 1, 0, "", True), ("MX-1", 2, 0, "", True), ("MX-2", 1, 0, "", True), ("MX-3", 0, 0, "", True)
    )
    ledger = cluster(reg, {"mx": ({"metax-tech.com/node-gpu-devices": register}, {})})
    exclusive = pod({"metax-tech.com/sgpu": 2, "metax-tech.com/vcore": 100})
    picked = decided(place(reg, ledger.snapshot(), exclusive)).devices["Metax-SGPU"][0]
    assert [cd.uuid for cd in picked] == ["MX-2", "MX-0"]  # the only MetaLink zone holding two
    busy = sgpu_register(("MX-0", 0, 0, "fixed-share", True), ("MX-1", 0, 0, "", False))
    ledger = cluster(reg, {"mx": ({"metax-tech.com/node-gpu-devices": busy}, {})})
    ledger.assume("other", "mx", {"Metax-SGPU": ((_cd("MX-0", 1024, 10),),)})
    shared = pod(
        {"metax-tech.com/sgpu": 1, "metax-tech.com/vcore": 10},
        annotations={"metax-tech.com/sgpu-qos-policy": "best-effort"},
    )
    failure = unschedulable(place(reg, ledger.snapshot(), shared)).failures["mx"]
    assert failure.detail == "1/2 CardQosPolicyMismatch, 1/2 CardUnhealthy"


def _cd(uuid: str, mem: int, cores: int) -> object:
    from hami.core.model import ContainerDevice

    return ContainerDevice(uuid=uuid, type="Metax-SGPU", usedmem=mem, usedcores=cores)


# --------------------------------------------------------------------------------------- Mthreads


def test_mthreads_capacity_512mib_units_and_predicate_annotations(reg: VendorRegistry) -> None:
    capacity = {"mthreads.com/vgpu": "16", "mthreads.com/sgpu-core": "32", "mthreads.com/sgpu-memory": "192"}
    ledger = cluster(reg, {"mt": ({}, capacity)})
    assert [d.totalmem for d in ledger.snapshot().nodes["mt"].devices] == [49152, 49152]  # type: ignore[index]
    raw = pod({"mthreads.com/vgpu": 1, "mthreads.com/sgpu-memory": 8, "mthreads.com/sgpu-core": 4})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert annotations_for(reg, decision, raw) == {
        "hami.io/mthreads-vgpu-devices-allocated": "mt-mthreads-1,Mthreads,4096,4:;",
        "mthreads.com/gpu-index": "1",
        "mthreads.com/predicate-node": "mt",
        "mthreads.com/predicate-time": NANOS,
    }


# --------------------------------------------------------------------------------------- Enflame


def test_enflame_vgcu_percentage_and_assigned_annotations(reg: VendorRegistry) -> None:
    ledger = cluster(reg, {"gcu": ({}, {"enflame.com/gcu-count": "2", "enflame.com/shared-gcu": "8"})})
    raw = pod({"enflame.com/vgcu": 1, "enflame.com/vgcu-percentage": 25})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert annotations_for(reg, decision, raw) == {
        "hami.io/enflame-vgpu-devices-allocated": "gcu-enflame-1,Enflame,25,0:;",
        "enflame.com/gcu-assigned": "false",
        "enflame.com/gcu-assigned-time": NANOS,
        "enflame.com/gcu-assigned-id": "1",
    }


def test_enflame_gcu_whole_cards_are_exclusive(reg: VendorRegistry) -> None:
    ledger = cluster(reg, {"g": ({}, {"enflame.com/gcu": "2"})})
    raw = pod({"enflame.com/gcu": 1})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert annotations_for(reg, decision, raw) == {
        "hami.io/enflame-gcu-devices-to-allocate": "g-GCU-1,GCU,100,100:;",
        "hami.io/enflame-gcu-devices-allocated": "g-GCU-1,GCU,100,100:;",
    }
    ledger.assume("a", "g", decision.devices)
    ledger.assume("b", "g", decided(place(reg, ledger.snapshot(), raw)).devices)
    failure = unschedulable(place(reg, ledger.snapshot(), raw)).failures["g"]
    assert failure.detail == "2/2 ExclusiveDeviceAllocateConflict" and failure.vendor == "GCU"


# --------------------------------------------------------------------------------------- Kunlun


def test_kunlun_board_halves_and_device_index(reg: VendorRegistry) -> None:
    ledger = cluster(reg, {"k": ({}, {"kunlunxin.com/xpu": "8"})})
    devices = ledger.snapshot().nodes["k"].devices  # type: ignore[index]
    assert [d.numa for d in devices] == [0, 0, 0, 0, 1, 1, 1, 1]
    raw = pod({"kunlunxin.com/xpu": 2})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert annotations_for(reg, decision, raw) == {
        "hami.io/kunlun-allocated": "k-kunlun-0,kunlun,98304,100:k-kunlun-1,kunlun,98304,100:;",
        "BAIDU_COM_DEVICE_IDX": "0,1",
    }
    three = unschedulable(place(reg, ledger.snapshot(), pod({"kunlunxin.com/xpu": 3}))).failures["k"]
    assert three.detail == "1/1 NumaNotFit"


def test_kunlun_vxpu_register_memory_sizes(reg: VendorRegistry) -> None:
    register = (
        '[{"id":"XPU-0","count":4,"devmem":98304,"devcore":100,"type":"XPU","health":true,"devicepairscore":{}},'
        '{"id":"XPU-1","index":1,"count":4,"devmem":98304,"devcore":100,"type":"XPU","health":true,'
        '"devicepairscore":{}}]'
    )
    ledger = cluster(reg, {"x": ({"hami.io/node-register-xpu": register}, {})})
    raw = pod({"kunlunxin.com/vxpu": 1, "kunlunxin.com/vxpu-memory": 20000})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert annotations_for(reg, decision, raw) == {
        "hami.io/xpu-devices-to-allocate": "XPU-0,XPU,24576,25:;",
        "hami.io/xpu-devices-allocated": "XPU-0,XPU,24576,25:;",
    }
    ledger.assume("a", "x", decision.devices)
    # A 48 GiB vXPU cannot join XPU-0, which holds 24 GiB vXPUs: it goes to XPU-1.
    bigger = pod({"kunlunxin.com/vxpu": 1, "kunlunxin.com/vxpu-memory": 40000})
    assert decided(place(reg, ledger.snapshot(), bigger)).devices["XPU"][0][0].uuid == "XPU-1"


# --------------------------------------------------------------------------------------- AWS Neuron


def test_aws_neuron_cores_and_devices(reg: VendorRegistry) -> None:
    ledger = cluster(reg, {"trn": ({}, {"aws.amazon.com/neuron": "2", "aws.amazon.com/neuroncore": "4"})})
    core = pod({"aws.amazon.com/neuroncore": 1})
    decision = decided(place(reg, ledger.snapshot(), core))
    assert annotations_for(reg, decision, core) == {
        "hami.io/aws-neuron-devices-allocated": "trn-AWSNeuron-1,AWSNeuron,0,1:;",
        "AWS_NEURON_IDS": "2",
        "NEURON_RESOURCE_TYPE": "aws.amazon.com/neuroncore",
        "NEURON_ALLOC_TIME": NANOS,
        "NEURON_ALLOCATED": "false",
        "aws.amazon.com/predicate-node": "trn",
    }
    ledger.assume("a", "trn", decision.devices)
    second = decided(place(reg, ledger.snapshot(), core))
    assert second.devices["AWSNeuron"][0][0].uuid == "trn-AWSNeuron-0"  # spread: the idle device
    ledger.assume("b", "trn", second.devices)
    third = decided(place(reg, ledger.snapshot(), core)).devices["AWSNeuron"][0][0]
    assert (third.uuid, third.usedcores) == ("trn-AWSNeuron-1", 2)  # the next free core (bit 1)
    busy = unschedulable(place(reg, ledger.snapshot(), pod({"aws.amazon.com/neuron": 1}))).failures["trn"]
    assert busy.detail == "2/2 CardInsufficientCore"

    fresh = cluster(reg, {"trn": ({}, {"aws.amazon.com/neuron": "2", "aws.amazon.com/neuroncore": "4"})})
    device = pod({"aws.amazon.com/neuron": 1})
    notes = annotations_for(reg, decided(place(reg, fresh.snapshot(), device)), device)
    assert notes["hami.io/aws-neuron-devices-allocated"] == "trn-AWSNeuron-1,AWSNeuron,0,3:;"
    assert notes["AWS_NEURON_IDS"] == "1" and "NEURON_RESOURCE_TYPE" not in notes
    # Two devices need a power-of-two run on a non-Inferentia node: HAMi's "1/1 NumaNotFit".
    pair = unschedulable(place(reg, fresh.snapshot(), pod({"aws.amazon.com/neuron": 2}))).failures["trn"]
    assert pair.detail == "1/1 NumaNotFit"


def test_aws_neuron_inferentia_ring_from_the_instance_type_label(reg: VendorRegistry) -> None:
    neuron = reg["AWSNeuron"]
    capacity = {"aws.amazon.com/neuron": "4", "aws.amazon.com/neuroncore": "8"}
    devices = neuron.node_devices(
        {}, capacity, node="inf", labels={"node.kubernetes.io/instance-type": "inf2.24xlarge"}
    )
    from hami.core.ledger import Ledger

    ledger = Ledger()
    ledger.set_node_devices("inf", devices)
    decision = decided(place(reg, ledger.snapshot(), pod({"aws.amazon.com/neuron": 3})))
    assert [cd.idx for cd in decision.devices["AWSNeuron"][0]] == [0, 1, 2]


# --------------------------------------------------------------------------------------- AMD


def test_amd_whole_cards(reg: VendorRegistry) -> None:
    ledger = cluster(reg, {"mi": ({}, {"amd.com/gpu": "2"})})
    raw = pod({"amd.com/gpu": 2})
    decision = decided(place(reg, ledger.snapshot(), raw))
    assert annotations_for(reg, decision, raw) == {
        "hami.io/amd-devices-allocated": "mi-AMDGPU-1,AMDGPU,192000,0:mi-AMDGPU-0,AMDGPU,192000,0:;"
    }
    ledger.assume("a", "mi", decision.devices)
    failure = unschedulable(place(reg, ledger.snapshot(), pod({"amd.com/gpu": 1}))).failures["mi"]
    assert failure.detail == "2/2 CardTimeSlicingExhausted"


def test_allocations_decode_back_for_usage_accounting(reg: VendorRegistry) -> None:
    ledger = cluster(reg, {"mt": ({}, {"mthreads.com/sgpu-core": "16", "mthreads.com/sgpu-memory": "96"})})
    raw = pod({"mthreads.com/vgpu": 1, "mthreads.com/sgpu-memory": 8})
    decision = decided(place(reg, ledger.snapshot(), raw))
    notes = annotations_for(reg, decision, raw)
    assert reg.decode_allocations(notes) == {"Mthreads": decision.devices["Mthreads"]}
    assert NOW.year == 2026
