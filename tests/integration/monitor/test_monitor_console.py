from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest
from monitor_telnet import TelnetClient, free_ports

from hami.runtime.console import (
    ConsoleCommands,
    ConsolePortBusy,
    ConsoleSettings,
    check_port_free,
    run_console,
)


async def test_custom_commands_over_telnet() -> None:
    state = {"reservations": ["pod-a@node-1"]}
    commands = ConsoleCommands()

    def ledger(args: Sequence[str]) -> str:
        node = args[0] if args else "<all>"
        return f"ledger of {node}: GPU-0 used=4096MiB"

    async def reservations(args: Sequence[str]) -> str:
        # Runs on the monitored loop: may await and read role state.
        await asyncio.sleep(0)
        return "in-flight: " + ", ".join(state["reservations"])

    def broken(args: Sequence[str]) -> str:
        raise RuntimeError("kaput")

    commands.add("ledger", ledger, "print the ledger of a node")
    commands.add("reservations", reservations, "in-flight reservations")
    commands.add("broken", broken, "always fails")
    telnet, web, console = free_ports(3)
    settings = ConsoleSettings(port=telnet, webui_port=web, console_port=console)
    async with run_console(settings, commands) as monitor:
        assert monitor is not None
        client = await TelnetClient.connect(telnet)
        try:
            intro = await client.until_prompt()
            assert "Asyncio Monitor" in intro
            out = await client.run("ledger node-1")
            assert "ledger of node-1: GPU-0 used=4096MiB" in out
            state["reservations"].append("pod-b@node-2")
            out = await client.run("reservations")
            assert "in-flight: pod-a@node-1, pod-b@node-2" in out
            out = await client.run("broken")
            assert "broken: failed: RuntimeError: kaput" in out
            out = await client.run("help")
            assert "ledger" in out and "print the ledger of a node" in out
            out = await client.run("ps")
            assert "Task ID" in out
        finally:
            await client.close()
    # Stopped: the port is free again.
    check_port_free(telnet, "telnet")


async def test_second_monitor_does_not_see_other_commands() -> None:
    first = ConsoleCommands()
    first.add("leadership", lambda args: "leader: yes", "leadership state")
    telnet, web, console = free_ports(3)
    settings = ConsoleSettings(port=telnet, webui_port=web, console_port=console, python_console=False)
    async with run_console(settings, first):
        pass
    other = ConsoleCommands()
    telnet, web, console = free_ports(3)
    settings = ConsoleSettings(port=telnet, webui_port=web, console_port=console, python_console=False)
    async with run_console(settings, other):
        client = await TelnetClient.connect(telnet)
        try:
            await client.until_prompt()
            out = await client.run("leadership")
            assert "leadership: not available in this process" in out
        finally:
            await client.close()


async def test_busy_port_refused_before_start() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    try:
        telnet, console = free_ports(2)
        settings = ConsoleSettings(port=telnet, webui_port=busy, console_port=console)
        with pytest.raises(ConsolePortBusy, match=f"web UI port 127.0.0.1:{busy}"):
            async with run_console(settings):
                pass
    finally:
        blocker.close()


async def test_disabled_console_yields_none() -> None:
    async with run_console(ConsoleSettings(disabled=True)) as monitor:
        assert monitor is None


def test_command_names_are_checked() -> None:
    commands = ConsoleCommands()
    with pytest.raises(ValueError, match="shadow"):
        commands.add("ps", lambda a: "", "x")
    with pytest.raises(ValueError, match="shadow"):
        commands.add("p", lambda a: "", "x")
    with pytest.raises(ValueError, match="lowercase"):
        commands.add("Bad Name", lambda a: "", "x")
    commands.add("informer-lag", lambda a: "0s", "lag")
    with pytest.raises(ValueError, match="already"):
        commands.add("informer-lag", lambda a: "0s", "lag")
