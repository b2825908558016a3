from __future__ import annotations

import random

import pytest

from hami.config.settings import BackoffSettings
from hami.runtime.backoff import Backoff
from hami.runtime.clock import Clock, LoopClock, ManualClock


class ZeroRandom(random.Random):
    def random(self) -> float:
        return 0.0


class HalfRandom(random.Random):
    def random(self) -> float:
        return 0.5


def test_defaults_are_client_go_reflector_backoff():
    s = BackoffSettings()
    assert (s.initial, s.maximum, s.factor, s.jitter, s.reset_after) == (0.8, 30.0, 2.0, 1.0, 120.0)


def test_delays_double_up_to_the_cap_without_jitter():
    clock = ManualClock()
    b = Backoff(BackoffSettings(), clock=clock, rng=ZeroRandom())
    delays = [b.next_delay() for _ in range(8)]
    assert delays == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert b.attempt == 8


def test_jitter_adds_a_random_fraction_of_the_delay():
    b = Backoff(BackoffSettings(jitter=1.0), clock=ManualClock(), rng=HalfRandom())
    assert b.next_delay() == pytest.approx(0.8 * 1.5)
    assert b.next_delay() == pytest.approx(1.6 * 1.5)


def test_jitter_stays_within_bounds_with_a_real_rng():
    b = Backoff(BackoffSettings(), clock=ManualClock(), rng=random.Random(7))
    for n in range(20):
        base = min(30.0, 0.8 * 2**n)
        assert base <= b.next_delay() < 2 * base


def test_sequence_resets_after_a_healthy_period():
    clock = ManualClock()
    b = Backoff(BackoffSettings(reset_after=120.0), clock=clock, rng=ZeroRandom())
    assert [b.next_delay() for _ in range(3)] == [0.8, 1.6, 3.2]
    clock.advance(119.0)
    assert b.next_delay() == 6.4  # still within the window
    clock.advance(121.0)
    assert b.next_delay() == 0.8  # healthy for longer than reset_after
    b.reset()
    assert b.attempt == 0


def test_a_very_long_outage_does_not_overflow():
    b = Backoff(BackoffSettings(), clock=ManualClock(), rng=ZeroRandom())
    for _ in range(5000):
        delay = b.next_delay()
    assert delay == 30.0


async def test_sleep_waits_the_recorded_delay():
    b = Backoff(BackoffSettings(initial=0.01, maximum=0.01, jitter=0.0))
    assert await b.sleep() == 0.01


async def test_loop_clock_follows_the_loop_time():
    import asyncio

    clock = LoopClock()
    assert isinstance(clock, Clock)
    assert abs(clock.monotonic() - asyncio.get_running_loop().time()) < 0.01
    assert clock.now().tzinfo is not None


def test_manual_clock_moves_only_forward():
    clock = ManualClock()
    t0, w0 = clock.monotonic(), clock.now()
    clock.advance(2.5)
    assert clock.monotonic() == t0 + 2.5
    assert (clock.now() - w0).total_seconds() == 2.5
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_manual_clock_on_top_of_a_base_clock():
    base = ManualClock()
    skewed = ManualClock(base=base)
    base.advance(1.0)
    skewed.advance(10.0)
    assert skewed.monotonic() == 11.0
    assert (skewed.now() - base.now()).total_seconds() == 10.0
