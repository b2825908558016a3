"""The filter cycle against the spec's formulas and golden examples (hami-scheduler-spec.md §5)."""

from __future__ import annotations

import pytest
from sched_fakes import container, drain_events, gpu, make_env, node_obj, pod_obj

from hami.core import keys
from hami.core.ledger import PodState
from hami.core.policy import GpuPolicy, NodePolicy
from hami.k8s.errors import ApiInvalid, ApiServiceUnavailable


def _golden_cluster(env):
    """Spec §5.7 'End-to-end Filter (four policy combinations)'."""
    env.api.add_node(node_obj("node1", [gpu("device1", index=0), gpu("device2", index=1)]))
    env.api.add_node(node_obj("node2", [gpu("device3", index=0), gpu("device4", index=1)]))
    env.api.add_pod(
        pod_obj(
            "a",
            annotations={keys.VGPU_NODE: "node1", keys.VGPU_DEVICES_ALLOCATED: "device1,NVIDIA,2000,25:;"},
        )
    )
    env.api.add_pod(
        pod_obj(
            "b",
            annotations={keys.VGPU_NODE: "node2", keys.VGPU_DEVICES_ALLOCATED: "device4,NVIDIA,6000,75:;"},
        )
    )


@pytest.mark.parametrize(
    ("node_policy", "gpu_policy", "node", "device"),
    [
        (NodePolicy.BINPACK, GpuPolicy.BINPACK, "node2", "device4"),
        (NodePolicy.BINPACK, GpuPolicy.SPREAD, "node2", "device3"),
        (NodePolicy.SPREAD, GpuPolicy.BINPACK, "node1", "device1"),
        (NodePolicy.SPREAD, GpuPolicy.SPREAD, "node1", "device2"),
    ],
)
async def test_spec_5_7_four_policy_combinations(node_policy, gpu_policy, node, device):
    env = make_env(node_policy=node_policy, gpu_policy=gpu_policy)
    _golden_cluster(env)
    pod = env.api.add_pod(pod_obj("p", container(gpus=1, mem=1000, cores=20)))
    outcome = await env.filter(pod)
    assert outcome.node_names == (node,) and outcome.error == "" and outcome.failed_nodes is None
    ann = env.pod(pod)["metadata"]["annotations"]
    assert ann[keys.VGPU_DEVICES_ALLOCATED] == f"{device},NVIDIA,1000,20:;"
    assert ann[keys.VGPU_DEVICES_TO_ALLOCATE] == ann[keys.VGPU_DEVICES_ALLOCATED]
    assert ann[keys.VGPU_NODE] == node and env.pod(pod)["metadata"]["labels"][keys.VGPU_NODE] == node


async def test_spec_5_7_pod_annotation_overrides_policies():
    env = make_env(node_policy=NodePolicy.BINPACK, gpu_policy=GpuPolicy.BINPACK)
    _golden_cluster(env)
    pod = env.api.add_pod(
        pod_obj(
            "p",
            container(gpus=1, mem=1000, cores=20),
            annotations={keys.NODE_SCHEDULER_POLICY: "spread", keys.GPU_SCHEDULER_POLICY: "spread"},
        )
    )
    assert (await env.filter(pod)).node_names == ("node1",)
    assert env.pod(pod)["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED] == "device2,NVIDIA,1000,20:;"


async def test_spec_5_8_patch_is_one_merge_patch_with_hami_keys():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)]))
    pod = env.api.add_pod(pod_obj("p", container("side", gpus=None), container(gpus=1, mem=3000, cores=30)))
    await env.filter(pod)
    [(plural, key, body)] = env.api.patches
    assert plural == "pods" and key == "default/p"
    ann = body["metadata"]["annotations"]
    assert set(ann) == {
        keys.VGPU_NODE,
        keys.VGPU_TIME,
        keys.VGPU_DEVICES_TO_ALLOCATE,
        keys.VGPU_DEVICES_ALLOCATED,
    }
    # [no-gpu, gpu] containers: an empty segment first (spec §4.5); spread picks the last idle card.
    assert ann[keys.VGPU_DEVICES_ALLOCATED] == ";GPU-b,NVIDIA,3000,30:;"
    assert ann[keys.VGPU_TIME].isdigit()
    assert body["metadata"]["labels"] == {keys.VGPU_NODE: "n1"}


async def test_spec_5_2_reservation_is_visible_to_the_next_decision():
    env = make_env(gpu_policy=GpuPolicy.BINPACK)
    env.api.add_node(node_obj("n1", [gpu("GPU-a", mem=8000)]))
    p1 = env.api.add_pod(pod_obj("p1", container(mem=6000)))
    p2 = env.api.add_pod(pod_obj("p2", container(mem=6000)))
    assert (await env.filter(p1)).node_names == ("n1",)
    out = await env.filter(p2)
    assert out.node_names is None and out.failed_nodes == {"n1": "NodeUnfitPod"}
    assert env.state.ledger.check_invariants() == []


async def test_spec_5_2_no_request_passes_through_with_event():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    pod = env.api.add_pod(pod_obj("cpu", container(gpus=None)))
    out = await env.filter(pod, ["n1", "cpu-node"])
    assert out.node_names == ("n1", "cpu-node") and out.failed_nodes is None
    await drain_events(env)
    assert env.event_messages("cpu", "FilteringFailed") == ["does not request any resource"]


async def test_spec_5_9_failure_events_and_failed_nodes():
    env = make_env()
    env.api.add_node(node_obj("node-a", [gpu("GPU-a", mem=4000)]))
    env.api.add_node(node_obj("node-b", [gpu("GPU-b", mem=4000)]))
    pod = env.api.add_pod(pod_obj("big", container(mem=6000)))
    out = await env.filter(pod, ["node-a", "node-b", "cpu-1"])
    assert out.failed_nodes == {
        "node-a": "NodeUnfitPod",
        "node-b": "NodeUnfitPod",
        "cpu-1": "node unregistered",
    }
    await drain_events(env)
    assert env.event_messages("big", "FilteringFailed") == [
        "2 nodes CardInsufficientMemory(node-a,node-b)",
        "no available node, 3 nodes do not meet",
    ]


async def test_spec_5_9_success_event_text():
    """Spec §5.7 worked example: node-a scores 2.87, one other candidate failed."""
    env = make_env()
    env.api.add_node(
        node_obj(
            "node-a",
            [
                gpu("GPU-0", mem=23028, model="NVIDIA A10"),
                gpu("GPU-1", mem=23028, model="NVIDIA A10", index=1),
            ],
        )
    )
    env.api.add_node(node_obj("node-b", [gpu("GPU-x", mem=1000)]))
    env.api.add_pod(
        pod_obj(
            "old",
            annotations={keys.VGPU_NODE: "node-a", keys.VGPU_DEVICES_ALLOCATED: "GPU-0,NVIDIA,4000,30:;"},
        )
    )
    pod = env.api.add_pod(pod_obj("new", container(mem=3000, cores=30)))
    assert (await env.filter(pod)).node_names == ("node-a",)
    assert env.pod(pod)["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED] == "GPU-1,NVIDIA,3000,30:;"
    await drain_events(env)
    assert env.event_messages("new", "FilteringSucceed") == [
        "find fit node(node-a), 1 nodes not fit, 1 nodes fit(node-a:2.87)"
    ]


async def test_percentage_and_exclusive_and_uuid_pinning():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a", mem=10000), gpu("GPU-b", mem=10000, index=1)]))
    # 25% of a 10000 MiB card (spec §5.5 step 7)
    p1 = env.api.add_pod(pod_obj("pct", container(pct=25), annotations={keys.USE_GPUUUID: "GPU-a"}))
    await env.filter(p1)
    assert env.pod(p1)["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED] == "GPU-a,NVIDIA,2500,0:;"
    # an exclusive request (100 cores) cannot share GPU-a (ExclusiveDeviceAllocateConflict)
    p2 = env.api.add_pod(
        pod_obj("excl", container(mem=1000, cores=100), annotations={keys.USE_GPUUUID: "GPU-a"})
    )
    out = await env.filter(p2)
    assert out.failed_nodes == {"n1": "NodeUnfitPod"}
    record = env.why.get("default", "excl")
    assert record is not None and "ExclusiveDeviceAllocateConflict" in record.nodes[0].detail
    p3 = env.api.add_pod(pod_obj("excl2", container(cores=100)))
    await env.filter(p3)
    assert env.pod(p3)["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED] == "GPU-b,NVIDIA,10000,100:;"


async def test_type_pinning():
    env = make_env()
    env.api.add_node(node_obj("t4", [gpu("GPU-t4", model="NVIDIA-Tesla T4")]))
    env.api.add_node(node_obj("a100", [gpu("GPU-a100", model="NVIDIA A100-SXM4-40GB")]))
    pod = env.api.add_pod(pod_obj("p", container(mem=100), annotations={keys.USE_GPUTYPE: "a100"}))
    assert (await env.filter(pod)).node_names == ("a100",)
    pod2 = env.api.add_pod(pod_obj("q", container(mem=100), annotations={keys.NOUSE_GPUTYPE: "A100"}))
    assert (await env.filter(pod2)).node_names == ("t4",)


async def test_definite_patch_failure_forgets_the_reservation():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    env.api.fail_patch = lambda plural, key: ApiInvalid("label value too long", status=422)
    out = await env.filter(pod)
    assert "label value too long" in out.error and out.node_names is None
    assert env.state.ledger.pod(pod["metadata"]["uid"]) is None
    assert env.state.ledger.namespace_usage("default", "NVIDIA") == (0, 0)


async def test_ambiguous_patch_failure_keeps_the_reservation_until_settled():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    env.api.fail_patch = lambda plural, key: ApiServiceUnavailable("try later", status=503)
    out = await env.filter(pod)
    assert out.error
    usage = env.state.ledger.pod(pod["metadata"]["uid"])
    assert usage is not None and usage.state is PodState.ASSUMED


async def test_refilter_releases_the_old_reservation_and_its_quota():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a", mem=8000)]))
    pod = env.api.add_pod(pod_obj("p", container(mem=6000)))
    await env.filter(pod)
    await env.settle()
    assert env.state.ledger.namespace_usage("default", "NVIDIA") == (6000, 0)
    await env.filter(pod)  # kube-scheduler retries the pod (e.g. its bind failed)
    await env.settle()
    assert env.state.ledger.namespace_usage("default", "NVIDIA") == (6000, 0)
    assert env.state.ledger.check_invariants() == []


async def test_bound_pod_is_not_refiltered():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    pod = env.api.add_pod(pod_obj("p", container(mem=1000), node_name="n1"))
    out = await env.filter(pod)
    assert "already bound to n1" in out.error
