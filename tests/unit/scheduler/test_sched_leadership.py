"""Leadership (issue 5): terms on writes, fenced writes, kube-scheduler-following mode, metrics."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sched_fakes import container, gpu, make_env, node_obj, pod_obj

from hami.config.settings import InvalidSetting, LeaderElectionSettings
from hami.core import keys
from hami.k8s.errors import ApiNotFound, ApiTimeoutError
from hami.k8s.lease import NotLeader
from hami.k8s.objects import NODES, PODS
from hami.k8s.patches import merge_patch
from hami.runtime.clock import Clock, LoopClock, ManualClock
from hami.scheduler.fencing import FencedApi, NotLeaderWrite
from hami.scheduler.leadership import (
    AlwaysLeader,
    ElectedLeadership,
    LeadershipCollector,
    LeadershipSnapshot,
    LeaseFollower,
    hostname_of,
)
from hami.scheduler.settings import SchedulerSection

# ----------------------------------------------------------------------------------- fakes


class FakeLeadership:
    """A leadership a test flips: leading in ``term`` since ``since`` (loop time)."""

    def __init__(self, term: int, *, since: float | None = None) -> None:
        self.leading = True
        self._term = term
        self._since = since if since is not None else LoopClock().monotonic() - 1.0
        self.budget = 5.0
        self.fenced = 0

    def new_term(self, term: int) -> None:
        self._term = term
        self._since = LoopClock().monotonic()

    def refusal(self) -> str | None:
        return None if self.leading else "not leader: deposed in this test"

    @property
    def term(self) -> int | None:
        return self._term if self.leading else None

    @property
    def since(self) -> float | None:
        return self._since if self.leading else None

    def write_budget(self) -> float | None:
        if not self.leading:
            raise NotLeader("not leader: deposed in this test")
        return self.budget

    async def fence(self) -> None:
        self.fenced += 1
        if not self.leading:
            raise NotLeader("not leader: deposed in this test")

    def snapshot(self) -> LeadershipSnapshot:
        return LeadershipSnapshot(leading=self.leading, transitions=1, renew_age=0.1, term=self.term)


def elected_env(term: int = 3):
    env = make_env()
    lead = FakeLeadership(term)
    fenced = FencedApi(env.api, lead)  # type: ignore[arg-type]
    env.cycle.api = fenced
    env.cycle.leadership = lead
    env.binder.api = fenced
    env.binder.leadership = lead
    env.binder.fence = lead.fence
    env.binder.decided_at = env.cycle.decided_at
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    return env, lead, fenced


class FakeCandidate:
    def __init__(self) -> None:
        self.identity = "replica-a"
        self.name = "hami-scheduler"
        self.namespace = "kube-system"
        self.is_leader = False
        self.leader: str | None = "replica-b"
        self.term: int | None = None
        self.last_renew: float | None = None
        self.transitions = 0
        self.verified = 0

    async def verify_term(self) -> int:
        self.verified += 1
        assert self.term is not None
        return self.term

    async def run(self) -> None:
        await asyncio.Event().wait()


class Recorder:
    """The writes FencedApi lets through, with the timeout it gave them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    async def patch(self, resource: Any, name: str, patch: Any, **kw: Any) -> dict[str, Any]:
        self.calls.append(("patch", kw.get("request_timeout")))
        return {}

    async def get(self, resource: Any, name: str, **kw: Any) -> dict[str, Any]:
        self.calls.append(("get", kw.get("request_timeout")))
        return {}

    async def bind_pod(self, namespace: str, name: str, node: str, **kw: Any) -> None:
        self.calls.append(("bind", kw.get("request_timeout")))


class LeaseApi:
    """GET of one Lease; the test sets what it holds."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.fail = False
        self.renewals = 0

    def hold(self, holder: str, *, transitions: int = 0, duration: int = 15) -> None:
        self.renewals += 1
        self.lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "hami-scheduler", "namespace": "kube-system"},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": duration,
                "renewTime": f"2026-01-01T00:00:{self.renewals % 60:02d}.000000Z",
                "leaseTransitions": transitions,
            },
        }

    async def get(self, resource: Any, name: str, **kw: Any) -> dict[str, Any]:
        if self.fail:
            raise ApiTimeoutError("GET lease: timed out")
        if self.lease is None:
            raise ApiNotFound('leases "hami-scheduler" not found', status=404)
        return copy.deepcopy(self.lease)


SETTINGS = LeaderElectionSettings(
    enabled=True, lease_name="hami-scheduler", lease_namespace="kube-system"
)  # 15 s / 10 s / 2 s


def follower(api: LeaseApi, clock: Clock, hostname: str = "sched-1", **settings: Any):
    events: list[tuple[str, int | None]] = []
    f = LeaseFollower(
        api,  # type: ignore[arg-type]
        LeaderElectionSettings(
            enabled=True, lease_name="hami-scheduler", lease_namespace="kube-system", **settings
        ),
        hostname=hostname,
        on_started_leading=lambda term: events.append(("started", term)),
        on_stopped_leading=lambda: events.append(("stopped", None)),
        clock=clock,
        watch_lease=False,
    )
    return f, events


# ----------------------------------------------------------------------------------- terms and fencing


async def test_decisions_and_bindings_carry_the_leader_term():
    env, lead, _ = elected_env(term=3)
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    assert (await env.filter(pod)).node_names == ("n1",)
    await env.settle()
    assert env.pod(pod)["metadata"]["annotations"][keys.SCHEDULER_TERM] == "3"
    assert await env.bind(pod, "n1") == ""
    [(_, _, _, annotations)] = env.api.bindings
    assert annotations[keys.SCHEDULER_TERM] == "3"
    assert lead.fenced == 1  # the Lease was re-checked right before the binding


async def test_without_election_nothing_is_stamped():
    env = make_env()
    env.api.add_node(node_obj("n1", [gpu("GPU-a")]))
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    assert (await env.filter(pod)).node_names == ("n1",)
    await env.settle()
    assert keys.SCHEDULER_TERM not in env.pod(pod)["metadata"]["annotations"]
    assert await env.bind(pod, "n1") == ""
    assert keys.SCHEDULER_TERM not in env.api.bindings[0][3]


async def test_a_decision_of_another_term_is_not_bound_until_filtered_again():
    env, lead, _ = elected_env(term=3)
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    assert (await env.filter(pod)).node_names == ("n1",)
    await env.settle()  # the watch confirmed it: no assumption left, the annotation says term 3
    uid = pod["metadata"]["uid"]
    lead.new_term(5)  # this replica lost and won again, or another replica took over
    error = await env.bind(pod, "n1")
    assert error.startswith("not binding default/p: its devices were reserved in leader term '3'")
    assert "this leader's term is 5" in error
    assert env.api.bindings == []
    assert env.state.ledger.pod(uid) is not None  # kept (not voided) until the pod is re-filtered
    assert (await env.filter(pod)).node_names == ("n1",)  # kube-scheduler's retry
    assert await env.bind(pod, "n1") == ""
    assert env.api.bindings[0][3][keys.SCHEDULER_TERM] == "5"


async def test_own_decision_binds_before_the_watch_shows_it():
    env, _, _ = elected_env(term=3)
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    env.api.echo = False  # the watch lags: the cache still shows the pod without the decision
    assert (await env.filter(pod)).node_names == ("n1",)
    assert await env.bind(pod, "n1") == ""


async def test_a_legacy_decision_without_a_term_is_bound():
    env, lead, _ = elected_env(term=3)
    lead.leading = False
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    lead.leading = True
    lead._term = None  # type: ignore[assignment]  # decided by a scheduler without election
    assert (await env.filter(pod)).node_names == ("n1",)
    await env.settle()
    assert keys.SCHEDULER_TERM not in env.pod(pod)["metadata"]["annotations"]
    lead.new_term(4)
    assert await env.bind(pod, "n1") == ""


async def test_a_leader_deposed_during_the_decision_writes_nothing_and_forgets_it():
    env, lead, fenced = elected_env(term=3)
    pod = env.api.add_pod(pod_obj("p", container(mem=1000)))
    prepared = env.cycle.decide(pod, ["n1"])  # decided while leading...
    assert prepared.annotations[keys.SCHEDULER_TERM] == "3"
    lead.leading = False  # ...deposed before the write
    outcome = await env.cycle._persist(prepared, pod)
    assert outcome.error.startswith("PATCH pods/p: NotLeader: not leader")
    assert env.api.patches == [] and fenced.refused == 1
    assert env.state.ledger.pod(pod["metadata"]["uid"]) is None  # the reservation is gone


async def test_fenced_api_bounds_writes_by_the_lease_and_passes_reads():
    rec = Recorder()
    lead = FakeLeadership(1)
    lead.budget = 1.5
    api = FencedApi(rec, lead)  # type: ignore[arg-type]
    await api.patch(NODES, "n1", merge_patch({"metadata": {"annotations": {"a": "b"}}}))
    await api.patch(PODS, "p", merge_patch({}), namespace="d", request_timeout=0.5)
    await api.bind_pod("d", "p", "n1")
    await api.get(PODS, "p", namespace="d")
    assert rec.calls == [("patch", 1.5), ("patch", 0.5), ("bind", 1.5), ("get", None)]
    lead.leading = False
    with pytest.raises(NotLeaderWrite, match="not leader") as info:
        await api.bind_pod("d", "p", "n1")
    assert info.value.reason == "NotLeader" and info.value.method == "POST"
    assert await api.get(PODS, "p", namespace="d") == {}  # followers still read


async def test_node_lock_release_and_handshakes_of_a_follower_are_refused():
    env, lead, fenced = elected_env(term=3)
    env.reconciler.api = fenced
    lead.leading = False
    with pytest.raises(NotLeaderWrite):
        await fenced.patch(NODES, "n1", merge_patch({"metadata": {"annotations": {keys.NODE_LOCK: None}}}))
    assert env.api.patches == []


# ----------------------------------------------------------------------------------- elected leadership


def test_elected_leadership_refuses_and_budgets_from_the_last_renewal():
    clock = ManualClock()
    lost: list[str] = []
    candidate = FakeCandidate()
    lead = ElectedLeadership(
        lambda started, stopped: candidate, renew_deadline=10.0, clock=clock, on_lost=lost.append
    )
    assert lead.refusal() == (
        "not leader: this replica (replica-a) follows the lease kube-system/hami-scheduler; "
        "the leader is replica-b"
    )
    with pytest.raises(NotLeader):
        lead.write_budget()
    candidate.is_leader, candidate.term, candidate.last_renew = True, 7, 0.0
    lead._started(7)
    assert lead.refusal() is None and lead.term == 7 and lead.since == 0.0
    clock.advance(4.0)
    assert lead.write_budget() == 6.0
    assert lead.snapshot() == LeadershipSnapshot(leading=True, transitions=0, renew_age=4.0, term=7)
    clock.advance(6.0)
    with pytest.raises(NotLeader, match="about to step down"):
        lead.write_budget()
    candidate.is_leader = False
    lead._stopped()
    assert lost == ["leadership lost"] and lead.term is None and lead.since is None


async def test_elected_fence_rereads_the_lease():
    candidate = FakeCandidate()
    lead = ElectedLeadership(lambda started, stopped: candidate, renew_deadline=10.0)
    with pytest.raises(NotLeader):
        await lead.fence()
    candidate.is_leader, candidate.term = True, 2
    await lead.fence()
    assert candidate.verified == 1


# ----------------------------------------------------------------------------------- follow kube-scheduler


def test_hostname_of_identity():
    assert hostname_of("sched-1_3f1c6a0e-1111") == "sched-1"
    assert hostname_of("sched-1") == "sched-1"
    with pytest.raises(ValueError, match="hostname"):
        hostname_of("_abc")


def test_follower_leads_only_for_its_own_kube_scheduler():
    clock = ManualClock()
    api = LeaseApi()
    f, events = follower(api, clock)
    api.hold("sched-10_9a7b")  # HAMi 2.8's bare prefix test would take this for sched-1
    f.observe(api.lease)  # type: ignore[arg-type]
    assert not f.is_leader and events == []
    api.hold("sched-1_9a7b", transitions=1)
    f.observe(api.lease)  # type: ignore[arg-type]
    assert f.is_leader and f.term == 1 and events == [("started", 1)]
    api.hold("sched-1", transitions=1)  # the bare hostname is ours too
    f.observe(api.lease)  # type: ignore[arg-type]
    assert f.is_leader and events == [("started", 1)]


def test_follower_steps_down_when_renewals_stop_before_a_successor_may_take_over():
    clock = ManualClock()
    api = LeaseApi()
    f, events = follower(api, clock)
    api.hold("sched-1_a", transitions=4)
    f.observe(api.lease)  # type: ignore[arg-type]
    for _ in range(3):  # kube-scheduler renews every retry period
        clock.advance(2.0)
        api.hold("sched-1_a", transitions=4)
        f.observe(api.lease)  # type: ignore[arg-type]
        assert f.is_leader
    assert f.last_renew == clock.monotonic()
    clock.advance(9.9)  # no renewal seen (the 2.8 quirk kept "leading" here for 15 s)
    assert f.is_leader
    clock.advance(0.2)
    assert not f.is_leader  # the renew deadline (10 s) passed: not a leader even before the next read
    f.observe(api.lease)  # type: ignore[arg-type]
    assert events == [("started", 4), ("stopped", None)]


def test_follower_restarts_its_term_when_kube_scheduler_reacquires_and_stops_on_deletion():
    clock = ManualClock()
    api = LeaseApi()
    f, events = follower(api, clock)
    api.hold("sched-1_a", transitions=2)
    f.observe(api.lease)  # type: ignore[arg-type]
    api.hold("sched-1_b", transitions=3)  # our kube-scheduler restarted and took it again
    f.observe(api.lease)  # type: ignore[arg-type]
    assert events == [("started", 2), ("stopped", None), ("started", 3)] and f.term == 3
    api.hold("sched-2_c", transitions=4)
    f.observe(api.lease)  # type: ignore[arg-type]
    assert not f.is_leader and f.leader == "sched-2_c" and f.term is None
    api.hold("sched-1_b", transitions=5)
    f.observe(api.lease)  # type: ignore[arg-type]
    f.observe(None)  # deleted
    assert events[-2:] == [("started", 5), ("stopped", None)]


async def test_follower_verify_term_rereads_the_lease():
    clock = ManualClock()
    api = LeaseApi()
    f, _ = follower(api, clock)
    api.hold("sched-1_a", transitions=2)
    f.observe(api.lease)  # type: ignore[arg-type]
    assert await f.verify_term() == 2
    api.hold("sched-2_x", transitions=3)
    with pytest.raises(NotLeader, match="held by 'sched-2_x'"):
        await f.verify_term()
    api.fail = True
    with pytest.raises(NotLeader, match="does not hold"):
        await f.verify_term()


async def test_follower_run_polls_and_steps_down_on_its_own_clock():
    api = LeaseApi()
    started, stopped = asyncio.Event(), asyncio.Event()
    f = LeaseFollower(
        api,  # type: ignore[arg-type]
        LeaderElectionSettings(
            enabled=True,
            lease_name="hami-scheduler",
            lease_namespace="kube-system",
            lease_duration=0.6,
            renew_deadline=0.4,
            retry_period=0.05,
        ),
        hostname="sched-1",
        on_started_leading=lambda term: started.set(),
        on_stopped_leading=stopped.set,
        watch_lease=False,  # polling alone (the watch is covered by the HA integration tests)
    )
    task = asyncio.create_task(f.run())
    try:
        api.hold("sched-1_a", transitions=1)
        async with asyncio.timeout(2):
            await started.wait()
        assert f.is_leader and f.term == 1
        api.fail = True  # kube-scheduler (or our view of it) goes silent
        async with asyncio.timeout(2):
            await stopped.wait()
        assert not f.is_leader and f.term is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ----------------------------------------------------------------------------------- metrics and settings


def test_collector_without_election_reports_a_constant_leader():
    registry = CollectorRegistry()
    registry.register(LeadershipCollector(AlwaysLeader()))
    text = generate_latest(registry).decode()
    assert "hami_leader 1.0" in text
    assert "hami_leader_transitions_total 0.0" in text
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert not any(line.startswith("hami_leader_renew_age_seconds") for line in samples)  # never renewed


def test_leader_elect_mode_is_validated():
    assert SchedulerSection(leader_elect_mode="follow-kube-scheduler").leader_elect_mode == (
        "follow-kube-scheduler"
    )
    with pytest.raises(InvalidSetting, match="own or follow-kube-scheduler"):
        SchedulerSection(leader_elect_mode="kube-scheduler")
