"""The fake kubelet against a real (test) device plugin over Unix sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import grpclib
import grpclib.client
import pytest
from simcluster_devplugin import PluginServer, RecordingPlugin

from hami._proto import v1beta1 as dp
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.faults import FaultRule
from hami.simulator.kubelet import KubeletSettings
from hami.simulator.scenario import container, pod_manifest
from hami.simulator.store import Store

RESOURCE = "example.com/dev"
FAST = KubeletSettings(heartbeat_interval=0.2)


def device_pod(name: str, count: int = 1, *, node: str | None = None, **kwargs: Any) -> dict[str, Any]:
    return pod_manifest(
        name,
        containers=[container("main", limits={RESOURCE: count, "cpu": "100m"})],
        node_name=node,
        **kwargs,
    )


async def wait_node(
    cluster: EmbeddedCluster, name: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            node = await cluster.client.get(f"/api/v1/nodes/{name}")
            if predicate(node):
                return node
            await asyncio.sleep(0.05)


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


async def wait_gone(cluster: EmbeddedCluster, namespace: str, name: str) -> None:
    async with asyncio.timeout(5):
        while True:
            pods = (await cluster.client.get(f"/api/v1/namespaces/{namespace}/pods"))["items"]
            if all(p["metadata"]["name"] != name for p in pods):
                return
            await asyncio.sleep(0.05)


def devices_of(node: dict[str, Any]) -> tuple[str | None, str | None]:
    status = node.get("status") or {}
    return (status.get("capacity") or {}).get(RESOURCE), (status.get("allocatable") or {}).get(RESOURCE)


def phase_is(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda pod: (pod.get("status") or {}).get("phase") == phase


async def test_registration_and_health_drive_node_capacity(short_dir):
    async with EmbeddedCluster.running(nodes=1, state_dir=short_dir, kubelet_settings=FAST) as cluster:
        node = cluster.nodes[0]
        plugin = RecordingPlugin(["dev-0", "dev-1", "dev-2"])
        server = PluginServer(plugin, node.plugin_dir, resource=RESOURCE)
        await server.start()
        try:
            registration = await asyncio.wait_for(node.kubelet.devices.wait_registered(RESOURCE), 5)
            assert (registration.endpoint, registration.version) == ("test.sock", "v1beta1")
            await wait_node(cluster, node.name, lambda n: devices_of(n) == ("3", "3"))
            plugin.set_health("dev-1", "Unhealthy")
            await wait_node(cluster, node.name, lambda n: devices_of(n) == ("3", "2"))
        finally:
            await server.stop()
        # The plugin went away: its devices stay on the node but none is allocatable.
        await wait_node(cluster, node.name, lambda n: devices_of(n) == ("3", "0"))
        ready = await wait_node(cluster, node.name, lambda n: True)
        conditions = {c["type"]: c["status"] for c in ready["status"]["conditions"]}
        assert conditions["Ready"] == "True"


async def test_register_rejects_bad_version_and_resource_name(short_dir):
    async with EmbeddedCluster.running(nodes=1, state_dir=short_dir, kubelet_settings=FAST) as cluster:
        node = cluster.nodes[0]
        channel = grpclib.client.Channel(path=str(node.plugin_dir / "kubelet.sock"))
        stub = dp.RegistrationStub(channel)
        try:
            with pytest.raises(grpclib.GRPCError, match='the ResourceName "gpu" is invalid'):
                await stub.register(
                    dp.RegisterRequest(version="v1beta1", endpoint="x.sock", resource_name="gpu")
                )
            with pytest.raises(grpclib.GRPCError, match="not supported by kubelet"):
                await stub.register(
                    dp.RegisterRequest(version="v1alpha", endpoint="x.sock", resource_name=RESOURCE)
                )
            with pytest.raises(grpclib.GRPCError, match="failed to get device plugin options"):
                await stub.register(
                    dp.RegisterRequest(version="v1beta1", endpoint="none.sock", resource_name=RESOURCE)
                )
        finally:
            channel.close()
        assert node.kubelet.devices.registrations == []


async def test_batch_is_admitted_in_creation_timestamp_order(short_dir):
    clock = [1_700_000_000.0]
    store = Store(clock=lambda: clock[0])
    async with EmbeddedCluster.running(
        nodes=1, state_dir=short_dir, kubelet_settings=FAST, store=store, start_kubelets=False
    ) as cluster:
        node = cluster.nodes[0]
        # Created in name order, stamped out of order: p2 is oldest, then p3, then p1.
        for name, offset in (("p1", 20), ("p2", 0), ("p3", 10)):
            clock[0] = 1_700_000_000.0 + offset
            await cluster.create_pod(device_pod(name, node=node.name))
        clock[0] = 1_700_000_100.0
        # Hold the kubelet's first pod LIST until the plugin is registered, so all three pods
        # reach it as one batch (as after a kubelet start).
        cluster.api.faults.add(FaultRule(path_prefix="/api/v1/pods", methods=frozenset({"GET"}), delay_s=1.0))
        starting = asyncio.create_task(cluster.start_kubelet(node.name))
        await eventually(lambda: (node.plugin_dir / "kubelet.sock").exists())
        plugin = RecordingPlugin([f"dev-{i}" for i in range(4)])
        server = PluginServer(plugin, node.plugin_dir, resource=RESOURCE)
        await server.start()
        try:
            await starting
            for name in ("p1", "p2", "p3"):
                await cluster.wait_for_pod("default", name, phase_is("Running"))
            kubelet = node.kubelet
            order = sorted(
                ("p1", "p2", "p3"), key=lambda n: int(kubelet.record("default", n).envs("main")["ALLOC_SEQ"])
            )
            assert order == ["p2", "p3", "p1"]
            assert [ids for [ids] in plugin.allocate_calls] == [["dev-0"], ["dev-1"], ["dev-2"]]
        finally:
            await server.stop()


async def test_allocate_answer_is_recorded_with_preferred_ids_and_prestart(short_dir):
    async with EmbeddedCluster.running(nodes=1, state_dir=short_dir, kubelet_settings=FAST) as cluster:
        node = cluster.nodes[0]
        plugin = RecordingPlugin([f"dev-{i}" for i in range(4)], preferred=True, pre_start=True)
        server = PluginServer(plugin, node.plugin_dir, resource=RESOURCE)
        await server.start()
        try:
            await wait_node(cluster, node.name, lambda n: devices_of(n) == ("4", "4"))
            created = await cluster.create_pod(device_pod("two", 2))
            pod = await cluster.wait_for_pod("default", "two", phase_is("Running"))
            assert pod["spec"]["nodeName"] == node.name
            statuses = pod["status"]["containerStatuses"]
            assert [(s["name"], s["ready"], list(s["state"])) for s in statuses] == [
                ("main", True, ["running"])
            ]
            # GetPreferredAllocation saw every free healthy device; its (highest-first) answer was used.
            assert plugin.preferred_calls == [(["dev-0", "dev-1", "dev-2", "dev-3"], [], 2)]
            assert plugin.allocate_calls == [[["dev-3", "dev-2"]]]
            assert plugin.prestart_calls == [["dev-3", "dev-2"]]
            record = node.kubelet.record("default", "two")
            assert record is not None and record.uid == created["metadata"]["uid"]
            assert record.envs("main") == {"TEST_DEVICES": "dev-3,dev-2", "ALLOC_SEQ": "1"}
            [allocation] = record.allocations
            assert allocation.mounts == (
                {"containerPath": "/usr/lib/libtest.so", "hostPath": "/opt/libtest.so", "readOnly": True},
            )
            assert allocation.devices == (
                {"containerPath": "/dev/test0", "hostPath": "/dev/test0", "permissions": "rw"},
            )
            assert allocation.annotations == {"test.example.com/seq": "1"}
            saved = json.loads((node.state_dir / "pods" / f"default_two_{record.uid}.json").read_text())
            assert saved == record.to_json()
            assert saved["allocations"][0]["envs"]["TEST_DEVICES"] == "dev-3,dev-2"
            listing = [
                {
                    "name": "two",
                    "namespace": "default",
                    "containers": [
                        {
                            "name": "main",
                            "devices": [{"resourceName": RESOURCE, "deviceIds": ["dev-3", "dev-2"]}],
                        }
                    ],
                }
            ]
            assert node.kubelet.pod_resources() == listing
            assert json.loads((node.state_dir / "pod-resources.json").read_text()) == {
                "podResources": listing
            }
        finally:
            await server.stop()


async def test_allocate_failures_reject_the_pod(short_dir):
    async with EmbeddedCluster.running(nodes=1, state_dir=short_dir, kubelet_settings=FAST) as cluster:
        node = cluster.nodes[0]
        plugin = RecordingPlugin(["dev-0", "dev-1"], fail_allocate="no binding pod found on node node-1")
        server = PluginServer(plugin, node.plugin_dir, resource=RESOURCE)
        await server.start()
        try:
            await wait_node(cluster, node.name, lambda n: devices_of(n) == ("2", "2"))
            await cluster.create_pod(device_pod("broken", node=node.name))
            pod = await cluster.wait_for_pod("default", "broken", phase_is("Failed"))
            assert pod["status"]["reason"] == "UnexpectedAdmissionError"
            assert pod["status"]["message"] == (
                "Pod was rejected: Allocate failed due to rpc error: code = Unknown desc = "
                "no binding pod found on node node-1, which is unexpected"
            )
            plugin.fail_allocate = None
            await cluster.create_pod(device_pod("greedy", 3, node=node.name))
            pod = await cluster.wait_for_pod("default", "greedy", phase_is("Failed"))
            assert (
                "requested number of devices unavailable for example.com/dev. Requested: 3, Available: 2"
                in (pod["status"]["message"])
            )
            assert node.kubelet.pod_resources() == []  # nothing stays allocated to rejected pods
        finally:
            await server.stop()


async def test_a_rejection_status_that_fails_to_land_is_written_again(short_dir):
    # Found by the soak: a rejected pod whose Failed status hit a 500 stayed Pending, still looking
    # like the next pod to the device plugin. A real kubelet's status manager retries until it lands.
    async with EmbeddedCluster.running(nodes=1, state_dir=short_dir, kubelet_settings=FAST) as cluster:
        node = cluster.nodes[0]
        plugin = RecordingPlugin(["dev-0"], fail_allocate="injected")
        server = PluginServer(plugin, node.plugin_dir, resource=RESOURCE)
        await server.start()
        try:
            await wait_node(cluster, node.name, lambda n: devices_of(n) == ("1", "1"))
            rule = cluster.api.faults.add(
                FaultRule(
                    resources=frozenset({"pods/status"}), methods=frozenset({"PATCH"}), status=500, times=3
                )
            )
            await cluster.create_pod(device_pod("rejected", node=node.name))
            pod = await cluster.wait_for_pod("default", "rejected", phase_is("Failed"))
            assert pod["status"]["reason"] == "UnexpectedAdmissionError"
            assert rule.hits == 3  # every injected failure was met, and the status still landed
        finally:
            await server.stop()


async def test_kubelet_restart_makes_the_plugin_register_again(short_dir):
    async with EmbeddedCluster.running(nodes=1, state_dir=short_dir, kubelet_settings=FAST) as cluster:
        node = cluster.nodes[0]
        plugin = RecordingPlugin(["dev-0", "dev-1"])
        server = PluginServer(plugin, node.plugin_dir, resource=RESOURCE)
        await server.start()
        try:
            await wait_node(cluster, node.name, lambda n: devices_of(n) == ("2", "2"))
            await cluster.create_pod(device_pod("before", node=node.name))
            await cluster.wait_for_pod("default", "before", phase_is("Running"))
            await node.kubelet.restart()
            assert (node.plugin_dir / "kubelet.sock").exists()
            await asyncio.wait_for(node.kubelet.devices.wait_registered(RESOURCE, count=2), 5)
            assert server.registrations == 2
            await eventually(lambda: plugin.list_and_watch_opened == 2)  # the new kubelet's own stream
            await wait_node(cluster, node.name, lambda n: devices_of(n) == ("2", "2"))
            # The allocation of the running pod survived the restart (kubelet checkpoint).
            await cluster.create_pod(device_pod("after", node=node.name))
            await cluster.wait_for_pod("default", "after", phase_is("Running"))
            assert node.kubelet.record("default", "after").allocations[0].device_ids == ("dev-1",)
        finally:
            await server.stop()


async def test_run_seconds_and_graceful_delete_finish_pods(short_dir):
    async with EmbeddedCluster.running(nodes=1, state_dir=short_dir, kubelet_settings=FAST) as cluster:
        node = cluster.nodes[0]
        plugin = RecordingPlugin(["dev-0"])
        server = PluginServer(plugin, node.plugin_dir, resource=RESOURCE)
        await server.start()
        try:
            await wait_node(cluster, node.name, lambda n: devices_of(n) == ("1", "1"))
            await cluster.create_pod(device_pod("short", node=node.name, run_seconds=0.2))
            pod = await cluster.wait_for_pod("default", "short", phase_is("Succeeded"))
            [status] = pod["status"]["containerStatuses"]
            assert status["state"]["terminated"]["reason"] == "Completed"
            assert node.kubelet.pod_resources() == []
            # The device is free again: a second pod gets it.
            await cluster.create_pod(device_pod("long", node=node.name))
            await cluster.wait_for_pod("default", "long", phase_is("Running"))
            deleting = await cluster.client.delete("/api/v1/namespaces/default/pods/long")
            assert deleting["metadata"]["deletionTimestamp"]  # graceful: the kubelet must finish it
            await wait_gone(cluster, "default", "long")
            assert node.kubelet.pod_resources() == []
        finally:
            await server.stop()


async def test_app_containers_reuse_init_container_devices(short_dir):
    async with EmbeddedCluster.running(nodes=1, state_dir=short_dir, kubelet_settings=FAST) as cluster:
        node = cluster.nodes[0]
        plugin = RecordingPlugin(["dev-0", "dev-1"])
        server = PluginServer(plugin, node.plugin_dir, resource=RESOURCE)
        await server.start()
        try:
            await wait_node(cluster, node.name, lambda n: devices_of(n) == ("2", "2"))
            manifest = pod_manifest(
                "staged",
                init_containers=[container("setup", limits={RESOURCE: 1})],
                containers=[container("main", limits={RESOURCE: 2})],
                node_name=node.name,
            )
            await cluster.create_pod(manifest)
            pod = await cluster.wait_for_pod("default", "staged", phase_is("Running"))
            assert [s["state"]["terminated"]["reason"] for s in pod["status"]["initContainerStatuses"]] == [
                "Completed"
            ]
            # Allocate runs per container in order: init first, then the app container reusing its device.
            assert plugin.allocate_calls == [[["dev-0"]], [["dev-0", "dev-1"]]]
        finally:
            await server.stop()
