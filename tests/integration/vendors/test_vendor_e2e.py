"""Issue 12 end to end: one ``hami scheduler`` places a mixed workload on a mixed cluster (NVIDIA,
Cambricon, Hygon, Ascend 910, Moore Threads) in the embedded cluster, writing HAMi 2.8's per-vendor
annotations, and ``hami why`` names the vendor predicate that failed for a pod that fits nowhere
(hami-scheduler-spec.md §4.1, §6.1, §7.4, §10, §11)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from vendor_cluster import VendorHarness, vendor_cluster

from hami.cli import main as hami_main
from hami.core import keys
from hami.simulator.scenario import container, pod_manifest

pytestmark = pytest.mark.slow

DCU_HANDSHAKE = "hami.io/node-handshake-dcu"
MLU_LOCK = "cambricon.com/dsmlu.lock"


def vendor_pod(name: str, limits: dict[str, int], **kw: Any) -> dict[str, Any]:
    return pod_manifest(
        name, containers=[container("main", limits=limits)], scheduler_name="hami-scheduler", **kw
    )


def running(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running"


def annotations(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("annotations") or {})


def node_annotations(node: dict[str, Any]) -> dict[str, str]:
    return dict(node["metadata"].get("annotations") or {})


WORKLOAD = {
    "nv": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 3000},
    "mlu": {"cambricon.com/vmlu": 1, "cambricon.com/mlu.smlu.vmemory": 4, "cambricon.com/mlu.smlu.vcore": 10},
    "dcu": {"hygon.com/dcunum": 1, "hygon.com/dcumem": 2000, "hygon.com/dcucores": 30},
    "npu": {"huawei.com/Ascend910A": 1, "huawei.com/Ascend910A-memory": 2000},
    "mt": {"mthreads.com/vgpu": 1, "mthreads.com/sgpu-memory": 4, "mthreads.com/sgpu-core": 4},
}


async def admit(h: VendorHarness, limits: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST /webhook with a CREATE review of a one-container pod asking for ``limits``."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "4f0e6c1a-0000-4000-8000-000000000012",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "hooked", "namespace": "default"},
                "spec": {
                    "schedulerName": "default-scheduler",
                    "containers": [{"name": "c0", "image": "x", "resources": {"limits": limits}}],
                },
            },
        },
    }
    async with aiohttp.ClientSession() as s, s.post(f"{h.url}/webhook", json=review) as r:
        return r.status, (await r.json())["response"]


async def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


async def test_mixed_cluster_places_each_vendor_with_hami_28_annotations(capsys: pytest.CaptureFixture[str]):
    async with vendor_cluster() as h:
        nvidia_uuids = {d.index: d.id for d in h.role.state.node_info("node-1").devices(datetime.now(UTC))}
        for name, limits in WORKLOAD.items():
            await h.create(vendor_pod(name, limits))
        pods = {name: await h.wait(name, running) for name in WORKLOAD}
        where = {name: pod["spec"]["nodeName"] for name, pod in pods.items()}
        assert where == {
            "nv": "node-1",
            "mlu": "cambricon-1",
            "dcu": "hygon-1",
            "npu": "ascend-1",
            "mt": "mthreads-1",
        }
        notes = {name: annotations(pod) for name, pod in pods.items()}
        for name, node in where.items():
            assert notes[name][keys.VGPU_NODE] == node and notes[name][keys.VGPU_TIME].isdigit()
            assert notes[name][keys.BIND_TIME].isdigit()

        # NVIDIA: the device plugin consumed its entry (spread: the last GPU of the node)
        assert notes["nv"][keys.VGPU_DEVICES_ALLOCATED] == f"{nvidia_uuids[1]},NVIDIA,3000,0:;"
        assert notes["nv"][keys.VGPU_DEVICES_TO_ALLOCATE] == ";" and notes["nv"][keys.BIND_PHASE] == "success"
        # Cambricon: 4 x 256 MiB, 10 cores, and the dsmlu profile <nums>_<cores>_<memory units>
        mlu = "cambricon-1-cambricon-mlu-1,MLU,1024,10:;"
        assert {k: v for k, v in notes["mlu"].items() if "cambricon" in k.lower()} == {
            "hami.io/cambricon-mlu-devices-to-allocate": mlu,
            "hami.io/cambricon-mlu-devices-allocated": mlu,
            "CAMBRICON_DSMLU_ASSIGNED": "false",
            "CAMBRICON_DSMLU_PROFILE": "1_10_4",
        }
        # Hygon: registration-annotation devices, handshake vendor
        dcu = "DCU-hygon-1-1,DCU,2000,30:;"
        assert notes["dcu"]["hami.io/dcu-devices-to-allocate"] == dcu
        assert notes["dcu"]["hami.io/dcu-devices-allocated"] == dcu
        # Ascend 910A: memory rounded up to the vir02 template, the template chosen per device
        npu = "Ascend910A-ascend-1-1,Ascend910A,2184,0:;"
        assert notes["npu"]["hami.io/Ascend910A-devices-to-allocate"] == npu
        assert notes["npu"]["hami.io/Ascend910A-devices-allocated"] == npu
        assert notes["npu"]["huawei.com/Ascend910A"] == '[{"UUID":"Ascend910A-ascend-1-1","temp":"vir02"}]'
        assert notes["npu"]["predicate-time"].isdigit()
        # Moore Threads: 512 MiB units, the GPU index and the predicate node for its plugin
        mt = "mthreads-1-mthreads-1,Mthreads,2048,4:;"
        assert notes["mt"]["hami.io/mthreads-vgpu-devices-allocated"] == mt
        assert notes["mt"]["mthreads.com/gpu-index"] == "1"
        assert notes["mt"]["mthreads.com/predicate-node"] == "mthreads-1"
        assert notes["mt"]["mthreads.com/predicate-time"].isdigit()
        # No vendor writes another vendor's keys.
        assert not any("mthreads" in k or "cambricon" in k.lower() for k in notes["dcu"])
        assert h.role.state.ledger.check_invariants() == []

        # The leader answered the handshake vendors' registration with Requesting_<time>; their
        # plugins answer Reported (the mock agent), so the nodes stay registered.
        node = node_annotations(await h.node("hygon-1"))
        assert node[DCU_HANDSHAKE].startswith(("Requesting_", "Reported "))

        # A pod that fits nowhere: 200 x 256 MiB = 51200 MiB > any MLU's 24576 MiB.
        await h.create(vendor_pod("big", {"cambricon.com/vmlu": 1, "cambricon.com/mlu.smlu.vmemory": 200}))
        await h.until(lambda: h.role.why.get("default", "big") is not None)
        async with aiohttp.ClientSession() as s, s.get(f"{h.url}/why/default/big") as r:
            record = await r.json()
        assert record["outcome"] == "unschedulable" and record["message"] == "0/5 nodes fit"
        assert record["request"] == ["container 0 (main): 1 x MLU, 51200 MiB, 100 cores"]
        lines = {n["node"]: n for n in record["nodes"]}
        assert lines["cambricon-1"]["vendor"] == "MLU"
        assert lines["cambricon-1"]["predicates"] == ["CardInsufficientMemory"]
        assert lines["cambricon-1"]["detail"] == "2/2 CardInsufficientMemory"
        for other in ("node-1", "hygon-1", "ascend-1", "mthreads-1"):
            assert lines[other]["vendor"] == "MLU"
            assert lines[other]["predicates"] == ["NodeInsufficientDevice"]
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, hami_main, ["why", "default/big", "--scheduler-url", h.url])
        out = capsys.readouterr().out
        assert code == 0
        assert "cambricon-1: NodeUnfitPod (container 0, MLU): 2/2 CardInsufficientMemory" in out
        assert "free 24576 MiB < 51200 MiB" in out
        assert "node-1: NodeUnfitPod (container 0, MLU): NodeInsufficientDevice" in out
        assert (await h.cluster.get_pod("default", "big"))["spec"].get("nodeName") is None

        # The webhook knows every vendor: a Cambricon-only pod is handed to hami-scheduler.
        for limits, mutated in (({"cambricon.com/vmlu": "1"}, True), ({"cpu": "1"}, False)):
            status, response = await admit(h, limits)
            assert status == 200 and response["allowed"] is True
            patch = json.loads(base64.b64decode(response["patch"])) if "patch" in response else []
            scheduler = {"op": "replace", "path": "/spec/schedulerName", "value": "hami-scheduler"}
            assert (scheduler in patch) is mutated

        # Metrics: HAMi 2.8's device metrics cover every vendor's devices, and hami_device_info
        # names each device's vendor (joinable on nodeid/deviceuuid).
        assert h.role.metrics is not None
        metrics = await scrape(h.role.metrics.port)
        info = {(labels["nodeid"], labels["deviceuuid"]): labels for labels, _ in metrics["hami_device_info"]}
        vendors = {node: {lab["vendor"] for (n, _), lab in info.items() if n == node} for node, _ in info}
        assert vendors == {
            "node-1": {"NVIDIA"},
            "cambricon-1": {"MLU"},
            "hygon-1": {"DCU"},
            "ascend-1": {"Ascend910A"},
            "mthreads-1": {"Mthreads"},
        }
        allocated = {(lab["nodeid"], lab["deviceuuid"]): v for lab, v in metrics["GPUDeviceMemoryAllocated"]}
        assert allocated[("cambricon-1", "cambricon-1-cambricon-mlu-1")] == 1024 * 1048576
        assert allocated[("hygon-1", "DCU-hygon-1-1")] == 2000 * 1048576
        assert set(allocated) == set(info)


async def test_handshake_vendor_is_dropped_when_its_plugin_goes_silent_and_back_when_it_reports():
    """Spec §7.4 without plugin agents: the leader stamps Requesting_<t>; an expired stamp drops
    the node's DCUs and is marked Deleted_<t>, which keeps them out until the plugin reports."""
    mix = (("nvidia", 1), ("hygon", 1))
    async with vendor_cluster(mix, vendor_agents=False) as h:
        await h.until_node("hygon-1", lambda a: a.get(DCU_HANDSHAKE, "").startswith("Requesting_"))
        stale = (datetime.now(UTC) - timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M:%S")
        await h.patch_node_annotations("hygon-1", {DCU_HANDSHAKE: f"Requesting_{stale}"})
        await h.until_node("hygon-1", lambda a: a.get(DCU_HANDSHAKE, "").startswith("Deleted_"))
        await h.until(lambda: "hygon-1" not in h.role.state.registrar.registered)
        await h.create(vendor_pod("late", WORKLOAD["dcu"]))
        await h.until(lambda: h.role.why.get("default", "late") is not None)
        record = h.role.why.get("default", "late")
        assert record is not None and record.outcome == "unschedulable"
        assert {n.node: n.reason for n in record.nodes}["hygon-1"] == "node unregistered"
        # The plugin reports again: the leader requests, the DCUs return, the pod is placed.
        await h.patch_node_annotations("hygon-1", {DCU_HANDSHAKE: "Reported 2026-11-26 10:00:00 +0000 UTC"})
        pod = await h.wait("late", running)
        assert pod["spec"]["nodeName"] == "hygon-1"
        assert annotations(pod)["hami.io/dcu-devices-allocated"] == "DCU-hygon-1-1,DCU,2000,30:;"
        await h.until_node("hygon-1", lambda a: a.get(DCU_HANDSHAKE, "").startswith("Requesting_"))


async def events_of(h: VendorHarness, pod: str) -> list[str]:
    found = await h.cluster.client.get("/api/v1/namespaces/default/events")
    return [
        f"{e.get('reason')}: {e.get('message')}"
        for e in found.get("items", [])
        if (e.get("involvedObject") or {}).get("name") == pod
    ]


async def test_compat_node_lock_takes_each_vendors_lock():
    """Spec §6.1 step 3 with --compat-node-lock: Cambricon's own time-only lock (2-minute
    expiry), hami.io/mutex.lock for Hygon, each released or taken over when its pod is done."""
    mix = (("nvidia", 1), ("cambricon", 1), ("hygon", 1))
    async with vendor_cluster(mix, compat_node_lock=True) as h:
        await h.create(vendor_pod("mlu-1", WORKLOAD["mlu"]))
        await h.create(vendor_pod("dcu-1", WORKLOAD["dcu"]))
        await h.wait("mlu-1", running)
        await h.wait("dcu-1", running)
        lock = node_annotations(await h.node("cambricon-1"))[MLU_LOCK]
        taken = datetime.strptime(lock, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - taken).total_seconds()) < 30
        # hami.io/mutex.lock names its pod; the reconciler frees it once the pod is past Allocate
        await h.until_node("hygon-1", lambda a: keys.NODE_LOCK not in a)
        assert keys.NODE_LOCK not in node_annotations(await h.node("cambricon-1"))
        # The next MLU pod takes over the lock of a pod that is past Allocate.
        await h.create(vendor_pod("mlu-2", WORKLOAD["mlu"]))
        await h.wait("mlu-2", running)
        # A fresh lock this scheduler did not write (the vendor's plugin, another replica) holds.
        # (10 s old: not the second this scheduler wrote, whose value would read as its own)
        fresh = (datetime.now(UTC) - timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await h.patch_node_annotations("cambricon-1", {MLU_LOCK: fresh})
        await h.until(lambda: h.role.state.node_info("cambricon-1").vendor_locks.get(MLU_LOCK) == fresh)
        await h.create(vendor_pod("mlu-3", WORKLOAD["mlu"]))
        deadline = asyncio.get_running_loop().time() + 10
        while not any("has been locked within 2m0s" in e for e in await events_of(h, "mlu-3")):
            assert asyncio.get_running_loop().time() < deadline, await events_of(h, "mlu-3")
            await asyncio.sleep(0.1)
        assert (await h.cluster.get_pod("default", "mlu-3"))["spec"].get("nodeName") is None
        # ... until it is older than Cambricon's 2 minutes.
        old = (datetime.now(UTC) - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await h.patch_node_annotations("cambricon-1", {MLU_LOCK: old})
        pod = await h.wait("mlu-3", running)
        assert pod["spec"]["nodeName"] == "cambricon-1"
        assert node_annotations(await h.node("cambricon-1"))[MLU_LOCK] != old
        assert h.role.state.ledger.check_invariants() == []
