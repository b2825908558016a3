"""Lease leader election (hami.k8s.lease) against the embedded apiserver."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import pytest

from hami.config.settings import BackoffSettings, LeaderElectionSettings, NetworkingSettings, WatchingSettings
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.k8s.errors import ApiConflict, ApiConnectionError
from hami.k8s.lease import LeaderElector, NotLeader
from hami.k8s.objects import LEASES
from hami.runtime.clock import LoopClock, ManualClock
from hami.simulator.server import ApiServer

LE = LeaderElectionSettings(
    lease_name="hami-scheduler",
    lease_namespace="kube-system",
    lease_duration=1.0,
    renew_deadline=0.6,
    retry_period=0.2,
)
WATCHING = WatchingSettings(
    min_timeout=5, max_timeout=10, backoff=BackoffSettings(initial=0.01, maximum=0.05)
)
NETWORKING = NetworkingSettings(max_retries=0, request_timeout=2.0, connect_timeout=1.0)
MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class Partitionable:
    """The KubeApi port with a switch that makes every new call fail (a network partition)."""

    def __init__(self, inner: HttpKubeApi) -> None:
        self.inner = inner
        self.cut = False

    def __getattr__(self, name: str):
        target = getattr(self.inner, name)
        if name == "watch":
            return target  # an established stream just goes quiet in a real partition

        async def call(*args, **kwargs):
            if self.cut:
                raise ApiConnectionError("partitioned", refused=True)
            return await target(*args, **kwargs)

        return call


class Candidate:
    def __init__(self, api, name: str, *, settings: LeaderElectionSettings = LE, clock=None) -> None:
        self.log: list[tuple[float, str]] = []
        loop = asyncio.get_running_loop()
        self.elector = LeaderElector(
            api,
            settings,
            identity=name,
            watching=WATCHING,
            clock=clock,
            on_started_leading=lambda term: self.log.append((loop.time(), f"started {term}")),
            on_stopped_leading=lambda: self.log.append((loop.time(), "stopped")),
            on_new_leader=lambda who: self.log.append((loop.time(), f"leader {who}")),
        )
        self.task = asyncio.create_task(self.elector.run(), name=f"candidate {name}")

    def when(self, entry: str) -> float:
        return next(t for t, e in self.log if e == entry)

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def sim():
    async with ApiServer.running() as srv:
        yield srv


@pytest.fixture
async def apis(sim):
    clients = [HttpKubeApi(Credentials.anonymous(sim.url), NETWORKING) for _ in range(3)]
    yield clients
    for client in clients:
        await client.close()


async def first_leader(*candidates: Candidate, limit: float = 5.0) -> Candidate:
    async with asyncio.timeout(limit):
        while True:
            leaders = [c for c in candidates if c.elector.is_leader]
            if leaders:
                return leaders[0]
            await asyncio.sleep(0.005)


async def test_two_candidates_elect_exactly_one_leader(apis):
    a, b = Candidate(apis[0], "a"), Candidate(apis[1], "b")
    try:
        leader = await first_leader(a, b)
        follower = b if leader is a else a
        for _ in range(150):  # 1.5 s: several renewals, never two leaders
            assert sum(c.elector.is_leader for c in (a, b)) == 1
            await asyncio.sleep(0.01)
        assert follower.elector.leader == leader.elector.identity
        assert leader.elector.term == 0 and leader.elector.transitions == 1
        assert await leader.elector.verify_term() == 0
        with pytest.raises(NotLeader):
            await follower.elector.verify_term()
        lease = await apis[2].get(LEASES, "hami-scheduler", namespace="kube-system")
        spec = lease["spec"]
        assert spec["holderIdentity"] == leader.elector.identity
        assert spec["leaseDurationSeconds"] == 1 and spec["leaseTransitions"] == 0
        assert MICRO.match(spec["acquireTime"]) and MICRO.match(spec["renewTime"])
        assert spec["renewTime"] > spec["acquireTime"]  # renewed in place
    finally:
        await a.stop()
        await b.stop()


async def test_release_on_cancel_hands_over_at_once(apis):
    a = Candidate(apis[0], "a")
    await first_leader(a)
    b = Candidate(apis[1], "b")
    await asyncio.sleep(0.3)  # b is now a settled follower
    assert not b.elector.is_leader
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await a.stop()
    await first_leader(b, limit=2.0)
    handover = loop.time() - t0
    try:
        assert handover < LE.retry_period, f"handover took {handover:.3f}s"
        assert [e for _, e in a.log] == ["leader a", "started 0", "stopped"]
        assert b.elector.term == 1  # one holder change
        lease = await apis[2].get(LEASES, "hami-scheduler", namespace="kube-system")
        assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    finally:
        await b.stop()
    lease = await apis[2].get(LEASES, "hami-scheduler", namespace="kube-system")
    assert lease["spec"]["holderIdentity"] == "" and lease["spec"]["leaseDurationSeconds"] == 1


async def test_updates_carry_rv_preconditions(apis):
    a = Candidate(apis[0], "a")
    try:
        await first_leader(a)
        stale = await apis[1].get(LEASES, "hami-scheduler", namespace="kube-system")
        await asyncio.sleep(LE.retry_period * 2)  # a renews: the RV moves on
        stale["spec"]["holderIdentity"] = "intruder"
        with pytest.raises(ApiConflict, match="the object has been modified"):
            await apis[1].replace(LEASES, "hami-scheduler", stale, namespace="kube-system")
        assert a.elector.is_leader
    finally:
        await a.stop()


async def test_expiry_is_judged_on_the_followers_clock_not_renew_time(apis):
    long_ago = ManualClock(start=datetime(2020, 1, 1, tzinfo=UTC), base=None)
    crashing = LeaderElectionSettings(
        lease_name=LE.lease_name,
        lease_namespace=LE.lease_namespace,
        lease_duration=LE.lease_duration,
        renew_deadline=LE.renew_deadline,
        retry_period=LE.retry_period,
        release_on_cancel=False,  # a crash: nobody releases
    )
    a = Candidate(apis[0], "a", settings=crashing, clock=ManualClock(base=long_ago))
    await first_leader(a)
    await a.stop()
    lease = await apis[2].get(LEASES, "hami-scheduler", namespace="kube-system")
    assert lease["spec"]["renewTime"].startswith("2020-")  # "expired" six years ago by wall clock

    b_clock = ManualClock(base=LoopClock())
    b = Candidate(apis[1], "b", clock=b_clock)
    try:
        await asyncio.sleep(0.5)
        assert not b.elector.is_leader, "a follower must wait a lease duration from its own observation"
        assert b.elector.leader == "a"
        b_clock.advance(LE.lease_duration)  # b's clock says the lease duration has passed
        leader = await first_leader(b, limit=LE.retry_period * 2.2 + 0.5)
        assert leader is b and b.elector.term == 1
    finally:
        await b.stop()


async def test_a_partitioned_leader_steps_down_before_a_successor_is_elected(apis):
    cut_api = Partitionable(apis[0])
    a = Candidate(cut_api, "a")
    await first_leader(a)
    b = Candidate(apis[1], "b")
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    t_cut = loop.time()
    cut_api.cut = True
    try:
        await first_leader(b, limit=LE.lease_duration + 2.0)
        stepped_down = a.when("stopped")
        took_over = b.when("started 1")
        assert stepped_down < took_over, "two leaders at once"
        assert stepped_down - t_cut <= LE.renew_deadline + LE.retry_period + 0.1
        assert took_over - t_cut <= LE.lease_duration + LE.retry_period * 2.2 + 0.3
        assert not a.elector.is_leader and a.elector.term is None
        with pytest.raises(NotLeader):
            await a.elector.verify_term()
        cut_api.cut = False  # healed: a follows, it does not fight
        await asyncio.sleep(0.5)
        assert b.elector.is_leader and not a.elector.is_leader
        assert await b.elector.verify_term() == 1
    finally:
        await a.stop()
        await b.stop()
