"""Leader election on a ``coordination.k8s.io/v1`` Lease (client-go ``tools/leaderelection``).

Algorithm (k8s-apis.md §7.2), with timings from ``LeaderElectionSettings``:

* **acquire**: every ``retry_period`` (jittered up to ×2.2) try ``_try_acquire_or_renew``
  until it succeeds;
* **renew**: every ``retry_period`` renew; if no renewal succeeded for ``renew_deadline``
  (measured from the *start* of the last successful attempt, on our own clock) or the
  Lease shows another holder, leadership is lost and we campaign again;
* ``_try_acquire_or_renew``: fast path PUT of our cached Lease while we hold it; else GET
  (404 → create), note when the record last *changed* on our own monotonic clock, refuse
  while another holder's record is younger than its ``leaseDurationSeconds``, else PUT
  with the fetched resourceVersion (409 = lost the race). ``leaseTransitions`` grows by
  one whenever the holder changes; an empty holder (a released Lease) is free at once;
* **release** on clean shutdown: GET, and if we still hold it, one PUT with holder "",
  duration 1 s, no retry.

Expiry is judged from when *we* observed the record change, never from ``renewTime``, so
clock offsets between replicas do not matter (only clock rates). Records are compared at
full MicroTime precision (client-go compares second-precision times, which would make a
holder renewing several times a second look idle).

Deviations, each for safety: leadership is dropped (``is_leader`` false, callbacks run)
*before* the release PUT, so no write of ours can land after a successor starts; and a
lightweight watch on the Lease wakes the candidates when it is released, so a clean
handover takes one round trip instead of up to 2.2 retry periods.

Fencing: ``term`` is the Lease's ``leaseTransitions`` of our tenure (it changes whenever
someone else takes over); ``verify_term()`` re-reads the Lease before a critical write.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from hami.config.settings import LeaderElectionSettings, WatchingSettings
from hami.core.errors import HamiError
from hami.k8s.api import KubeApi
from hami.k8s.errors import ApiConflict, ApiError, ApiNotFound
from hami.k8s.objects import LEASES, RawLease, RawLeaseSpec, format_micro_time
from hami.k8s.watch import Change, Listed, Reflector
from hami.runtime.clock import Clock, LoopClock
from hami.runtime.tasks import shielded

_logger = logging.getLogger(__name__)

JITTER_FACTOR = 1.2


class NotLeader(HamiError):
    """This replica may not write: it is not (or no longer) the leader of ``term``."""


def default_identity() -> str:
    """``<hostname>_<uuid4>``, the kube-scheduler convention (unique per process)."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderRecord:
    """The Lease spec fields that the algorithm compares, at full precision."""

    holder: str
    duration: int
    acquire_time: str
    renew_time: str
    transitions: int

    @classmethod
    def from_lease(cls, lease: RawLease) -> LeaderRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime") or "",
            renew_time=spec.get("renewTime") or "",
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> RawLeaseSpec:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


Callback0 = Callable[[], object]


class LeaderElector:
    """One candidate. ``await run()`` campaigns until cancelled (then releases)."""

    def __init__(
        self,
        api: KubeApi,
        settings: LeaderElectionSettings,
        *,
        identity: str | None = None,
        on_started_leading: Callable[[int], object] | None = None,
        on_stopped_leading: Callback0 | None = None,
        on_new_leader: Callable[[str], object] | None = None,
        watch_lease: bool = True,
        watching: WatchingSettings | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._api = api
        self.settings = settings
        self.identity = identity or settings.identity or default_identity()
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._watch_lease = watch_lease
        self._watching = watching or WatchingSettings()
        self._clock = clock or LoopClock()
        self._rng = rng or random.Random()
        self._log = logger or _logger
        self._lease: RawLease | None = None  # last Lease we read or wrote
        self._record: LeaderRecord | None = None  # last observed record
        self._observed_at = 0.0  # our monotonic time when the record last changed
        self._last_renew: float | None = None  # monotonic start of the last successful write
        self._wake = asyncio.Event()
        self.leading = asyncio.Event()
        self.term: int | None = None
        self.transitions = 0  # times this candidate became leader

    # ------------------------------------------------------------------ state

    @property
    def name(self) -> str:
        return self.settings.lease_name

    @property
    def namespace(self) -> str:
        return self.settings.lease_namespace

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    @property
    def leader(self) -> str | None:
        """The holder last observed ("" after a release), None before the first read."""
        return self._record.holder if self._record is not None else None

    @property
    def last_renew(self) -> float | None:
        """Monotonic time of our last successful acquire/renew (for a staleness metric)."""
        return self._last_renew

    @property
    def _request_timeout(self) -> float:
        # kube-scheduler gives its lock client an HTTP timeout equal to renewDeadline.
        return self.settings.renew_deadline

    def wake(self) -> None:
        """Try again now instead of at the next retry period (e.g. the Lease was released)."""
        self._wake.set()

    async def verify_term(self) -> int:
        """Fencing check before a critical write: re-read the Lease and raise ``NotLeader``
        unless we still hold it in the same term. Returns the term."""
        term = self.term
        if not self.is_leader or term is None:
            raise NotLeader(f"{self.identity} is not the leader of {self.namespace}/{self.name}")
        try:
            lease = cast(
                RawLease,
                await self._api.get(
                    LEASES, self.name, namespace=self.namespace, request_timeout=self._request_timeout
                ),
            )
        except ApiError as exc:
            raise NotLeader(f"cannot confirm leadership of {self.namespace}/{self.name}: {exc}") from exc
        record = LeaderRecord.from_lease(lease)
        if record.holder != self.identity or record.transitions != term:
            raise NotLeader(
                f"lease {self.namespace}/{self.name} is held by {record.holder!r} in term "
                f"{record.transitions}, not by us in term {term}"
            )
        return term

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        """Campaign, lead, and campaign again after a loss, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(self._watch(), name=f"lease watch {self.namespace}/{self.name}")
            try:
                while True:
                    await self._acquire()
                    self._start_leading()
                    reason = await self._renew()
                    await self._stop_leading(reason, release=False)
            finally:
                if self.is_leader:
                    await self._stop_leading("shutdown", release=self.settings.release_on_cancel)
                watcher.cancel()

    async def _acquire(self) -> None:
        self._log.info("%s: campaigning for lease %s/%s", self.identity, self.namespace, self.name)
        while True:
            self._wake.clear()
            if await self._attempt():
                return
            period = self.settings.retry_period
            delay = period + self._rng.random() * JITTER_FACTOR * period
            await self._wait_wake(delay)

    async def _renew(self) -> str:
        """Renew until it fails for ``renew_deadline``; returns why leadership ended."""
        period = self.settings.retry_period
        while True:
            self._wake.clear()
            await self._wait_wake(period)
            while True:
                assert self._last_renew is not None
                remaining = self._last_renew + self.settings.renew_deadline - self._clock.monotonic()
                if remaining <= 0:
                    return f"could not renew within {self.settings.renew_deadline}s"
                try:
                    async with asyncio.timeout(remaining):
                        ok = await self._attempt()
                except TimeoutError:
                    return f"could not renew within {self.settings.renew_deadline}s"
                if ok:
                    break
                if self._record is not None and self._record.holder not in ("", self.identity):
                    return f"lease taken by {self._record.holder}"
                await asyncio.sleep(min(period, max(0.0, remaining)))

    async def _wait_wake(self, delay: float) -> None:
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass

    # ------------------------------------------------------------------ transitions

    def _start_leading(self) -> None:
        assert self._record is not None
        self.term = self._record.transitions
        self.transitions += 1
        self.leading.set()
        self._log.info(
            "%s: became leader of %s/%s (term %d)", self.identity, self.namespace, self.name, self.term
        )
        self._call(self._on_started, self.term)

    async def _stop_leading(self, reason: str, *, release: bool) -> None:
        self.leading.clear()
        self._log.warning("%s: stopped leading %s/%s: %s", self.identity, self.namespace, self.name, reason)
        self._call(self._on_stopped)
        self.term = None
        if release:
            await shielded(self._release(), time_limit=self.settings.renew_deadline, name="lease release")

    def _call(self, callback: Callable[..., object] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self._log.error("leader election callback %r failed", callback, exc_info=True)

    def _observe(self, lease: RawLease, now: float) -> LeaderRecord:
        record = LeaderRecord.from_lease(lease)
        self._lease = lease
        if record != self._record:
            previous = self._record.holder if self._record is not None else None
            self._record = record
            self._observed_at = now
            if record.holder and record.holder != previous:
                self._log.info("lease %s/%s: new leader %s", self.namespace, self.name, record.holder)
                self._call(self._on_new_leader, record.holder)
        return record

    # ------------------------------------------------------------------ one attempt

    async def _attempt(self) -> bool:
        try:
            return await self._try_acquire_or_renew()
        except ApiError as exc:
            self._log.debug(
                "%s: lease %s/%s attempt failed: %s", self.identity, self.namespace, self.name, exc
            )
            return False

    async def _try_acquire_or_renew(self) -> bool:
        now = self._clock.monotonic()
        stamp = format_micro_time(self._clock.now())
        duration = max(1, math.ceil(self.settings.lease_duration))
        record = self._record
        lease = self._lease

        # Fast path: we hold it and our observation is fresh: PUT our cached copy.
        if (
            lease is not None
            and record is not None
            and record.holder == self.identity
            and self._observed_at + record.duration > now
        ):
            renewed = LeaderRecord(
                holder=self.identity,
                duration=duration,
                acquire_time=record.acquire_time,
                renew_time=stamp,
                transitions=record.transitions,
            )
            try:
                written = await self._put(lease, renewed)
            except ApiError as exc:
                self._log.debug("%s: fast renew failed (%s); re-reading the lease", self.identity, exc)
            else:
                self._observe(written, now)
                self._last_renew = now
                return True

        try:
            lease = cast(
                RawLease,
                await self._api.get(
                    LEASES, self.name, namespace=self.namespace, request_timeout=self._request_timeout
                ),
            )
        except ApiNotFound:
            fresh = LeaderRecord(
                holder=self.identity, duration=duration, acquire_time=stamp, renew_time=stamp, transitions=0
            )
            body: dict[str, Any] = {
                "apiVersion": LEASES.api_version,
                "kind": LEASES.kind,
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": fresh.spec(),
            }
            created = cast(
                RawLease,
                await self._api.create(
                    LEASES, body, namespace=self.namespace, request_timeout=self._request_timeout
                ),
            )
            self._observe(created, now)
            self._last_renew = now
            return True

        current = self._observe(lease, now)
        if current.holder and current.holder != self.identity and self._observed_at + current.duration > now:
            return False
        if current.holder == self.identity:
            desired = LeaderRecord(
                holder=self.identity,
                duration=duration,
                acquire_time=current.acquire_time or stamp,
                renew_time=stamp,
                transitions=current.transitions,
            )
        else:
            desired = LeaderRecord(
                holder=self.identity,
                duration=duration,
                acquire_time=stamp,
                renew_time=stamp,
                transitions=current.transitions + 1,
            )
        try:
            written = await self._put(lease, desired)
        except ApiConflict:
            self._log.debug("%s: lost the race for lease %s/%s", self.identity, self.namespace, self.name)
            return False
        self._observe(written, now)
        self._last_renew = now
        return True

    async def _put(self, lease: RawLease, record: LeaderRecord) -> RawLease:
        meta = lease.get("metadata") or {}
        body: dict[str, Any] = {
            "apiVersion": LEASES.api_version,
            "kind": LEASES.kind,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": meta.get("resourceVersion", ""),
                **({"labels": meta["labels"]} if meta.get("labels") else {}),
                **({"annotations": meta["annotations"]} if meta.get("annotations") else {}),
            },
            "spec": {**(lease.get("spec") or {}), **record.spec()},
        }
        return cast(
            RawLease,
            await self._api.replace(
                LEASES, self.name, body, namespace=self.namespace, request_timeout=self._request_timeout
            ),
        )

    async def _release(self) -> None:
        lease = cast(
            RawLease,
            await self._api.get(
                LEASES, self.name, namespace=self.namespace, request_timeout=self._request_timeout
            ),
        )
        record = LeaderRecord.from_lease(lease)
        if record.holder != self.identity:
            return
        stamp = format_micro_time(self._clock.now())
        released = LeaderRecord(
            holder="", duration=1, acquire_time=stamp, renew_time=stamp, transitions=record.transitions
        )
        try:
            written = await self._put(lease, released)
        except ApiError as exc:
            self._log.warning(
                "%s: could not release lease %s/%s: %s", self.identity, self.namespace, self.name, exc
            )
            return
        self._observe(written, self._clock.monotonic())
        self._log.info("%s: released lease %s/%s", self.identity, self.namespace, self.name)

    # ------------------------------------------------------------------ watch

    async def _watch(self) -> None:
        """Wake the loops when the Lease changes hands or is released."""
        if not self._watch_lease:
            return
        reflector = Reflector(
            self._api,
            LEASES,
            namespace=self.namespace,
            field_selector=f"metadata.name={self.name}",
            settings=self._watching,
            name=f"lease {self.namespace}/{self.name}",
            rng=self._rng,
        )
        try:
            async for event in reflector.events():
                if isinstance(event, Listed):
                    if not event.objects:
                        self.wake()  # no Lease at all: whoever creates it first wins
                    for obj in event.objects:
                        self._on_watched(cast(RawLease, obj), deleted=False)
                elif isinstance(event, Change):
                    self._on_watched(cast(RawLease, event.object), deleted=event.type == "DELETED")
        except asyncio.CancelledError:
            raise
        except Exception:
            # Only a latency optimisation: the polling loop still elects without it.
            self._log.error("lease watch failed; continuing with polling only", exc_info=True)

    def _on_watched(self, lease: RawLease, *, deleted: bool) -> None:
        holder = (lease.get("spec") or {}).get("holderIdentity") or ""
        if deleted or not holder or (holder == self.identity) != self.is_leader:
            self.wake()
