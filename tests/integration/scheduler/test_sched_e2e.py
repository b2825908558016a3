"""hami scheduler in the embedded cluster: 3 nodes × 4 mock GPUs, kube-scheduler's extender protocol,
real device-plugin agents and kubelet admission (hami-scheduler-spec.md §2, §5, §6)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import aiohttp
import pytest
from sched_cluster import hami_cluster

from hami.cli import main as hami_main
from hami.core import keys
from hami.simulator.faults import FaultRule
from hami.simulator.scenario import gpu_pod

pytestmark = pytest.mark.slow


def running(pod):
    return pod["status"].get("phase") == "Running"


def uuids(h, node):
    info = h.role.state.node_info(node)
    return {d.index: d.id for d in info.devices(datetime.now(UTC))}


async def placed(h, name, manifest):
    await h.create(manifest)
    pod = await h.wait(name, running)
    return pod["spec"]["nodeName"], pod["metadata"]["annotations"]


async def test_spec_5_7_policies_pinning_and_annotations_land_where_the_formulas_say():
    async with hami_cluster(gpu_memory=24000) as h:
        gpus = {n: uuids(h, n) for n in ("node-1", "node-2", "node-3")}
        # §5.7: binpack node ties go to the smallest name; spread GPU ties to the last registered GPU
        node, ann = await placed(h, "p1", gpu_pod("p1", gpumem=3000, gpucores=30))
        assert (
            node == "node-1" and ann[keys.VGPU_DEVICES_ALLOCATED] == f"{gpus['node-1'][3]},NVIDIA,3000,30:;"
        )
        assert ann[keys.VGPU_NODE] == "node-1" and ann[keys.BIND_PHASE] == "success"
        assert ann[keys.VGPU_DEVICES_TO_ALLOCATE] == ";"  # consumed by the device plugin (node spec §4.3)
        assert ann[keys.VGPU_TIME].isdigit() and ann[keys.BIND_TIME].isdigit()
        # binpack node: the used node again; spread GPU: the least loaded card
        node, ann = await placed(h, "p2", gpu_pod("p2", gpumem=2000))
        assert node == "node-1" and ann[keys.VGPU_DEVICES_ALLOCATED] == f"{gpus['node-1'][2]},NVIDIA,2000,0:;"
        # pod annotation node policy spread: the least used node
        spread = gpu_pod("p3", gpumem=1000, annotations={keys.NODE_SCHEDULER_POLICY: "spread"})
        node, ann = await placed(h, "p3", spread)
        assert node == "node-2" and ann[keys.VGPU_DEVICES_ALLOCATED] == f"{gpus['node-2'][3]},NVIDIA,1000,0:;"
        # GPU binpack: the most loaded card of node-1 (GPU 3: score 6.67 > GPU 2: 3.25)
        binpack = gpu_pod("p4", gpumem=1000, annotations={keys.GPU_SCHEDULER_POLICY: "binpack"})
        node, ann = await placed(h, "p4", binpack)
        assert node == "node-1" and ann[keys.VGPU_DEVICES_ALLOCATED] == f"{gpus['node-1'][3]},NVIDIA,1000,0:;"
        # UUID pinning (§4.3 nvidia.com/use-gpuuuid)
        pinned = gpu_pod("p5", gpumem=500, annotations={keys.USE_GPUUUID: gpus["node-3"][1]})
        node, ann = await placed(h, "p5", pinned)
        assert node == "node-3" and ann[keys.VGPU_DEVICES_ALLOCATED] == f"{gpus['node-3'][1]},NVIDIA,500,0:;"
        # exclusive card: 100 cores and (default) 100 % memory on an idle GPU of node-1
        node, ann = await placed(h, "p6", gpu_pod("p6", gpucores=100))
        assert (
            node == "node-1" and ann[keys.VGPU_DEVICES_ALLOCATED] == f"{gpus['node-1'][1]},NVIDIA,24000,100:;"
        )
        # percentage: 50 % of a 24000 MiB card on the last idle GPU of node-1
        node, ann = await placed(h, "p7", gpu_pod("p7", gpumem_percentage=50))
        assert (
            node == "node-1" and ann[keys.VGPU_DEVICES_ALLOCATED] == f"{gpus['node-1'][0]},NVIDIA,12000,0:;"
        )
        # the kubelet handed each pod its own devices (device plugin Allocate)
        for name in ("p1", "p4", "p6", "p7"):
            pod = await h.cluster.get_pod("default", name)
            [entry] = pod["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED].rstrip(":;").split(":")
            uuid, _, mem, _ = entry.split(",")
            envs = h.cluster.kubelet(pod["spec"]["nodeName"]).record("default", name).envs("main")
            assert envs["NVIDIA_VISIBLE_DEVICES"] == uuid and envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == f"{mem}m"
        assert h.role.state.ledger.check_invariants() == []


async def test_hami_why_explains_a_pod_that_fits_nowhere(capsys):
    async with hami_cluster(gpu_memory=24000, plugins=True) as h:
        await h.create(gpu_pod("huge", gpumem=30000))
        await h.until(lambda: h.role.why.get("default", "huge") is not None)
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, hami_main, ["why", "default/huge", "--scheduler-url", h.url])
        out = capsys.readouterr().out
        assert code == 0
        assert "Outcome: unschedulable - 0/3 nodes fit" in out
        assert "container 0 (main): 1 x NVIDIA, 30000 MiB, 0 cores" in out
        assert "node-1: NodeUnfitPod (container 0, NVIDIA): 4/4 CardInsufficientMemory" in out
        assert "free 24000 MiB < 30000 MiB" in out
        code = await loop.run_in_executor(
            None, hami_main, ["why", "default/nobody", "--scheduler-url", h.url]
        )
        assert code == 1 and "no decision recorded for pod default/nobody" in capsys.readouterr().err
        # kube-scheduler's event stays short: HAMi's reason counts
        pod = await h.cluster.get_pod("default", "huge")
        assert pod["spec"].get("nodeName") is None


async def test_http_surface():
    async with hami_cluster(plugins=False) as h, aiohttp.ClientSession() as s:
        async with s.get(f"{h.url}/healthz") as r:
            assert r.status == 200 and await r.text() == ""
        async with s.get(f"{h.url}/readyz") as r:
            assert r.status == 200
        async with s.post(f"{h.url}/filter", data=b"{oops") as r:
            body = await r.json()
            assert r.status == 200 and set(body) == {
                "Nodes",
                "NodeNames",
                "FailedNodes",
                "FailedAndUnresolvableNodes",
                "Error",
            }
            assert body["Error"].startswith("invalid JSON")
        async with s.post(f"{h.url}/bind", data=b"[]") as r:
            assert r.status == 200 and "ExtenderBindingArgs" in (await r.json())["Error"]
        async with s.post(
            f"{h.url}/prioritize", json={"Pod": {"metadata": {"name": "x"}}, "NodeNames": ["a"]}
        ) as r:
            assert await r.json() == [{"Host": "a", "Score": 0}]
        async with s.get(f"{h.url}/why/default/none") as r:
            assert r.status == 404
        async with s.get(f"{h.url}/filter") as r:
            assert r.status == 405
        metrics_port = h.role.metrics.port
        async with s.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            text = await r.text()
            assert "hami_filter_duration_seconds" in text


async def test_bind_failure_releases_the_reservation_and_the_pod_retries():
    async with hami_cluster() as h:
        rule = h.cluster.api.faults.add(
            FaultRule(path_prefix="/api/v1/namespaces/default/pods/retry/binding", status=403, times=1)
        )
        await h.create(gpu_pod("retry", gpumem=20000))
        pod = await h.wait("retry", running)
        assert rule.hits == 1
        uid = pod["metadata"]["uid"]
        usage = h.role.state.ledger.pod(uid)
        assert usage is not None and usage.node == pod["spec"]["nodeName"]
        assert h.role.state.ledger.namespace_usage("default", "NVIDIA") == (20000, 0)
        events = await h.cluster.client.get(
            "/api/v1/namespaces/default/events", {"fieldSelector": "involvedObject.name=retry"}
        )
        reasons = [e["reason"] for e in events["items"]]
        assert "BindingFailed" in reasons and "BindingSucceed" in reasons


async def test_spec_8_quota_without_leaks_on_delete():
    async with hami_cluster(gpu_memory=24000) as h:
        await h.cluster.client.create(
            "/api/v1/namespaces/default/resourcequotas",
            {
                "metadata": {"name": "gpu", "namespace": "default"},
                "spec": {"hard": {"limits.nvidia.com/gpumem": "10000"}},
            },
        )
        await h.until(lambda: h.role.state.quotas.limit("default", "nvidia.com/gpumem") == 10000)
        await h.create(gpu_pod("q1", gpumem=4000))
        await h.create(gpu_pod("q2", gpumem=4000))
        await h.wait("q1", running)
        await h.wait("q2", running)
        await h.create(gpu_pod("q3", gpumem=4000))
        await h.until(lambda: h.role.why.get("default", "q3") is not None)
        record = h.role.why.get("default", "q3")
        assert record.outcome == "unschedulable" and "ResourceQuotaNotFit" in record.nodes[0].detail
        await h.cluster.client.delete("/api/v1/namespaces/default/pods/q1")
        await h.wait("q3", running, within=20)
        assert h.role.state.ledger.namespace_usage("default", "NVIDIA") == (8000, 0)


async def test_many_pods_per_node_in_handoff_zero_wrong_devices_and_restart_rebuilds_the_ledger():
    async with hami_cluster(gpu_memory=24000) as h:
        # slow every Allocate (the plugin's node read) so bound pods pile up before kubelet serves them
        h.cluster.api.faults.add(
            FaultRule(path_prefix="/api/v1/nodes/node-", methods=frozenset({"GET"}), delay_s=0.1, times=-1)
        )
        peak = {"value": 0}

        async def sample() -> None:
            while True:
                counts = h.role.state.tracker.counts()
                peak["value"] = max([peak["value"], *counts.values()])
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        names = [f"w{i:02d}" for i in range(30)]
        for i, name in enumerate(names):
            await h.create(gpu_pod(name, gpumem=500 + 10 * i, gpucores=i % 4))
        pods = [await h.wait(name, running, within=40) for name in names]
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        assert peak["value"] >= 8
        for pod in pods:
            name = pod["metadata"]["name"]
            [entry] = pod["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED].rstrip(":;").split(":")
            uuid, _, mem, cores = entry.split(",")
            envs = h.cluster.kubelet(pod["spec"]["nodeName"]).record("default", name).envs("main")
            assert envs["NVIDIA_VISIBLE_DEVICES"] == uuid, name
            assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == f"{mem}m", name
            assert envs["CUDA_DEVICE_SM_LIMIT"] == cores, name
        h.cluster.api.faults.clear()

        def usage(role):
            snap = role.state.ledger.snapshot()
            return {
                name: [(d.id, d.used, d.usedmem, d.usedcores) for d in node.devices]
                for name, node in snap.nodes.items()
            }

        before = usage(h.role)
        await h.stop_scheduler(kill=True)  # no clean shutdown
        role = await h.start_scheduler()
        await h.until(lambda: usage(role) == before)
        assert role.state.ledger.assumed() == ()
        await h.create(gpu_pod("after", gpumem=100))
        await h.wait("after", running)
