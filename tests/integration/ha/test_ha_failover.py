"""Three ``hami scheduler`` replicas (subprocesses) on one Lease: one leads, failovers lose nothing.

See ha_harness.py for how kube-scheduler reaches the ready replica (a Service) and how a replica's
network to the apiserver is partitioned. ``HAMI_HA_PODS=200`` runs the issue's full pod stream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from ha_harness import (
    LEASE_DURATION,
    RENEW_DEADLINE,
    RETRY_PERIOD,
    WRITE_METHODS,
    HaCluster,
    Replica,
    allocation_problems,
    bound,
    ha_cluster,
    ha_pod,
    memory_per_pod,
    pod_count,
    until,
)

from hami.core import keys

pytestmark = pytest.mark.slow

FAILOVER_SLACK = 2.0  # the bound: a follower leads within leaseDuration + 2 s


async def create_pods(h: HaCluster, count: int, gpumem: int, *, first: int = 0, rate: float = 25.0) -> None:
    """A steady stream of pods (kube-scheduler keeps scheduling while replicas come and go)."""
    for i in range(first, first + count):
        await h.cluster.create_pod(ha_pod(i, gpumem))
        await asyncio.sleep(1.0 / rate)


def terms_of(pods: list[dict[str, Any]]) -> set[str | None]:
    """The leader terms stamped on the pods' decisions and bindings."""
    return {p["metadata"]["annotations"].get(keys.SCHEDULER_TERM) for p in pods}


async def bound_count(h: HaCluster) -> int:
    return len(bound(await h.pods()))


async def wait_bound(h: HaCluster, count: int, *, within: float) -> None:
    deadline = time.monotonic() + within
    while (n := await bound_count(h)) < count:
        if time.monotonic() > deadline:
            pending = sorted(p["metadata"]["name"] for p in await h.pods() if not p["spec"].get("nodeName"))
            raise TimeoutError(f"{n}/{count} pods bound after {within}s; pending: {pending[:20]}")
        await asyncio.sleep(0.2)


async def assert_one_leader(h: HaCluster, leader: Replica) -> None:
    """Sampled over two retry periods: never two ready replicas, the ready one holds the Lease, and
    ``leader`` leads throughout unless the Lease moved meanwhile (a loaded CI host can delay a
    renewal past the 2 s deadline; that is a failover, not a second leader)."""
    started = time.monotonic()
    for _ in range(4):
        before = h.lease.current
        ready = [r.name for r in await h.ready()]
        await asyncio.sleep(0.06)  # one lease poll later
        after = h.lease.current
        assert len(ready) <= 1, ready
        holders = {v.holder for v in (before, after) if v is not None}
        assert set(ready) <= holders, (ready, holders)
        await asyncio.sleep(RETRY_PERIOD / 2)
    moved = h.lease.first_after(started, lambda v: v.holder != leader.name)
    if moved is None:
        assert [r.name for r in await h.ready()] == [leader.name]


async def test_one_leader_sigkill_loses_no_pod_and_sigterm_hands_over() -> None:
    total = pod_count()
    async with ha_cluster() as h:
        leader = await h.wait_leader()
        followers = [r for r in h.replicas if r is not leader]
        for follower in followers:
            await h.wait_following(follower)
        await assert_one_leader(h, leader)

        metrics = {r.name: await r.metrics(h.session) for r in h.replicas}
        assert metrics[leader.name]["hami_leader"] == 1.0
        assert 0.0 <= metrics[leader.name]["hami_leader_renew_age_seconds"] < RENEW_DEADLINE
        for replica in h.replicas:  # every time a replica took the Lease, and only then
            terms = sum(1 for v in h.lease.history if v.holder == replica.name)
            assert metrics[replica.name]["hami_leader_transitions_total"] == terms
        for follower in followers:
            assert metrics[follower.name]["hami_leader"] == 0.0

        # A follower refuses at once, naming the leader, and drops the (kept-alive) connection.
        started = time.monotonic()
        probe = {"Pod": ha_pod(999, 100), "NodeNames": ["node-1"]}
        async with h.session.post(f"{followers[0].url}/filter", json=probe) as r:
            body = await r.json()
            assert r.headers.get("Connection", "").lower() == "close"
        assert time.monotonic() - started < 1.0
        assert body["Error"].startswith(f"not leader: this replica ({followers[0].name})")
        assert leader.name in body["Error"]
        async with h.session.post(
            f"{followers[0].url}/bind", json={"PodName": "x", "PodNamespace": "default", "Node": "node-1"}
        ) as r:
            assert (await r.json())["Error"].startswith("not leader")

        # SIGKILL the leader in the middle of a stream of pods.
        old_term = h.lease.current.transitions if h.lease.current else -1
        gpumem = memory_per_pod(total, len(h.cluster.nodes))
        stream = asyncio.create_task(create_pods(h, total, gpumem))
        await wait_bound(h, max(2, total // 4), within=60)
        killed_at = time.monotonic()
        leader.kill()
        await leader.wait()
        successor = await h.wait_leader(exclude={leader.name}, within=LEASE_DURATION + 15)
        took_over = h.lease.first_after(killed_at, lambda v: v.holder not in ("", leader.name))
        assert took_over is not None and took_over.holder == successor.name
        print(f"SIGKILL: {took_over.holder} leads {took_over.at - killed_at:.2f}s after the kill")
        assert took_over.at - killed_at <= LEASE_DURATION + FAILOVER_SLACK, h.lease.history
        assert took_over.transitions == old_term + 1
        await stream
        await wait_bound(h, total, within=90)

        pods, nodes = await h.pods(), await h.nodes()
        assert allocation_problems(pods, nodes) == []
        assert terms_of(pods) <= {str(v.transitions) for v in h.lease.history}, h.lease.history
        assert str(took_over.transitions) in terms_of(pods)
        # Its caches were warm: the new leader listed pods, nodes and quotas once, at its start.
        for resource in ("pods", "nodes", "resourcequotas"):
            assert len(successor.link.lists(resource)) == 1, (resource, successor.link.lists(resource))
        metrics = await successor.metrics(h.session)
        assert metrics["hami_leader_transitions_total"] >= 1.0

        # A clean SIGTERM releases the Lease; the last follower takes it within one retry period.
        current = await h.wait_leader(exclude={leader.name})
        (last,) = [r for r in h.replicas if r not in (leader, current)]
        await h.wait_following(last)
        terminated_at = time.monotonic()
        current.terminate()
        assert await current.wait() == 0
        await until(
            lambda: h.lease.first_after(terminated_at, lambda v: v.holder == last.name) is not None,
            within=LEASE_DURATION,
            what="hand-over after SIGTERM",
        )
        handed = h.lease.first_after(terminated_at, lambda v: v.holder == last.name)
        released = h.lease.first_after(terminated_at, lambda v: v.holder == "")
        assert handed is not None
        freed_at = released.at if released is not None else handed.at
        print(
            f"SIGTERM: released after {freed_at - terminated_at:.2f}s, "
            f"taken {handed.at - freed_at:.2f}s after the release"
        )
        assert handed.at - freed_at <= RETRY_PERIOD, h.lease.history
        assert handed.at - terminated_at <= RETRY_PERIOD + 1.0, (handed.at - terminated_at, h.lease.history)
        await h.wait_leader(exclude={leader.name, current.name}, within=5)
        await create_pods(h, 3, gpumem, first=total)
        await wait_bound(h, total + 3, within=30)
        assert allocation_problems(await h.pods(), await h.nodes()) == []


async def test_partitioned_leader_steps_down_before_a_successor_and_writes_nothing_after() -> None:
    total = max(12, pod_count() // 2)
    async with ha_cluster() as h:
        leader = await h.wait_leader()
        followers = [r for r in h.replicas if r is not leader]
        for follower in followers:
            await h.wait_following(follower)
        old_term = h.lease.current.transitions if h.lease.current else -1
        gpumem = memory_per_pod(total, len(h.cluster.nodes))
        stream = asyncio.create_task(create_pods(h, total, gpumem, rate=10))
        await wait_bound(h, max(2, total // 4), within=60)

        # The leader's API calls now all fail (time out) for longer than the renew deadline.
        partitioned_at = time.monotonic()
        leader.link.partition()
        stepped_down_at: float | None = None
        while stepped_down_at is None:
            status, _ = await leader.readyz(h.session)  # the test reaches it directly, not through the API
            if status != 200:
                stepped_down_at = time.monotonic()
            elif time.monotonic() - partitioned_at > RENEW_DEADLINE + 3.0:
                raise AssertionError("the partitioned leader did not step down")
            else:
                await asyncio.sleep(0.02)
        successor = await h.wait_leader(exclude={leader.name}, within=LEASE_DURATION + 10)
        took_over = h.lease.first_after(partitioned_at, lambda v: v.holder not in ("", leader.name))
        assert took_over is not None and took_over.holder == successor.name
        print(
            f"partition: stepped down after {stepped_down_at - partitioned_at:.2f}s, "
            f"{successor.name} leads after {took_over.at - partitioned_at:.2f}s"
        )
        # It stepped down (renew deadline after its last renewal) before a successor could be elected.
        assert stepped_down_at - partitioned_at <= RENEW_DEADLINE + 0.5
        assert stepped_down_at < took_over.at
        assert took_over.at - partitioned_at <= LEASE_DURATION + FAILOVER_SLACK
        assert took_over.transitions == old_term + 1
        metrics = await leader.metrics(h.session)  # the metrics port is not behind the partition
        assert metrics["hami_leader"] == 0.0

        await stream
        await wait_bound(h, total, within=90)
        leader.link.heal()
        healed_at = time.monotonic()
        await h.wait_following(leader, within=10)  # back as a warm follower
        await asyncio.sleep(2 * RETRY_PERIOD)
        await assert_one_leader(h, successor)

        # Nothing the old leader sent during the partition reached the apiserver as a write (Events
        # aside: they record, decide nothing, and are not fenced): what it tried was bounded by its
        # lease and given up (lost) before the heal. Until it wins the Lease again (a later
        # election, if any), it writes no pod, binding or node (it may campaign).
        # Lease writes are excluded: every one carries the resourceVersion it read, so a campaign
        # request that outlived the partition (its client gave up, the proxy delivered it anyway
        # on a loaded host) can only be refused with 409, never overwrite the successor's term.
        late = [
            f
            for f in leader.link.held
            if f.method in WRITE_METHODS and f.resource not in ("events", "leases")
        ]
        assert late == [], [(f.method, f.resource, round(f.at - partitioned_at, 2)) for f in late]
        regained = h.lease.first_after(partitioned_at, lambda v: v.holder == leader.name)
        until_regained = regained.at if regained is not None else float("inf")
        decisions = leader.link.writes(partitioned_at, resources=("pods", "pods/binding", "nodes"))
        writes = [f for f in decisions if f.at < until_regained]
        assert writes == [], (
            [(f.method, f.resource, round(f.at - partitioned_at, 2)) for f in writes],
            f"healed at +{healed_at - partitioned_at:.2f}s",
            h.lease.history,
        )
        tried = {(f.method, f.resource) for f in leader.link.lost}
        print(f"partition: lost requests of the old leader: {sorted(tried)}")
        assert ("PUT", "leases") in tried  # it did try to renew, and those attempts were lost
        pods, nodes = await h.pods(), await h.nodes()
        assert allocation_problems(pods, nodes) == []
        assert terms_of(pods) <= {str(v.transitions) for v in h.lease.history}, h.lease.history
