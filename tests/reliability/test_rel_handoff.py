"""The bind → Allocate handoff under faults: device plugins killed (SIGKILL) or stopped (SIGTERM)
and kubelets restarted (``kubelet.sock`` re-created) while an Allocate is in flight, and a pod
deleted while the kubelet allocates it.

An Allocate is frozen in flight by holding the device plugin's pod LIST for the node (the first
thing it does when kubelet asks it for devices) until the fault has happened, so each fault lands
at the same point every run. Outcome rules: a
pod whose Allocate was cut either runs with exactly its own devices or is rejected by the kubelet
with a clear message; never runs with another pod's devices; the plugin re-registers and the
node serves new pods."""

from __future__ import annotations

import asyncio

import pytest
from rel_harness import RelCluster, phase, rel_cluster, until

from hami.core import keys
from hami.simulator.faults import FaultRule
from hami.simulator.scenario import gpu_pod

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

HOSTNAME = "kubernetes.io/hostname"


def pinned(name: str, node: str, **kwargs: object) -> dict:
    pod = gpu_pod(name, **kwargs)  # type: ignore[arg-type]
    pod["spec"]["nodeSelector"] = {HOSTNAME: node}
    return pod


def hold_allocate(rel: RelCluster, node: str) -> FaultRule:
    """Freeze the next LIST of ``node``'s pods (the device plugin's lookup when kubelet calls it)."""
    return rel.chaos.api.hold(
        verbs={"list"}, resources={"pods"}, query={"fieldSelector": f"spec.nodeName={node}"}
    )


def settled(pod: dict | None) -> bool:
    return phase(pod) in ("Running", "Failed", "Succeeded", "Gone")


async def serves_new_pods(rel: RelCluster, node: str, tag: str) -> None:
    names = [f"{tag}-after-{i}" for i in range(3)]
    for i, name in enumerate(names):
        await rel.create(pinned(name, node, gpumem=1000 + 500 * i, gpucores=10))
    await until(
        lambda: all(phase(rel.pod(n)) == "Running" for n in names),
        within=30,
        what=f"new pods on {node} after {tag}: {[phase(rel.pod(n)) for n in names]}",
    )


async def cut_allocate(rel: RelCluster, node: str, fault: str) -> str:
    """Hold an Allocate on ``node`` in flight, apply ``fault``, recover; the victim's phase."""
    hold = hold_allocate(rel, node)
    victim = f"{fault}-victim"
    await rel.create(pinned(victim, node, gpumem=3000, gpucores=20))
    await until(lambda: hold.hits >= 1, within=20, what=f"Allocate of {victim} in flight")
    plugin = rel.plugins[node]
    devices = rel.cluster.kubelet(node).devices
    registrations = len(devices.registrations)
    assert hold.release is not None
    if fault == "plugin-sigkill":
        await plugin.kill()
        hold.release.set()
    elif fault == "plugin-sigterm":
        stopping = asyncio.create_task(plugin.terminate())
        await asyncio.sleep(0.5)  # SIGTERM lands while the Allocate is in flight; then it may finish
        hold.release.set()
        await stopping
    else:
        await rel.chaos.restart_kubelet(node)
        hold.release.set()
    await until(lambda: settled(rel.pod(victim)), within=30, what=f"{victim} settled")
    if fault == "kubelet-restart":
        await until(
            lambda: len(devices.registrations) > registrations,
            within=5,
            what="the plugin re-registered within 5 s of the kubelet restart",
        )
    else:
        await plugin.start()
    await rel.wait_plugin(node)
    outcome = phase(rel.pod(victim))
    if outcome == "Failed":
        record = rel.cluster.kubelet(node).record("default", victim)
        assert record is not None and "Allocate failed" in record.message, record
    return outcome


async def test_device_plugin_and_kubelet_restarted_mid_allocate() -> None:
    async with rel_cluster(nodes=3, gpus=2) as rel:
        monitor = rel.monitor("restart-mid-allocate", pending_settle_s=5.0)
        outcomes: dict[str, str] = {}
        async with monitor.running():
            faults = (
                ("node-1", "plugin-sigkill"),
                ("node-2", "kubelet-restart"),
                ("node-3", "plugin-sigterm"),
            )
            for node, fault in faults:
                with monitor.disturbed():
                    outcomes[fault] = await cut_allocate(rel, node, fault)
                await serves_new_pods(rel, node, fault)
            await monitor.settle(within=20)
        assert not rel.crashed(), "\n".join(rel.crashed())
        assert sum(p.starts for p in rel.plugins.values()) == 5  # 3 first starts + 2 restarts
        assert set(outcomes.values()) <= {"Running", "Failed"}, outcomes
        monitor.assert_clean()


async def test_pod_deleted_while_the_kubelet_allocates_it() -> None:
    async with rel_cluster(nodes=1, gpus=2) as rel:
        monitor = rel.monitor("deleted-mid-allocate")
        async with monitor.running():
            hold = hold_allocate(rel, "node-1")
            assert hold.release is not None
            await rel.create(gpu_pod("first", gpumem=1000, gpucores=10))
            await rel.create(gpu_pod("second", gpumem=2000, gpucores=20))
            await until(lambda: hold.hits >= 1, within=20, what="Allocate of 'first' in flight")
            await until(
                lambda: (rel.pod("second") or {}).get("spec", {}).get("nodeName") == "node-1",
                within=10,
                what="'second' bound",
            )
            await rel.delete("first")  # bound: graceful, the kubelet finishes it
            first = rel.pod("first")
            if first is None or not first["metadata"].get("deletionTimestamp"):
                raise RuntimeError(f"'first' should be terminating while its Allocate is frozen: {first}")
            hold.release.set()
            await until(lambda: settled(rel.pod("second")), within=30, what="'second' settled")
            await monitor.settle(within=15)
        second = rel.pod("second")
        assert phase(second) == "Running", (second or {}).get("status")
        assert second is not None
        envs = rel.cluster.kubelet("node-1").record("default", "second").envs("main")  # type: ignore[union-attr]
        uuid = second["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED].split(",")[0]
        assert envs["NVIDIA_VISIBLE_DEVICES"] == uuid and envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "2000m"
        monitor.assert_clean()
