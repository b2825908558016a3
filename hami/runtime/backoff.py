"""Jittered exponential backoff that forgets old failures.

Semantics follow client-go's reflector backoff (``wait.Backoff`` + ``DelayWithReset``):
the n-th consecutive delay is ``min(maximum, initial × factor^n) × (1 + jitter × U)``,
U uniform in [0, 1). When a failure comes more than ``reset_after`` seconds after the
previous one, the sequence starts over: a watch that was healthy for two minutes
reconnects quickly again instead of inheriting a 30 s penalty from last week.

The random source and the clock are injectable so tests get exact, repeatable delays.
"""

from __future__ import annotations

import asyncio
import random

from hami.config.settings import BackoffSettings
from hami.runtime.clock import Clock, LoopClock


class Backoff:
    """Stateful delay sequence. Not shared between independent loops."""

    __slots__ = ("_attempt", "_clock", "_last_failure", "_rng", "settings")

    def __init__(
        self,
        settings: BackoffSettings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock or LoopClock()
        self._rng = rng or random.Random()
        self._attempt = 0
        self._last_failure: float | None = None

    @property
    def attempt(self) -> int:
        """Consecutive failures counted so far (0 after a reset)."""
        return self._attempt

    def reset(self) -> None:
        self._attempt = 0
        self._last_failure = None

    def next_delay(self) -> float:
        """Record one failure and return how long to wait before the next try."""
        s = self.settings
        now = self._clock.monotonic()
        if self._last_failure is not None and now - self._last_failure > s.reset_after:
            self._attempt = 0
        self._last_failure = now
        # The exponent is bounded so a week-long outage cannot overflow a float.
        base = min(s.maximum, s.initial * s.factor ** min(self._attempt, 64))
        self._attempt += 1
        return base * (1.0 + s.jitter * self._rng.random())

    async def sleep(self) -> float:
        """Record one failure and sleep for the resulting delay; returns it."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay
