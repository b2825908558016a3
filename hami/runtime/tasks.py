"""Supervised tasks: guarded eternal tasks, bounded stop, shielded cleanup.

Rules (style guide §3.6): every long-lived coroutine is named and lives in a TaskGroup;
an eternal task that returns is a bug and is reported as one; cancellation is never
swallowed; cleanup is bounded in time and survives a second cancel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from hami.core.errors import HamiError

T = TypeVar("T")

_logger = logging.getLogger(__name__)


class UnexpectedTaskExit(HamiError):
    """An eternal task returned. Raised inside the task so its TaskGroup stops the role."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"{name} has finished unexpectedly")


async def guard(
    coro: Awaitable[T],
    *,
    name: str,
    finishable: bool = False,
    logger: logging.Logger | None = None,
) -> T:
    """Await ``coro`` and report how it ended, with the task's name.

    A failure is logged ("has failed", with traceback) and re-raised. Returning normally
    is logged and turned into ``UnexpectedTaskExit`` unless ``finishable``: an eternal loop
    that ends silently is how informers stop updating without anyone noticing.
    """
    log = logger or _logger
    try:
        result = await coro
    except asyncio.CancelledError:
        log.debug("%s is cancelled", name)
        raise
    except Exception:
        log.error("%s has failed", name, exc_info=True)
        raise
    if not finishable:
        log.error("%s has finished unexpectedly", name)
        raise UnexpectedTaskExit(name)
    log.debug("%s has finished", name)
    return result


def create_guarded_task(
    coro: Coroutine[Any, Any, T],
    *,
    name: str,
    tg: asyncio.TaskGroup | None = None,
    finishable: bool = False,
    logger: logging.Logger | None = None,
) -> asyncio.Task[T]:
    """Start ``coro`` under ``guard`` in ``tg`` (preferred) or on the running loop.

    Without a TaskGroup the caller owns the returned task and must ``stop_tasks`` it.
    """
    guarded = guard(coro, name=name, finishable=finishable, logger=logger)
    if tg is not None:
        return tg.create_task(guarded, name=name)
    return asyncio.get_running_loop().create_task(guarded, name=name)


async def _wait_until(tasks: Iterable[asyncio.Future[Any]], deadline: float) -> tuple[set[Any], bool]:
    """Wait for ``tasks`` until ``deadline`` (loop time) even if we get cancelled meanwhile.

    Returns the still-pending tasks and whether the caller was cancelled; the caller must
    re-raise ``CancelledError`` after its cleanup if so. ``asyncio.wait`` never cancels what
    it waits for, so an outer cancel only interrupts the waiting, not the cleanup itself.
    """
    loop = asyncio.get_running_loop()
    pending: set[Any] = {t for t in tasks if not t.done()}
    cancelled = False
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            _, pending = await asyncio.wait(pending, timeout=remaining)
        except asyncio.CancelledError:
            cancelled = True
    return pending, cancelled


@dataclass(frozen=True, slots=True, kw_only=True)
class StopReport:
    stopped: frozenset[str]
    stuck: frozenset[str]
    failed: frozenset[str]


async def stop_tasks(
    tasks: Iterable[asyncio.Task[Any]],
    *,
    grace: float,
    title: str = "tasks",
    logger: logging.Logger | None = None,
) -> StopReport:
    """Cancel ``tasks`` and wait up to ``grace`` s for them; report the stuck ones by name.

    Survives (and afterwards re-raises) cancellation of the caller, so a second Ctrl-C
    does not abandon the bounded wait halfway.
    """
    log = logger or _logger
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    deadline = asyncio.get_running_loop().time() + grace
    pending, cancelled = await _wait_until(tasks, deadline)
    failed: set[str] = set()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            failed.add(task.get_name())
            log.error("%s: %s failed while stopping", title, task.get_name(), exc_info=task.exception())
    stuck = frozenset(t.get_name() for t in pending)
    if stuck:
        log.warning(
            "%s: %d did not stop within %.1fs: %s", title, len(stuck), grace, ", ".join(sorted(stuck))
        )
    report = StopReport(
        stopped=frozenset(t.get_name() for t in tasks if t.done()) - failed,
        stuck=stuck,
        failed=frozenset(failed),
    )
    if cancelled:
        raise asyncio.CancelledError()
    return report


async def shielded(
    coro: Coroutine[Any, Any, T],
    *,
    time_limit: float,
    name: str,
    logger: logging.Logger | None = None,
) -> T | None:
    """Run cleanup ``coro`` to completion or ``time_limit`` s, whatever happens to the caller.

    Returns the result, or ``None`` when it timed out or failed (logged: cleanup must not
    raise over the error that triggered it). If the caller was cancelled meanwhile,
    ``CancelledError`` is re-raised once the cleanup has ended.
    """
    log = logger or _logger
    task = asyncio.get_running_loop().create_task(coro, name=name)
    deadline = asyncio.get_running_loop().time() + time_limit
    pending, cancelled = await _wait_until([task], deadline)
    result: T | None = None
    if pending:
        log.warning("%s did not finish within %.1fs; abandoning it", name, time_limit)
        task.cancel()
        # Give it one loop turn to run its own finally blocks; never wait unboundedly.
        _, again = await _wait_until([task], asyncio.get_running_loop().time() + 0.1)
        cancelled = cancelled or again
    elif task.cancelled():
        log.warning("%s was cancelled", name)
    elif task.exception() is not None:
        log.error("%s failed", name, exc_info=task.exception())
    else:
        result = task.result()
    if cancelled:
        raise asyncio.CancelledError()
    return result
