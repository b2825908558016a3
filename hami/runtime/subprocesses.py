"""Stopping a child process the way a kubelet stops a container: SIGTERM, a grace period, SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

logger = logging.getLogger(__name__)


async def terminate(process: asyncio.subprocess.Process, grace_s: float, what: str) -> int:
    """SIGTERM ``process``, SIGKILL it if still running after ``grace_s``; its exit status.

    A process that already exited (or vanished) is fine: its status is returned as is.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await process.wait()
        except TimeoutError:
            logger.warning("%s ignored SIGTERM for %.0fs; killing it", what, grace_s)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode
