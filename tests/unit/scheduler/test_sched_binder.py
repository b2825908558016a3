"""The bind cycle (hami-scheduler-spec.md §6.1) from the watch cache, with the handoff order."""

from __future__ import annotations

import asyncio

from sched_fakes import container, gpu, make_env, node_obj, pod_obj

from hami.core import keys
from hami.core.ledger import PodState
from hami.core.node_lock import decode_node_lock
from hami.k8s.errors import ApiForbidden, ApiServiceUnavailable
from hami.k8s.lease import NotLeader
from hami.scheduler.binder import BindArgs


def _allocated(env, pod) -> None:
    """What the device plugin writes after Allocate."""
    meta = env.pod(pod)["metadata"]
    env.api.update_pod(
        meta["namespace"],
        meta["name"],
        {"metadata": {"annotations": {keys.VGPU_DEVICES_TO_ALLOCATE: ";", keys.BIND_PHASE: "success"}}},
    )


async def _placed(env, *names, created=None):
    pods = []
    for i, name in enumerate(names):
        pod = env.api.add_pod(pod_obj(name, container(mem=1000 + i), created=(created or {}).get(name)))
        assert (await env.filter(pod)).node_names == ("n1",)
        pods.append(pod)
    await env.settle()
    return pods


async def test_spec_6_1_bind_writes_phase_and_time_with_the_binding():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    [pod] = await _placed(env, "p")
    assert await env.bind(pod, "n1") == ""
    [(ns, name, node, annotations)] = env.api.bindings
    assert (ns, name, node) == ("default", "p", "n1")
    assert annotations[keys.BIND_PHASE] == "allocating" and annotations[keys.BIND_TIME].isdigit()
    await env.settle()
    assert env.pod(pod)["spec"]["nodeName"] == "n1"
    meta = pod["metadata"]
    assert env.state.tracker.in_handoff("n1") == {meta["uid"]: (meta["creationTimestamp"], "default", "p")}
    assert not any(p[0] == "nodes" for p in env.api.patches)  # no node lock without --compat-node-lock


async def test_many_pods_in_handoff_when_bound_in_creation_order():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu(f"GPU-{i}", index=i, count=10, mem=80000) for i in range(4)]))
    pods = await _placed(env, *[f"p{i}" for i in range(10)])
    for pod in pods:
        assert await env.bind(pod, "n1") == ""
    await env.settle()
    assert len(env.state.tracker.in_handoff("n1")) == 10


async def test_out_of_order_bind_waits_for_the_newer_pods_allocation():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    old, new = await _placed(env, "old", "new")
    assert await env.bind(new, "n1") == ""
    await env.settle()
    waiter = asyncio.create_task(env.bind(old, "n1"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiter.done() and len(env.api.bindings) == 1
    _allocated(env, new)
    assert await asyncio.wait_for(waiter, 2) == ""
    assert [b[1] for b in env.api.bindings] == ["new", "old"]


async def test_handoff_timeout_fails_the_bind_and_releases_the_reservation():
    env = make_env(bind_wait_timeout=0.05)
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    old, new = await _placed(env, "old", "new")
    assert await env.bind(new, "n1") == ""
    await env.settle()
    error = await env.bind(old, "n1")
    assert "newer pod default/new is between bind and Allocate" in error
    uid = old["metadata"]["uid"]
    assert env.state.ledger.pod(uid) is None
    # the pod still carries its annotations: a later watch event must not count it again
    env.api.update_pod("default", "old", {"metadata": {"labels": {"touched": "yes"}}})
    assert env.state.ledger.pod(uid) is None
    # ...until it is filtered again
    _allocated(env, new)
    assert (await env.filter(old)).node_names == ("n1",)
    assert env.state.ledger.pod(uid) is not None


async def test_definite_bind_failure_releases_the_reservation():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    [pod] = await _placed(env, "p")
    env.api.fail_bind = lambda key, node: ApiForbidden("no", status=403)
    error = await env.bind(pod, "n1")
    assert "binding default/p to n1 failed" in error
    assert env.state.ledger.pod(pod["metadata"]["uid"]) is None
    assert env.state.ledger.namespace_usage("default", "NVIDIA") == (0, 0)
    assert env.state.tracker.in_handoff("n1") == {}


async def test_ambiguous_bind_failure_keeps_the_reservation():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    [pod] = await _placed(env, "p")
    env.api.fail_bind = lambda key, node: ApiServiceUnavailable("try later", status=503)
    error = await env.bind(pod, "n1")
    assert "may have failed" in error
    assert env.state.ledger.pod(pod["metadata"]["uid"]).state is PodState.COMMITTED


async def test_retried_bind_of_a_bound_pod_succeeds():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    [pod] = await _placed(env, "p")
    assert await env.bind(pod, "n1") == ""
    await env.settle()
    assert await env.bind(pod, "n1") == ""
    assert "already bound to n1" in await env.bind(pod, "n2")


async def test_uid_and_node_checks():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    env.api.add_node(node_obj("n2", [gpu("GPU-b")]))
    [pod] = await _placed(env, "p")
    error = await env.binder.bind(BindArgs(pod_name="p", pod_namespace="default", pod_uid="other", node="n1"))
    assert "not in the watch cache" in error or "has UID" in error
    error = await env.bind(pod, "n2")
    assert "was placed on n1 by the filter, not on n2" in error
    error = await env.binder.bind(BindArgs(pod_name="ghost", pod_namespace="default", pod_uid="", node="n1"))
    assert "failed to get pod default/ghost" in error


async def test_compat_node_lock_is_tied_to_the_pod_and_released_on_proof():
    env = make_env(compat_node_lock=True, bind_wait_timeout=0.05)
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    first, second = await _placed(env, "first", "second")
    assert await env.bind(first, "n1") == ""
    await env.settle()
    lock = decode_node_lock(env.api.nodes["n1"]["metadata"]["annotations"][keys.NODE_LOCK])
    assert (lock.namespace, lock.name, lock.uid) == ("default", "first", first["metadata"]["uid"])
    # one pod per node between bind and Allocate in compat mode
    assert "one at a time" in await env.bind(second, "n1")
    # the lock is kept while its pod waits, whatever its age ...
    await env.reconciler.sweep()
    assert keys.NODE_LOCK in env.api.nodes["n1"]["metadata"]["annotations"]
    # ... and released once the pod is past Allocate
    _allocated(env, first)
    await env.reconciler.sweep()
    await env.settle()
    assert keys.NODE_LOCK not in env.api.nodes["n1"]["metadata"]["annotations"]
    assert (await env.filter(second)).node_names == ("n1",)
    await env.settle()
    assert await env.bind(second, "n1") == ""


async def test_compat_lock_of_a_deleted_pod_is_taken_over():
    env = make_env(compat_node_lock=True)
    env.api.add_node(
        node_obj("n1", [gpu("GPU-a")], annotations={keys.NODE_LOCK: "2026-01-01T00:00:00Z,default,gone"})
    )
    [pod] = await _placed(env, "p")
    assert await env.bind(pod, "n1") == ""
    await env.settle()
    lock = decode_node_lock(env.api.nodes["n1"]["metadata"]["annotations"][keys.NODE_LOCK])
    assert lock.name == "p"


async def test_reconciler_releases_locks_of_gone_pods_but_not_live_ones():
    env = make_env()
    env.api.add_node(
        node_obj("n1", [gpu("GPU-a")], annotations={keys.NODE_LOCK: "2020-01-01T00:00:00Z,default,gone"})
    )
    await _placed(env, "waiting")
    env.api.update_pod(
        "default",
        "waiting",
        {"spec": {"nodeName": "n2"}, "metadata": {"annotations": {keys.BIND_PHASE: "allocating"}}},
    )
    env.api.add_node(
        node_obj("n2", [gpu("GPU-b")], annotations={keys.NODE_LOCK: "2020-01-01T00:00:00Z,default,waiting"})
    )
    assert await env.reconciler.sweep_locks() == 1
    await env.settle()
    assert keys.NODE_LOCK not in env.api.nodes["n1"]["metadata"]["annotations"]
    assert keys.NODE_LOCK in env.api.nodes["n2"]["metadata"]["annotations"]  # 6 years old, owner still waits


async def test_a_deposed_leader_does_not_bind():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    [pod] = await _placed(env, "p")

    async def fence() -> None:
        raise NotLeader("lease default/hami-scheduler is held by replica-b in term 3, not by us in term 2")

    env.binder.fence = fence
    error = await env.bind(pod, "n1")
    assert error.startswith("not binding default/p: lease default/hami-scheduler is held by replica-b")
    assert env.api.bindings == []
    assert env.state.ledger.pod(pod["metadata"]["uid"]) is None
