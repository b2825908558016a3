"""Stopping child processes: SIGTERM first, SIGKILL after the grace period."""

from __future__ import annotations

import asyncio
import signal
import sys

from hami.runtime.subprocesses import terminate


async def spawn(code: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    assert await process.stdout.readline() == b"ready\n"  # its handlers are installed
    return process


async def test_a_process_that_honours_sigterm_exits_with_it() -> None:
    process = await spawn("import time; print('ready', flush=True); time.sleep(60)")
    assert await terminate(process, 5.0, "sleeper") == -signal.SIGTERM


async def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    process = await spawn(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    assert await terminate(process, 0.2, "stubborn") == -signal.SIGKILL
    assert await terminate(process, 0.2, "stubborn") == -signal.SIGKILL  # already gone: same status
