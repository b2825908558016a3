from __future__ import annotations

import asyncio
import os
import signal

from hami.runtime.shutdown import Shutdown, handle_signals


class Exits:
    def __init__(self) -> None:
        self.codes: list[int] = []

    def __call__(self, code: int) -> None:
        self.codes.append(code)


async def test_first_signal_flips_readiness_before_setting_the_stop_event():
    exits = Exits()
    order: list[str] = []
    with handle_signals(ultimate_timeout=None, exit_func=exits) as shutdown:
        ready = {"ok": True}

        def not_ready() -> None:
            ready["ok"] = False
            order.append(f"callback, stopping={shutdown.is_stopping}")

        shutdown.add_stop_callback(not_ready)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(shutdown.wait(), 2.0)
        assert ready == {"ok": False}
        assert order == ["callback, stopping=False"]
        assert shutdown.reason == "signal SIGTERM"
        assert exits.codes == []


async def test_second_signal_exits_at_once_with_128_plus_signal():
    exits = Exits()
    with handle_signals(ultimate_timeout=None, exit_func=exits) as shutdown:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(shutdown.wait(), 2.0)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):
            if exits.codes:
                break
            await asyncio.sleep(0.01)
    assert exits.codes == [128 + signal.SIGINT]


async def test_ultimate_timer_exits_when_the_drain_hangs():
    exits = Exits()
    shutdown = Shutdown(ultimate_timeout=0.05, exit_func=exits)
    shutdown.request_stop("test", exit_code=3)
    await asyncio.sleep(0.15)
    assert exits.codes == [3]
    shutdown.uninstall()


async def test_uninstall_disarms_the_ultimate_timer():
    exits = Exits()
    shutdown = Shutdown(ultimate_timeout=0.05, exit_func=exits)
    shutdown.request_stop("done")
    shutdown.uninstall()
    await asyncio.sleep(0.1)
    assert exits.codes == []


async def test_request_stop_is_idempotent_and_late_callbacks_run_at_once():
    shutdown = Shutdown(ultimate_timeout=None)
    calls: list[str] = []
    shutdown.add_stop_callback(lambda: calls.append("a"))
    shutdown.request_stop("first", exit_code=1)
    shutdown.request_stop("second", exit_code=2)
    assert shutdown.reason == "first" and shutdown.exit_code == 1
    shutdown.add_stop_callback(lambda: calls.append("b"))
    assert calls == ["a", "b"]


async def test_a_failing_callback_does_not_block_the_others(caplog):
    shutdown = Shutdown(ultimate_timeout=None)
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("bad callback")

    shutdown.add_stop_callback(broken)
    shutdown.add_stop_callback(lambda: calls.append("ok"))
    shutdown.request_stop()
    assert calls == ["ok"]
    assert shutdown.is_stopping
    assert "bad callback" in caplog.text
