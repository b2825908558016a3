"""plan_claim: an allocated claim becomes CDI devices with HAMi-core's edits (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hami.core.dra_translate import DRIVER_NAME
from hami.core.hamicore_env import HamiCoreOptions, HostFacts
from hami.deviceplugin.cdi import validate_spec
from hami.dra.claims import ClaimRef, PreparedClaim, PrepareError, cdi_spec_file_name, plan_claim
from hami.dra.devices import mock_gpus

GPUS = mock_gpus("node-a", 4)
BY_NAME = {g.device_name: g for g in GPUS}
UID = "3b1e0c4a-7d1f-4b0e-a1c2-9f8e7d6c5b4a"
REF = ClaimRef(namespace="demo", name="web-abc-hami-gpu-app-x7k2p", uid=UID)


def claim(results: list[dict[str, Any]], uid: str = UID) -> dict[str, Any]:
    return {
        "metadata": {"name": REF.name, "namespace": "demo", "uid": uid},
        "status": {"allocation": {"devices": {"results": results}}},
    }


def result(
    device: str, *, memory: str | None = "4000Mi", cores: str | None = "30", share: str = "s-1"
) -> dict:
    out: dict[str, Any] = {"request": "gpu", "driver": DRIVER_NAME, "pool": "node-a", "device": device}
    consumed = {k: v for k, v in (("memory", memory), ("cores", cores)) if v is not None}
    if consumed:
        out["shareID"] = share
        out["consumedCapacity"] = consumed
    return out


def plan(obj: dict[str, Any], **kw: Any) -> PreparedClaim:
    return plan_claim(
        obj, REF, driver=DRIVER_NAME, pool="node-a", gpus=BY_NAME, options=HamiCoreOptions(), **kw
    )


def test_golden_cdi_spec_for_one_shared_gpu() -> None:
    prepared = plan(claim([result("hami-gpu-1")]))
    kind = "k8s.hami-core-gpu.project-hami.io/claim"
    assert prepared.cdi_spec == {
        "cdiVersion": "0.6.0",
        "kind": kind,
        "devices": [
            {
                "name": f"{UID}-hami-gpu-1",
                "containerEdits": {
                    "env": ["CUDA_DEVICE_MEMORY_LIMIT_0=4000m"],
                    "deviceNodes": [{"path": "/dev/nvidia1"}],
                },
            }
        ],
        "containerEdits": {
            "env": [
                f"NVIDIA_VISIBLE_DEVICES={GPUS[1].uuid}",
                "CUDA_DEVICE_SM_LIMIT=30",
                f"CUDA_DEVICE_MEMORY_SHARED_CACHE=/usr/local/vgpu/{UID}.cache",
                "LIBCUDA_LOG_LEVEL=1",
            ],
            "deviceNodes": [
                {"path": "/dev/nvidiactl"},
                {"path": "/dev/nvidia-uvm"},
                {"path": "/dev/nvidia-uvm-tools"},
            ],
            "mounts": [
                {
                    "hostPath": "/usr/local/vgpu/libvgpu.so.v2.8.0",
                    "containerPath": "/usr/local/vgpu/libvgpu.so",
                    "options": ["ro", "nosuid", "nodev", "bind"],
                },
                {
                    "hostPath": f"/usr/local/vgpu/claims/{UID}",
                    "containerPath": "/usr/local/vgpu",
                    "options": ["rw", "nosuid", "nodev", "bind"],
                },
                {
                    "hostPath": "/tmp/vgpulock",
                    "containerPath": "/tmp/vgpulock",
                    "options": ["rw", "nosuid", "nodev", "bind"],
                },
                {
                    "hostPath": "/usr/local/vgpu/ld.so.preload",
                    "containerPath": "/etc/ld.so.preload",
                    "options": ["ro", "nosuid", "nodev", "bind"],
                },
            ],
        },
    }
    assert validate_spec(prepared.cdi_spec) == []
    (device,) = prepared.devices
    assert device.cdi_ids == (f"{kind}={UID}-hami-gpu-1",)
    assert (device.pool, device.device, device.share_id, device.request_names) == (
        "node-a",
        "hami-gpu-1",
        "s-1",
        ("gpu",),
    )
    assert prepared.spec_file_name == f"k8s.hami-core-gpu.project-hami.io-claim_{UID}.json"
    assert cdi_spec_file_name("a/b") == "k8s.hami-core-gpu.project-hami.io-claim_a_b.json"


def test_several_gpus_are_numbered_in_index_order_and_round_trip() -> None:
    prepared = plan(
        claim([result("hami-gpu-3", memory="1Gi"), result("hami-gpu-0", memory="2Gi", share="s-2")])
    )
    env = dict(e.split("=", 1) for d in prepared.cdi_spec["devices"] for e in d["containerEdits"]["env"])
    assert env == {"CUDA_DEVICE_MEMORY_LIMIT_0": "2048m", "CUDA_DEVICE_MEMORY_LIMIT_1": "1024m"}
    assert (
        prepared.cdi_spec["containerEdits"]["env"][0]
        == f"NVIDIA_VISIBLE_DEVICES={GPUS[0].uuid},{GPUS[3].uuid}"
    )
    assert [d.device for d in prepared.devices] == ["hami-gpu-0", "hami-gpu-3"]
    again = PreparedClaim.from_json(json.loads(json.dumps(prepared.to_json())))
    assert again == PreparedClaim(
        ref=prepared.ref, devices=prepared.devices, cdi_spec=again.cdi_spec, cache_dir=prepared.cache_dir
    )
    assert again.cdi_spec == prepared.cdi_spec
    assert (
        plan(claim([result("hami-gpu-3", memory="1Gi"), result("hami-gpu-0", memory="2Gi", share="s-2")]))
        == prepared
    )


def test_exclusive_allocation_gets_the_whole_gpu_and_options_apply() -> None:
    prepared = plan(
        claim([result("hami-gpu-2", memory=None, cores=None)]),
        host=HostFacts(versioned_library=False, license=True),
    )
    assert prepared.cdi_spec["devices"][0]["containerEdits"]["env"] == ["CUDA_DEVICE_MEMORY_LIMIT_0=40960m"]
    assert "CUDA_DEVICE_SM_LIMIT=100" in prepared.cdi_spec["containerEdits"]["env"]
    assert prepared.devices[0].share_id is None
    mounts = {m["containerPath"]: m["hostPath"] for m in prepared.cdi_spec["containerEdits"]["mounts"]}
    assert mounts["/usr/local/vgpu/libvgpu.so"] == "/usr/local/vgpu/libvgpu.so"
    assert mounts["/tmp/license"] == "/usr/local/vgpu/license"
    options = HamiCoreOptions(hook_path="/opt/hami", memory_scaling=2.0, lib_cuda_log_level="")
    scaled = plan_claim(
        claim([result("hami-gpu-0")]), REF, driver=DRIVER_NAME, pool="node-a", gpus=BY_NAME, options=options
    )
    env = scaled.cdi_spec["containerEdits"]["env"]
    assert "CUDA_OVERSUBSCRIBE=true" in env and not any(e.startswith("LIBCUDA_LOG_LEVEL") for e in env)
    assert scaled.cache_dir == f"/opt/hami/vgpu/claims/{UID}"


def test_results_of_other_drivers_are_ignored() -> None:
    other = {"request": "nic", "driver": "net.example.com", "pool": "x", "device": "eth0"}
    assert [d.device for d in plan(claim([other, result("hami-gpu-0")])).devices] == ["hami-gpu-0"]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"metadata": {"uid": UID}, "status": {}}, "is not allocated"),
        (claim([result("hami-gpu-0")], uid="other"), "re-created"),
        (claim([{**result("hami-gpu-0"), "pool": "node-b"}]), "not this node's pool"),
        (claim([result("hami-gpu-9")]), "does not exist on node node-a"),
        (claim([result("hami-gpu-0"), result("hami-gpu-0", share="s-2")]), "allocated twice"),
        (
            claim([{"request": "nic", "driver": "net.example.com", "pool": "x", "device": "eth0"}]),
            "names no device",
        ),
        (claim([result("hami-gpu-0", memory="lots")]), "consumedCapacity"),
        (claim([result("hami-gpu-0", cores="150")]), "out of range"),
    ],
)
def test_unpreparable_claims_say_why(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(PrepareError, match=message):
        plan(obj)
