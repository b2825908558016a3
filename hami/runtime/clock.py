"""Clocks: one port over the event loop's monotonic time and the wall clock.

Everything that measures durations (lease expiry, backoff reset, inactivity) reads
``Clock.monotonic()``, which defaults to ``loop.time()`` so that fake-time test loops
(looptime) and the real loop agree. Wall-clock readings (``Clock.now()``) are only for
timestamps written to the API (Lease ``renewTime``, Event ``eventTime``), never for
measuring durations: client-go's leader election tolerates skewed clocks but not skewed
clock *rates*, and so do we.

``ManualClock`` is a test fake at this boundary: a test advances it to make a lease look
expired without sleeping (k8s-apis.md §7.2: "advance the candidates' clocks, not edit
renewTime").
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Time source. ``monotonic`` is in seconds, comparable only with itself."""

    def monotonic(self) -> float: ...

    def now(self) -> datetime:
        """Timezone-aware UTC wall-clock time."""
        ...


class LoopClock:
    """The production clock: the running loop's time (falls back to ``time.monotonic``
    outside a loop, e.g. in sync unit tests) and the system's UTC wall clock."""

    __slots__ = ()

    def monotonic(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to, optionally on top of another clock.

    With ``base`` given, readings are ``base`` plus the accumulated offset, so a test can
    keep real time flowing and still jump one participant ahead (a candidate whose clock
    "saw" a lease duration pass). Without ``base`` time stands still until ``advance``.
    """

    __slots__ = ("_base", "_offset", "_start_wall")

    def __init__(self, *, base: Clock | None = None, start: datetime | None = None) -> None:
        self._base = base
        self._offset = 0.0
        self._start_wall = start or datetime(2026, 1, 1, tzinfo=UTC)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds})")
        self._offset += seconds

    def monotonic(self) -> float:
        base = self._base.monotonic() if self._base is not None else 0.0
        return base + self._offset

    def now(self) -> datetime:
        if self._base is not None:
            return self._base.now() + timedelta(seconds=self._offset)
        return self._start_wall + timedelta(seconds=self._offset)
