from __future__ import annotations

import asyncio
import logging

import pytest

from hami.runtime.tasks import UnexpectedTaskExit, create_guarded_task, guard, shielded, stop_tasks


async def test_guard_turns_an_unexpected_return_into_an_error(caplog):
    async def returns() -> int:
        return 1

    with caplog.at_level(logging.ERROR), pytest.raises(UnexpectedTaskExit) as err:
        await guard(returns(), name="watch pods")
    assert err.value.name == "watch pods"
    assert "watch pods has finished unexpectedly" in caplog.text


async def test_guard_lets_finishable_tasks_return():
    async def returns() -> int:
        return 7

    assert await guard(returns(), name="one-shot", finishable=True) == 7


async def test_guard_logs_and_reraises_failures(caplog):
    async def fails() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError):
        await guard(fails(), name="renewer")
    assert "renewer has failed" in caplog.text
    assert "boom" in caplog.text  # traceback included


async def test_guard_propagates_cancellation_silently(caplog):
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = create_guarded_task(forever(), name="loop")
    await started.wait()
    task.cancel()
    with caplog.at_level(logging.ERROR), pytest.raises(asyncio.CancelledError):
        await task
    assert caplog.text == ""


async def test_guarded_task_failure_stops_its_task_group():
    async def fails() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("informer broke")

    sibling_cancelled = asyncio.Event()

    async def sibling() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            sibling_cancelled.set()
            raise

    with pytest.raises(ExceptionGroup) as eg:
        async with asyncio.TaskGroup() as tg:
            create_guarded_task(sibling(), name="sibling", tg=tg)
            task = create_guarded_task(fails(), name="failing", tg=tg)
            assert task.get_name() == "failing"
    assert eg.value.subgroup(RuntimeError) is not None
    assert sibling_cancelled.is_set()


async def test_stop_tasks_reports_stuck_tasks_by_name(caplog):
    async def polite() -> None:
        await asyncio.Event().wait()

    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # ignores cancellation on purpose

    loop = asyncio.get_running_loop()
    a = loop.create_task(polite(), name="polite")
    b = loop.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    t0 = loop.time()
    with caplog.at_level(logging.WARNING):
        report = await stop_tasks([a, b], grace=0.1, title="test")
    assert 0.09 <= loop.time() - t0 < 1.0
    assert report.stopped == {"polite"}
    assert report.stuck == {"stubborn"}
    assert "stubborn" in caplog.text
    release.set()
    await b  # it swallowed every cancel, so it ends normally


async def test_stop_tasks_reports_failures_raised_while_stopping():
    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.get_running_loop().create_task(fails_on_cancel(), name="bad-cleanup")
    await asyncio.sleep(0)
    report = await stop_tasks([task], grace=1.0)
    assert report.failed == {"bad-cleanup"}


async def test_shielded_cleanup_survives_repeated_cancellation():
    finished = asyncio.Event()

    async def cleanup() -> str:
        await asyncio.sleep(0.05)
        finished.set()
        return "released"

    async def owner() -> None:
        await shielded(cleanup(), time_limit=5.0, name="release lease")

    task = asyncio.get_running_loop().create_task(owner())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()  # a second Ctrl-C must not abort the cleanup
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


async def test_shielded_returns_the_result_and_bounds_hung_cleanup(caplog):
    async def quick() -> int:
        return 3

    assert await shielded(quick(), time_limit=1.0, name="quick") == 3

    async def hangs() -> None:
        await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with caplog.at_level(logging.WARNING):
        assert await shielded(hangs(), time_limit=0.05, name="hung cleanup") is None
    assert loop.time() - t0 < 1.0
    assert "hung cleanup did not finish" in caplog.text


async def test_shielded_logs_failing_cleanup_instead_of_raising(caplog):
    async def fails() -> None:
        raise OSError("apiserver gone")

    with caplog.at_level(logging.ERROR):
        assert await shielded(fails(), time_limit=1.0, name="unlock") is None
    assert "unlock failed" in caplog.text
