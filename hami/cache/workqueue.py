"""A deduplicating keyed work queue with rate-limited requeue (client-go ``workqueue``).

Invariants (``util/workqueue/queue.go``):
* a key is queued at most once (``dirty``): ten updates become one reconcile of the
  latest state, read from the cache by the worker;
* a key is never processed by two workers at once (``processing``): re-adding a key
  while it is being processed marks it dirty, and ``done()`` puts it back in the queue.

Workers loop ``key = await q.get(); try: ... finally: q.done(key)``; on failure
``q.add_rate_limited(key)`` (per-key exponential delay), on success ``q.forget(key)``.
``shut_down()`` wakes every waiting ``get()`` with ``QueueShutDown``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from hami.config.settings import BackoffSettings
from hami.core.errors import HamiError

_logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

DEFAULT_RATE_LIMIT = BackoffSettings(initial=0.005, maximum=1000.0, factor=2.0, jitter=0.0)
"""client-go's ``DefaultItemBasedRateLimiter``: 5 ms doubling up to 1000 s per key."""


class QueueShutDown(HamiError):
    pass


class WorkQueue(Generic[K]):
    """Create inside the running loop (delayed adds use its timers)."""

    def __init__(self, *, name: str = "workqueue", rate_limit: BackoffSettings = DEFAULT_RATE_LIMIT) -> None:
        self.name = name
        self._rate_limit = rate_limit
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down = False
        self._loop = asyncio.get_running_loop()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def processing(self) -> frozenset[K]:
        return frozenset(self._processing)

    def add(self, key: K) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # re-queued by done()
        self._queue.append(key)
        self._wake_one()

    def add_after(self, key: K, delay: float) -> None:
        """Add ``key`` after ``delay`` seconds; an earlier pending delayed add wins."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        existing = self._timers.get(key)
        if existing is not None:
            if existing.when() <= self._loop.time() + delay:
                return
            existing.cancel()
        self._timers[key] = self._loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def rate_limit_delay(self, key: K) -> float:
        """The delay the next ``add_rate_limited(key)`` would use."""
        n = self._failures.get(key, 0)
        s = self._rate_limit
        return min(s.maximum, s.initial * s.factor ** min(n, 64))

    def add_rate_limited(self, key: K) -> float:
        """Requeue after a per-key exponential delay; returns the delay."""
        delay = self.rate_limit_delay(key)
        self._failures[key] = self._failures.get(key, 0) + 1
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """Reset ``key``'s failure count (call after a success)."""
        self._failures.pop(key, None)

    def num_requeues(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> K:
        """The next key, marked as processing. Raises ``QueueShutDown`` once shut down and
        drained of queued keys."""
        while not self._queue:
            if self._shutting_down:
                raise QueueShutDown(f"{self.name} is shut down")
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # Pass our wake-up on to another getter so no queued key is stranded.
                if waiter.done() and not waiter.cancelled() and self._queue:
                    self._wake_one()
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        self._idle.clear()
        return key

    def done(self, key: K) -> None:
        """Finish processing ``key``; if it was re-added meanwhile, queue it again."""
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake_one()
        if not self._processing:
            self._idle.set()

    def shut_down(self) -> None:
        """Stop accepting keys, cancel delayed adds, wake all getters."""
        self._shutting_down = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until no key is being processed (bound it with ``asyncio.timeout``)."""
        await self._idle.wait()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
