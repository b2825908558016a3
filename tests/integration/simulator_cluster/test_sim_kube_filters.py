"""In-tree filters of the fake kube-scheduler, through the API (default-scheduler, no extender)."""

from __future__ import annotations

from typing import Any

from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.kubelet import KubeletSettings
from hami.simulator.scenario import NodeSpec, container, pod_manifest

NODES = (
    NodeSpec(name="tainted", taints=({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},)),
    NodeSpec(name="small", cpu="1", labels={"zone": "a"}),
    NodeSpec(name="cordoned", unschedulable=True),
)


def cpu_pod(name: str, cpu: str, **kwargs: Any) -> dict[str, Any]:
    return pod_manifest(name, containers=[container("c", requests={"cpu": cpu})], **kwargs)


def scheduled_condition(pod: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"), {})


def unschedulable(pod: dict[str, Any]) -> bool:
    return scheduled_condition(pod).get("reason") == "Unschedulable"


def bound(pod: dict[str, Any]) -> bool:
    return bool(pod["spec"].get("nodeName"))


async def test_taints_selectors_and_cpu_fit(short_dir):
    async with EmbeddedCluster.running(
        nodes=NODES, state_dir=short_dir, kubelet_settings=KubeletSettings(heartbeat_interval=0.2)
    ) as cluster:
        await cluster.create_pod(cpu_pod("big", "2"))
        pod = await cluster.wait_for_pod("default", "big", unschedulable)
        assert scheduled_condition(pod)["message"] == (
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}, "
            "1 node(s) were unschedulable."
        )

        toleration = {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
        await cluster.create_pod(cpu_pod("tolerant", "2", tolerations=[toleration]))
        pod = await cluster.wait_for_pod("default", "tolerant", bound)
        assert pod["spec"]["nodeName"] == "tainted"

        await cluster.create_pod(cpu_pod("zoned", "500m", node_selector={"zone": "a"}))
        pod = await cluster.wait_for_pod("default", "zoned", bound)
        assert pod["spec"]["nodeName"] == "small"

        # "small" now has 500m of its 1 CPU requested: a second 600m pod in zone a does not fit. Each
        # node reports its first failing plugin (unschedulable, taints, then affinity, then fit).
        await cluster.create_pod(cpu_pod("zoned-2", "600m", node_selector={"zone": "a"}))
        pod = await cluster.wait_for_pod("default", "zoned-2", unschedulable)
        assert scheduled_condition(pod)["message"] == (
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}, "
            "1 node(s) were unschedulable."
        )
        await cluster.create_pod(
            cpu_pod("nowhere", "1m", node_selector={"zone": "b"}, tolerations=[toleration])
        )
        pod = await cluster.wait_for_pod("default", "nowhere", unschedulable)
        assert scheduled_condition(pod)["message"] == (
            "0/3 nodes are available: 1 node(s) were unschedulable, "
            "2 node(s) didn't match Pod's node affinity/selector."
        )

        # Deleting the first zone-a pod frees the CPU: the waiting pod is re-queued and placed.
        await cluster.client.delete("/api/v1/namespaces/default/pods/zoned")
        pod = await cluster.wait_for_pod("default", "zoned-2", bound, within=15)
        assert pod["spec"]["nodeName"] == "small"
        running = await cluster.wait_for_pod(
            "default", "zoned-2", lambda p: p["status"].get("phase") == "Running"
        )
        assert running["status"]["hostIP"] == cluster.kubelet("small").node_ip
