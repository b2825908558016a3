"""Who may decide and write: one replica leads, the others keep warm caches and refuse at once.

Without ``--leader-elect`` this process always leads (HAMi's dummy manager). With it, the
``--leader-elect-mode`` picks how the leader is found, on the Lease ``--leader-elect-resource-name``
in ``--leader-elect-resource-namespace``:

* ``own`` (default): a :class:`~hami.k8s.lease.LeaderElector` campaigns with client-go's
  algorithm (issue 5);
* ``follow-kube-scheduler``: HAMi 2.8's way (hami-scheduler-spec.md §1.3) for charts whose
  kube-scheduler sidecar runs its own election. :class:`LeaseFollower` campaigns for nothing; it
  reads kube-scheduler's Lease every retry period and leads while the holder is the
  kube-scheduler of this pod (``<hostname>_<uuid>``; matched on ``<hostname>_`` exactly, not
  2.8's bare prefix, so ``sched-1`` does not lead when ``sched-10`` holds the Lease) and its
  renewals keep coming.

Followers keep every informer running (pods, nodes with their devices, quotas), so a new leader
serves its first filter from a warm cache without a relist; until then they answer ``/filter``
and ``/bind`` with a "not leader" error at once (never 2.8's hang) and ``/readyz`` with 503.

Fencing, in layers:

* **term**: the Lease's ``leaseTransitions`` when this replica became leader. Every decision
  and binding of the leader carries it in the pod annotation ``hami.io/scheduler-term``, so a
  write of a deposed leader is recognisable, and a leader refuses to bind a pod placed by another
  term (it voids that reservation; kube-scheduler filters the pod again);
* **write budget**: every write (pod patches, bindings, node locks, handshakes; through
  :class:`~hami.scheduler.fencing.FencedApi`) is refused unless this replica leads, and must
  complete before the moment it would step down (last renewal + renew deadline), which comes
  before any successor can be elected (last renewal + lease duration): a write held up in the
  network cannot land under a successor;
* **fence** before each binding: the Lease is re-read (:meth:`ElectedLeadership.fence`);
* on losing the lead, decisions not yet confirmed by the watch are dropped (``on_lost``; the
  watch re-commits those whose write did land).

:class:`LeadershipCollector` exports ``hami_leader``, ``hami_leader_transitions_total`` and
``hami_leader_renew_age_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from hami.config.settings import LeaderElectionSettings, WatchingSettings
from hami.k8s.api import KubeApi
from hami.k8s.errors import ApiError, ApiNotFound
from hami.k8s.lease import LeaderElector, LeaderRecord, NotLeader
from hami.k8s.objects import LEASES, RawLease
from hami.k8s.watch import Change, Listed, Reflector
from hami.metrics.catalog import SCHEDULER_METRICS, MetricSpec
from hami.runtime.clock import Clock, LoopClock

logger = logging.getLogger(__name__)

MIN_WRITE_BUDGET: Final = 0.05
"""Seconds: a write with less time left before a possible step-down is not started."""


class LeaderElectMode(StrEnum):
    OWN = "own"
    FOLLOW_KUBE_SCHEDULER = "follow-kube-scheduler"


class Candidate(Protocol):
    """What leadership needs of an election: :class:`LeaderElector` or :class:`LeaseFollower`."""

    @property
    def identity(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader(self) -> str | None: ...

    @property
    def term(self) -> int | None: ...

    @property
    def last_renew(self) -> float | None: ...

    @property
    def transitions(self) -> int: ...

    async def verify_term(self) -> int: ...

    async def run(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LeadershipSnapshot:
    leading: bool
    transitions: int  # times this replica became leader
    renew_age: float | None  # seconds since the leadership was last confirmed (None: never)
    term: int | None


class Leadership(Protocol):
    def refusal(self) -> str | None:
        """None while this replica may decide and write, else why not."""
        ...

    @property
    def term(self) -> int | None:
        """The term stamped on writes (None: no election)."""
        ...

    @property
    def since(self) -> float | None:
        """Monotonic time (the role's clock) when the current term began; None when not elected."""
        ...

    def write_budget(self) -> float | None:
        """Seconds a write started now may take (None: unbounded); raises NotLeader."""
        ...

    async def fence(self) -> None:
        """Raise NotLeader unless this replica still leads (checked against the API)."""
        ...

    def snapshot(self) -> LeadershipSnapshot: ...


class AlwaysLeader:
    term: int | None = None
    since: float | None = None

    def refusal(self) -> str | None:
        return None

    def write_budget(self) -> float | None:
        return None

    async def fence(self) -> None:
        return None

    def snapshot(self) -> LeadershipSnapshot:
        return LeadershipSnapshot(leading=True, transitions=0, renew_age=None, term=None)


StartedCallback = Callable[[int], None]
StoppedCallback = Callable[[], None]
CandidateFactory = Callable[[StartedCallback, StoppedCallback], Candidate]


class ElectedLeadership:
    """Leadership by a Lease; ``candidate.run()`` must run for it to change."""

    def __init__(
        self,
        factory: CandidateFactory,
        *,
        renew_deadline: float,
        clock: Clock | None = None,
        on_lost: Callable[[str], object] | None = None,
    ) -> None:
        self.clock = clock or LoopClock()
        self.renew_deadline = renew_deadline
        self._on_lost = on_lost
        self._since: float | None = None
        self.candidate = factory(self._started, self._stopped)

    @classmethod
    def build(
        cls,
        api: KubeApi,
        settings: LeaderElectionSettings,
        mode: LeaderElectMode,
        *,
        identity: str | None = None,
        clock: Clock | None = None,
        watching: WatchingSettings | None = None,
        on_lost: Callable[[str], object] | None = None,
    ) -> ElectedLeadership:
        clock = clock or LoopClock()

        def own(started: StartedCallback, stopped: StoppedCallback) -> Candidate:
            return LeaderElector(
                api,
                settings,
                identity=identity,
                on_started_leading=started,
                on_stopped_leading=stopped,
                watching=watching,
                clock=clock,
            )

        def follow(started: StartedCallback, stopped: StoppedCallback) -> Candidate:
            return LeaseFollower(
                api,
                settings,
                hostname=identity or settings.identity,
                on_started_leading=started,
                on_stopped_leading=stopped,
                clock=clock,
                watching=watching,
            )

        factory = own if mode is LeaderElectMode.OWN else follow
        return cls(factory, renew_deadline=settings.renew_deadline, clock=clock, on_lost=on_lost)

    def _started(self, term: int) -> None:
        self._since = self.clock.monotonic()

    def _stopped(self) -> None:
        self._since = None
        if self._on_lost is not None:
            self._on_lost("leadership lost")

    @property
    def term(self) -> int | None:
        return self.candidate.term if self.candidate.is_leader else None

    @property
    def since(self) -> float | None:
        return self._since if self.candidate.is_leader else None

    def refusal(self) -> str | None:
        c = self.candidate
        if c.is_leader:
            return None
        leader = c.leader
        who = f"the leader is {leader}" if leader else "no leader is known yet"
        return f"not leader: this replica ({c.identity}) follows the lease {c.namespace}/{c.name}; {who}"

    def write_budget(self) -> float | None:
        c = self.candidate
        last = c.last_renew
        if not c.is_leader or last is None:
            raise NotLeader(self.refusal() or "not leader")
        budget = last + self.renew_deadline - self.clock.monotonic()
        if budget < MIN_WRITE_BUDGET:
            raise NotLeader(
                f"not leader: the lease {c.namespace}/{c.name} was last confirmed "
                f"{self.clock.monotonic() - last:.1f}s ago; this replica is about to step down"
            )
        return budget

    async def fence(self) -> None:
        if not self.candidate.is_leader:
            raise NotLeader(self.refusal() or "not leader")
        await self.candidate.verify_term()

    def snapshot(self) -> LeadershipSnapshot:
        c = self.candidate
        last = c.last_renew
        return LeadershipSnapshot(
            leading=c.is_leader,
            transitions=c.transitions,
            renew_age=None if last is None else max(0.0, self.clock.monotonic() - last),
            term=self.term,
        )


# ----------------------------------------------------------------------------------- follow mode


def hostname_of(identity: str | None) -> str:
    """The host part of an identity (``<hostname>_<uuid>``; hostnames never contain ``_``)."""
    host = (identity or socket.gethostname()).split("_", 1)[0]
    if not host:
        raise ValueError(f"cannot tell a hostname from the identity {identity!r}")
    return host


class LeaseFollower:
    """Leads while kube-scheduler of this pod holds its Lease (``--leader-elect-mode
    follow-kube-scheduler``); never writes the Lease.

    Expiry is judged on our clock from when we last saw the record change (a renewal), as the
    candidates do; we stop leading ``renew_deadline`` after the last renewal we saw (kube-scheduler
    itself stops renewing-or-leading there), before any successor may take over.
    """

    def __init__(
        self,
        api: KubeApi,
        settings: LeaderElectionSettings,
        *,
        hostname: str | None = None,
        on_started_leading: StartedCallback | None = None,
        on_stopped_leading: StoppedCallback | None = None,
        clock: Clock | None = None,
        watch_lease: bool = True,
        watching: WatchingSettings | None = None,
    ) -> None:
        self._api = api
        self.settings = settings
        self._watch_lease = watch_lease
        self._watching = watching or WatchingSettings()
        self.hostname = hostname_of(hostname)
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._clock = clock or LoopClock()
        self._record: LeaderRecord | None = None
        self._observed_at = 0.0
        self._leading = False
        self._wake = asyncio.Event()
        self.term: int | None = None
        self.transitions = 0

    @property
    def identity(self) -> str:
        return self.hostname

    @property
    def name(self) -> str:
        return self.settings.lease_name

    @property
    def namespace(self) -> str:
        return self.settings.lease_namespace

    def holds(self, holder: str) -> bool:
        """Whether ``holder`` is this pod's kube-scheduler (``<hostname>`` or ``<hostname>_...``)."""
        return holder == self.hostname or holder.startswith(self.hostname + "_")

    def _deadline(self) -> float | None:
        record = self._record
        if record is None or not record.holder or not self.holds(record.holder):
            return None
        duration = record.duration or self.settings.lease_duration
        return self._observed_at + min(duration, self.settings.renew_deadline)

    @property
    def is_leader(self) -> bool:
        deadline = self._deadline()
        return self._leading and deadline is not None and self._clock.monotonic() < deadline

    @property
    def leader(self) -> str | None:
        return self._record.holder if self._record is not None else None

    @property
    def last_renew(self) -> float | None:
        return self._observed_at if self._leading else None

    def observe(self, lease: RawLease | None) -> None:
        """Take in a read of the Lease (None: it does not exist) and update leadership."""
        now = self._clock.monotonic()
        record = LeaderRecord.from_lease(lease) if lease is not None else None
        if record != self._record:
            if record is not None and (self._record is None or record.holder != self._record.holder):
                logger.info("lease %s/%s: held by %r", self.namespace, self.name, record.holder)
            self._record = record
            self._observed_at = now
        self._evaluate(now)

    def _evaluate(self, now: float) -> None:
        deadline = self._deadline()
        record = self._record
        should = record is not None and deadline is not None and now < deadline
        if self._leading and (not should or (record is not None and record.transitions != self.term)):
            self._leading = False
            logger.warning(
                "%s: stopped leading (lease %s/%s held by %r, term %s)",
                self.hostname,
                self.namespace,
                self.name,
                record.holder if record is not None else None,
                record.transitions if record is not None else None,
            )
            self.term = None
            self._call(self._on_stopped)
        if should and not self._leading:
            assert record is not None
            self.term = record.transitions
            self._leading = True
            self.transitions += 1
            logger.info(
                "%s: leading: kube-scheduler %s holds lease %s/%s (term %d)",
                self.hostname,
                record.holder,
                self.namespace,
                self.name,
                record.transitions,
            )
            self._call(self._on_started, record.transitions)

    def _call(self, callback: Callable[..., object] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.error("leadership callback %r failed", callback, exc_info=True)

    async def _read(self) -> RawLease | None:
        try:
            return cast(
                RawLease,
                await self._api.get(
                    LEASES, self.name, namespace=self.namespace, request_timeout=self.settings.renew_deadline
                ),
            )
        except ApiNotFound:
            return None

    async def verify_term(self) -> int:
        term = self.term
        if not self.is_leader or term is None:
            raise NotLeader(f"{self.hostname} does not hold {self.namespace}/{self.name}")
        try:
            lease = await self._read()
        except ApiError as exc:
            raise NotLeader(f"cannot confirm leadership of {self.namespace}/{self.name}: {exc}") from exc
        self.observe(lease)
        if not self.is_leader or self.term != term:
            holder = self._record.holder if self._record is not None else None
            raise NotLeader(
                f"lease {self.namespace}/{self.name} is held by {holder!r}, not by this pod's "
                f"kube-scheduler in term {term}"
            )
        return term

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        logger.info("%s: following kube-scheduler's lease %s/%s", self.hostname, self.namespace, self.name)
        try:
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(self._watch(), name=f"lease watch {self.namespace}/{self.name}")
                try:
                    await self._poll()
                finally:
                    watcher.cancel()
        finally:
            if self._leading:
                self._leading = False
                self.term = None
                self._call(self._on_stopped)

    async def _poll(self) -> None:
        """Read the Lease every retry period (and at our deadline): the watch may lag or break."""
        while True:
            self._wake.clear()
            try:
                self.observe(await self._read())
            except ApiError as exc:
                logger.debug("lease %s/%s: read failed: %s", self.namespace, self.name, exc)
                self._evaluate(self._clock.monotonic())
            delay = self.settings.retry_period
            deadline = self._deadline()
            if self._leading and deadline is not None:
                delay = max(0.0, min(delay, deadline - self._clock.monotonic()))
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _watch(self) -> None:
        """Observe every change at once (a holder change, a release), as 2.8's informer does."""
        if not self._watch_lease:
            return
        reflector = Reflector(
            self._api,
            LEASES,
            namespace=self.namespace,
            field_selector=f"metadata.name={self.name}",
            settings=self._watching,
            name=f"lease {self.namespace}/{self.name}",
        )
        try:
            async for event in reflector.events():
                if isinstance(event, Listed):
                    self.observe(cast(RawLease, event.objects[0]) if event.objects else None)
                elif isinstance(event, Change):
                    self.observe(None if event.type == "DELETED" else cast(RawLease, event.object))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.error("lease watch failed; following by polling only", exc_info=True)


# ----------------------------------------------------------------------------------- metrics


def _spec(name: str) -> MetricSpec:
    return next(s for s in SCHEDULER_METRICS if s.name == name)


LEADER: Final = _spec("hami_leader")
LEADER_TRANSITIONS: Final = _spec("hami_leader_transitions_total")
LEADER_RENEW_AGE: Final = _spec("hami_leader_renew_age_seconds")


class SnapshotSource(Protocol):
    def snapshot(self) -> LeadershipSnapshot: ...


class LeadershipCollector:
    """Scrape-time view of :meth:`Leadership.snapshot` (no state is set by handlers)."""

    def __init__(self, leadership: SnapshotSource) -> None:
        self._leadership = leadership

    def _families(self, snapshot: LeadershipSnapshot | None) -> list[Metric]:
        leader = GaugeMetricFamily(LEADER.name, LEADER.help)
        transitions = CounterMetricFamily(
            LEADER_TRANSITIONS.name.removesuffix("_total"), LEADER_TRANSITIONS.help
        )
        age = GaugeMetricFamily(LEADER_RENEW_AGE.name, LEADER_RENEW_AGE.help)
        if snapshot is not None:
            leader.add_metric([], 1.0 if snapshot.leading else 0.0)
            transitions.add_metric([], float(snapshot.transitions))
            if snapshot.renew_age is not None and math.isfinite(snapshot.renew_age):
                age.add_metric([], snapshot.renew_age)
        return [leader, transitions, age]

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        try:
            snapshot = self._leadership.snapshot()
        except Exception:
            logger.exception("leadership snapshot failed; this scrape has no leader samples")
            return self._families(None)
        return self._families(snapshot)
