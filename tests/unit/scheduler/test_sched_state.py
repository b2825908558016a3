"""Watch caches → ledger (hami-scheduler-spec.md §7, §8): registration, health, accounting, quota."""

from __future__ import annotations

import copy

from sched_fakes import container, gpu, make_env, node_obj, pod_obj

from hami.core import keys
from hami.core.ledger import PodState
from hami.core.node_annotations import encode_node_devices_legacy
from hami.core.placement import NODE_QUARANTINED
from hami.k8s.objects import NODES
from hami.k8s.watch import Change, Listed

ALLOC = keys.VGPU_DEVICES_ALLOCATED


def placed(name, node, value, **kw):
    return pod_obj(name, annotations={keys.VGPU_NODE: node, ALLOC: value}, **kw)


def devices_of(env, node):
    view = env.state.ledger.snapshot().node(node)
    return None if view is None else {d.id: (d.used, d.usedmem, d.usedcores) for d in view.devices}


async def test_spec_4_4_json_and_legacy_registrations_register():
    env = make_env()
    env.api.add_node(node_obj("json", [gpu("GPU-j")]))
    legacy = encode_node_devices_legacy([gpu("GPU-l", model="NVIDIA-Tesla T4")])
    env.api.add_node(node_obj("legacy", register=legacy, allocatable=10))
    assert devices_of(env, "json") == {"GPU-j": (0, 0, 0)}
    assert devices_of(env, "legacy") == {"GPU-l": (0, 0, 0)}


async def test_spec_7_4_zero_allocatable_means_the_plugin_is_gone():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")], allocatable=0))
    assert devices_of(env, "n1") is None
    env.api.add_node(node_obj("n1", [gpu("GPU-a")], allocatable=10))
    assert devices_of(env, "n1") == {"GPU-a": (0, 0, 0)}
    env.api.add_node(node_obj("n1", [gpu("GPU-a")], allocatable=0))
    assert devices_of(env, "n1") is None


async def test_head_register_text_change_refreshes_without_count_change():
    """§14 item 4 fixed: a new annotation is read although allocatable stays 10."""
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a", mem=8000)], allocatable=10))
    env.api.add_node(node_obj("n1", [gpu("GPU-a", mem=16000)], allocatable=10))
    assert env.state.ledger.snapshot().node("n1").devices[0].totalmem == 16000


async def test_malformed_registration_quarantines_only_that_node():
    env = make_env()
    env.api.add_node(node_obj("good", [gpu("GPU-g")]))
    env.api.add_node(node_obj("bad", register='[{"id":"GPU-b","count":"ten"}]', allocatable=10))
    env.api.add_pod(placed("holder", "bad", "GPU-b,NVIDIA,100,0:;"))
    assert env.state.registrar.quarantine_reason("bad") is not None
    assert env.state.registrar.quarantine_reason("good") is None
    pod = env.api.add_pod(pod_obj("p", container(mem=100)))
    out = await env.filter(pod, ["bad", "good"])
    assert out.node_names == ("good",)
    pod2 = env.api.add_pod(pod_obj("q", container(mem=100), annotations={keys.USE_GPUUUID: "GPU-b"}))
    out = await env.filter(pod2, ["bad", "good"])
    assert out.failed_nodes == {"bad": NODE_QUARANTINED, "good": "NodeUnfitPod"}
    record = env.why.get("default", "q")
    bad = next(n for n in record.nodes if n.node == "bad")
    assert "unreadable device registration" in bad.detail and "count" in bad.detail
    # the holder's usage is kept: once fixed, the node comes back with it
    env.api.add_node(node_obj("bad", [gpu("GPU-b")]))
    assert env.state.registrar.quarantine_reason("bad") is None
    assert devices_of(env, "bad") == {"GPU-b": (1, 100, 0)}


async def test_spec_7_2_pod_accounting_commit_and_release():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    pod = env.api.add_pod(placed("p", "n1", "GPU-a,NVIDIA,1000,10:;", node_name="n1", phase="Running"))
    assert devices_of(env, "n1") == {"GPU-a": (1, 1000, 10)}
    assert env.state.ledger.pod(pod["metadata"]["uid"]).state is PodState.COMMITTED
    env.api.update_pod("default", "p", {"status": {"phase": "Succeeded"}})
    assert devices_of(env, "n1") == {"GPU-a": (0, 0, 0)}
    env.api.update_pod("default", "p", {"status": {"phase": "Running"}})  # never happens, but still truthful
    assert devices_of(env, "n1") == {"GPU-a": (1, 1000, 10)}
    env.api.delete_pod("default", "p")
    assert devices_of(env, "n1") == {"GPU-a": (0, 0, 0)}


async def test_relist_tombstones_release():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    env.api.add_pod(placed("p", "n1", "GPU-a,NVIDIA,1000,10:;"))
    assert devices_of(env, "n1") == {"GPU-a": (1, 1000, 10)}
    env.api.pods.clear()  # deleted while the watch was down
    env.api.resync()
    assert devices_of(env, "n1") == {"GPU-a": (0, 0, 0)}


async def test_recreated_pod_with_same_name_releases_the_old_uid():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    old = env.api.add_pod(placed("p", "n1", "GPU-a,NVIDIA,1000,10:;"))
    new = copy.deepcopy(old)
    new["metadata"]["uid"] = "0b7d8a3c-0000-4000-8000-000000000001"
    new["metadata"]["annotations"] = {}
    env.api.add_pod(new)  # MODIFIED with another UID: the delete was missed
    assert env.state.ledger.pod(old["metadata"]["uid"]) is None
    assert devices_of(env, "n1") == {"GPU-a": (0, 0, 0)}


async def test_unreadable_allocation_quarantines_its_node():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    env.api.add_node(node_obj("n2", [gpu("GPU-b")]))
    env.api.add_pod(placed("bad", "n1", "GPU-a,NVIDIA,lots,10:;"))
    pod = env.api.add_pod(pod_obj("p", container(mem=100)))
    out = await env.filter(pod, ["n1", "n2"])
    assert out.node_names == ("n2",)
    assert env.state.ledger.snapshot().node("n1").quarantined
    env.api.delete_pod("default", "bad")
    assert not env.state.ledger.snapshot().node("n1").quarantined


async def test_restart_rebuilds_an_identical_ledger():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)]))
    env.api.add_node(node_obj("n2", [gpu("GPU-c")]))
    for i in range(6):
        pod = env.api.add_pod(pod_obj(f"p{i}", container(mem=1000 + i, cores=5)))
        assert (await env.filter(pod)).node_names
    await env.settle()
    before = {n: devices_of(env, n) for n in ("n1", "n2")}
    restarted = make_env()
    restarted.api.nodes = copy.deepcopy(env.api.nodes)
    restarted.api.pods = copy.deepcopy(env.api.pods)
    restarted.api.resync()
    assert {n: devices_of(restarted, n) for n in ("n1", "n2")} == before
    assert restarted.state.ledger.assumed() == ()
    assert restarted.state.ledger.namespace_usage("default", "NVIDIA") == env.state.ledger.namespace_usage(
        "default", "NVIDIA"
    )


async def test_stale_watch_event_does_not_override_a_fresh_assumption():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)]))
    pod = env.api.add_pod(placed("p", "n1", "GPU-a,NVIDIA,1000,10:;"))
    env.api.echo = False
    await env.filter(pod)  # re-filtered: a new decision (spread picks GPU-b) is being written
    uid = pod["metadata"]["uid"]
    assert env.state.ledger.pod(uid).state is PodState.ASSUMED
    env.state.pods.apply(Change(type="MODIFIED", object=copy.deepcopy(pod), resource_version="999"))
    usage = env.state.ledger.pod(uid)
    assert usage.state is PodState.ASSUMED
    assert [cd.uuid for c in usage.devices["NVIDIA"] for cd in c] == ["GPU-b"]
    env.state.pods.apply(Change(type="MODIFIED", object=copy.deepcopy(env.pod(pod)), resource_version="1000"))
    assert env.state.ledger.pod(uid).state is PodState.COMMITTED


async def test_spec_8_quota_enforced_with_count_times_per_gpu():
    """§5.5 golden: limits 4000 MiB / 200 cores; 2 × 2000 × 100 fits, 2 × 3000 × 60 does not."""
    env = make_env()
    env.api.add_node(node_obj("node1", [gpu(f"GPU-{i}", index=i) for i in range(4)]))
    quota = {
        "metadata": {"name": "q", "namespace": "default", "resourceVersion": "1", "uid": "q1"},
        "spec": {"hard": {"limits.nvidia.com/gpumem": "4000", "limits.nvidia.com/gpucores": "200"}},
    }
    env.state.quota_informer.apply(Listed(objects=(quota,), resource_version="2"))
    big = env.api.add_pod(pod_obj("big", container(gpus=2, mem=3000, cores=60)))
    out = await env.filter(big)
    assert out.failed_nodes == {"node1": "NodeUnfitPod"}
    assert "ResourceQuotaNotFit" in env.why.get("default", "big").nodes[0].detail
    fits = env.api.add_pod(pod_obj("fits", container(gpus=2, mem=2000, cores=100)))
    assert (await env.filter(fits)).node_names == ("node1",)
    more = env.api.add_pod(pod_obj("more", container(gpus=1, mem=1, cores=0)))
    assert (await env.filter(more)).failed_nodes == {"node1": "NodeUnfitPod"}
    # no leak: deleting the pod frees the namespace's quota at once
    await env.settle()
    env.api.delete_pod("default", "fits")
    assert env.state.ledger.namespace_usage("default", "NVIDIA") == (0, 0)
    assert (await env.filter(more)).node_names == ("node1",)
    # other namespaces are not limited
    other = env.api.add_pod(pod_obj("o", container(gpus=2, mem=3000), namespace="team-b"))
    assert (await env.filter(other)).node_names == ("node1",)
    # deleting the quota lifts the limit
    env.state.quota_informer.apply(Change(type="DELETED", object=quota, resource_version="3"))
    assert (await env.filter(big)).node_names == ("node1",)


async def test_quota_rows_for_metrics():
    env = make_env()
    quota = {
        "metadata": {"name": "q", "namespace": "team", "resourceVersion": "1"},
        "spec": {"hard": {"limits.nvidia.com/gpumem": "20000", "requests.nvidia.com/gpumem": "1"}},
    }
    env.state.quota_informer.apply(Listed(objects=(quota,), resource_version="2"))
    env.api.add_node(node_obj("n1", [gpu("GPU-a", mem=40000)]))
    env.api.add_pod(placed("p", "n1", "GPU-a,NVIDIA,8000,0:;", namespace="team"))
    rows = list(env.state.quotas.rows())
    assert [(r.resource, r.used, r.limit) for r in rows] == [("nvidia.com/gpumem", 8000, 20000)]


async def test_node_delete_unregisters():
    env = make_env()
    node = env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    env.state.nodes.apply(Change(type="DELETED", object=node, resource_version="9"))
    assert devices_of(env, "n1") is None
    assert env.state.node_info("n1") is None
    assert NODES.plural == "nodes"
