from __future__ import annotations

import asyncio

import pytest


@pytest.fixture(autouse=True)
async def no_pending_tasks():
    """Fail a test that leaks a task (kopf's ``_no_asyncio_pending_tasks``)."""
    before = asyncio.all_tasks()
    yield
    # let finishing tasks run their last step (aiohttp closes connections asynchronously)
    for _ in range(10):
        leaked = {t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()}
        if not leaked:
            return
        await asyncio.sleep(0.01)
    names = sorted(t.get_name() for t in leaked)
    for task in leaked:
        task.cancel()
    pytest.fail(f"test leaked tasks: {names}")
