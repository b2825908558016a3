"""Two-stage shutdown on SIGTERM/SIGINT with an ultimate-exit timer.

First signal (or ``request_stop()``): the stop callbacks run synchronously, right in the
signal handler, so ``/readyz`` flips to 503 before anything else happens; then the
``stopping`` event is set and the composition root drains (stop accepting, finish
in-flight handlers, release the Lease, cancel watchers, close the client). An ultimate
timer is armed at the same time: if the drain hangs, the process exits anyway (kopf's
``ultimate_termination``). A second signal exits at once (grpclib ``graceful_exit``), with
status 128 + signal number as shells expect.

Exiting "at once" uses ``os._exit`` after flushing logs: raising ``SystemExit`` from a
signal callback would unwind through ``asyncio.run``, which then waits for every task's
cleanup, the very thing a second Ctrl-C is meant to skip. Tests inject ``exit_func``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

_logger = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


def hard_exit(code: int) -> NoReturn:
    """Flush what we can and leave without running any more Python cleanup."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class Shutdown:
    """The process's stop request. Create it inside the running loop."""

    def __init__(
        self,
        *,
        ultimate_timeout: float | None = 60.0,
        exit_func: Callable[[int], object] = hard_exit,
        logger: logging.Logger | None = None,
    ) -> None:
        self.stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ultimate_timeout = ultimate_timeout
        self._exit = exit_func
        self._log = logger or _logger
        self._callbacks: list[Callable[[], object]] = []
        self._installed: list[signal.Signals] = []
        self._ultimate: asyncio.TimerHandle | None = None
        self.reason: str | None = None
        self.exit_code = 0

    @property
    def is_stopping(self) -> bool:
        return self.stopping.is_set()

    def add_stop_callback(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` synchronously on the first stop request (e.g. readiness flip).
        If the stop was already requested it runs now."""
        if self.is_stopping:
            callback()
        else:
            self._callbacks.append(callback)

    def request_stop(self, reason: str = "requested", *, exit_code: int = 0) -> None:
        """First stage; idempotent. ``exit_code`` is what the composition root should return."""
        if self.is_stopping:
            return
        self.reason = reason
        self.exit_code = exit_code
        self._log.info("shutting down: %s", reason)
        for callback in self._callbacks:
            try:
                callback()
            except Exception:
                self._log.error("stop callback %r failed", callback, exc_info=True)
        self._callbacks.clear()
        self.stopping.set()
        if self._ultimate_timeout is not None and self._ultimate is None:
            self._ultimate = self._loop.call_later(self._ultimate_timeout, self._ultimate_exit)

    async def wait(self) -> None:
        await self.stopping.wait()

    def _ultimate_exit(self) -> None:
        self._log.error("shutdown did not finish within %.1fs; exiting now", self._ultimate_timeout or 0.0)
        self._exit(self.exit_code or 1)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.is_stopping:
            self.request_stop(f"signal {sig.name}", exit_code=0)
            return
        self._log.warning("second %s: exiting immediately", sig.name)
        self._exit(128 + int(sig))

    def install(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS) -> None:
        for sig in signals:
            self._loop.add_signal_handler(sig, self._on_signal, sig)
            self._installed.append(sig)

    def uninstall(self) -> None:
        """Remove our signal handlers and disarm the ultimate timer (clean exit reached)."""
        for sig in self._installed:
            self._loop.remove_signal_handler(sig)
        self._installed.clear()
        if self._ultimate is not None:
            self._ultimate.cancel()
            self._ultimate = None


@contextmanager
def handle_signals(
    *,
    ultimate_timeout: float | None = 60.0,
    signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS,
    exit_func: Callable[[int], object] = hard_exit,
) -> Iterator[Shutdown]:
    """``with handle_signals() as shutdown:`` installs the handlers for the block's lifetime."""
    shutdown = Shutdown(ultimate_timeout=ultimate_timeout, exit_func=exit_func)
    shutdown.install(signals)
    try:
        yield shutdown
    finally:
        shutdown.uninstall()
