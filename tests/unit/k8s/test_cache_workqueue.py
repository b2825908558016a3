from __future__ import annotations

import asyncio

import pytest

from hami.cache.workqueue import QueueShutDown, WorkQueue
from hami.config.settings import BackoffSettings


async def test_keys_are_deduplicated_while_queued():
    q: WorkQueue[str] = WorkQueue()
    for _ in range(10):
        q.add("ns/a")
    q.add("ns/b")
    assert len(q) == 2
    assert await q.get() == "ns/a"
    assert await q.get() == "ns/b"
    assert len(q) == 0


async def test_a_key_readded_during_processing_is_requeued_at_done():
    q: WorkQueue[str] = WorkQueue()
    q.add("k")
    key = await q.get()
    q.add("k")  # changed while a worker handles it
    q.add("k")
    assert len(q) == 0, "never handed to a second worker concurrently"
    assert q.processing == {"k"}
    q.done(key)
    assert len(q) == 1
    assert await q.get() == "k"
    q.done("k")
    assert len(q) == 0


async def test_getters_wait_for_keys():
    q: WorkQueue[str] = WorkQueue()
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.add("x")
    assert await asyncio.wait_for(getter, 1) == "x"


async def test_a_cancelled_getter_does_not_strand_keys():
    q: WorkQueue[str] = WorkQueue()
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.add("x")
    first.cancel()
    results = await asyncio.gather(first, asyncio.wait_for(second, 1), return_exceptions=True)
    got = [r for r in results if r == "x"]
    assert got == ["x"]


async def test_rate_limited_requeue_grows_per_key_and_forget_resets():
    q: WorkQueue[str] = WorkQueue(
        rate_limit=BackoffSettings(initial=0.01, maximum=0.04, factor=2.0, jitter=0.0)
    )
    assert [q.add_rate_limited("k") for _ in range(4)] == [0.01, 0.02, 0.04, 0.04]
    assert q.num_requeues("k") == 4
    q.forget("k")
    assert q.num_requeues("k") == 0 and q.rate_limit_delay("k") == 0.01
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await asyncio.wait_for(q.get(), 1) == "k"  # the earliest delayed add wins
    assert loop.time() - t0 < 0.04


async def test_add_after_delays():
    q: WorkQueue[str] = WorkQueue()
    q.add_after("k", 0.05)
    assert len(q) == 0
    await asyncio.sleep(0.08)
    assert len(q) == 1


async def test_shutdown_wakes_getters_and_drain_waits_for_workers():
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    key = await q.get()
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.add_after("later", 10)
    q.shut_down()
    with pytest.raises(QueueShutDown):
        await waiter
    q.add("ignored")
    assert len(q) == 0
    drained = asyncio.ensure_future(q.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    q.done(key)
    await asyncio.wait_for(drained, 1)
