"""aiomonitor in every role, on 127.0.0.1, with role-provided commands.

``async with run_console(settings, commands):`` starts aiomonitor's telnet UI (plus its web UI and
an on-demand Python console) for the running loop and stops it on exit. Roles register commands
on a :class:`ConsoleCommands` before starting: each is a callable taking the command's arguments
and returning text (sync or async). Commands run **on the monitored event loop** (scheduled from
aiomonitor's UI thread), so they may read role state without locks; a command that does not
finish within ``command_timeout`` reports that the loop is busy.

aiomonitor's ``start()`` waits forever when a UI port cannot be bound (the bind error dies in its
UI thread), so every port is checked first and a busy one raises :class:`ConsolePortBusy`.

Roles start it through :func:`run_role_console`: a console port that cannot be bound is logged
and the role runs without its console (a diagnostic aid never takes a node agent down, and
several replicas on one machine keep running). Each role has its own default ports
(:func:`role_console_settings`), so the roles of one machine do not collide.

aiomonitor's command table is one module-level click group; this module adds one dispatcher
per command name to it, which looks the callable up on the *current* monitor, so several
monitors in one process (tests) never see each other's commands.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import click
from aiomonitor import Monitor
from aiomonitor.termui.commands import auto_async_command_done, monitor_cli

from hami.config.settings import setting
from hami.core.errors import HamiError

logger = logging.getLogger(__name__)

CONSOLE_HOST: Final = "127.0.0.1"
CommandResult = str | Awaitable[str]
CommandFunc = Callable[[Sequence[str]], CommandResult]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleSettings:
    """aiomonitor ports; a section of every role's Settings (flags ``--no-monitor``, ``--monitor-port``)."""

    disabled: bool = setting(False, "do not start the aiomonitor console", flag="--no-monitor")
    port: int = setting(20101, "aiomonitor telnet port on 127.0.0.1", flag="--monitor-port")
    webui_port: int = setting(20102, "aiomonitor web UI port on 127.0.0.1", flag="--monitor-webui-port")
    console_port: int = setting(
        20103, "aiomonitor Python console port on 127.0.0.1 (opened on demand)", flag="--monitor-console-port"
    )
    python_console: bool = setting(True, "allow aiomonitor's Python console", flag="--monitor-python-console")
    command_timeout: float = setting(10.0, "how long a console command may run on the loop", unit="s")


class ConsolePortBusy(HamiError):
    def __init__(self, port: int, what: str, reason: str) -> None:
        self.port = port
        super().__init__(f"aiomonitor {what} port {CONSOLE_HOST}:{port} is not available ({reason})")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleCommand:
    name: str
    help: str
    func: CommandFunc


class ConsoleCommands:
    """The commands a role offers in its console (a plain per-process object, built by the role)."""

    def __init__(self) -> None:
        self._commands: dict[str, ConsoleCommand] = {}

    def add(self, name: str, func: CommandFunc, help: str) -> None:
        if not name.replace("-", "").isalnum() or name != name.lower():
            raise ValueError(f"console command name {name!r}: use lowercase letters, digits and '-'")
        builtin = monitor_cli.commands.get(name)
        aliases: dict[str, str] = getattr(monitor_cli, "_aliases", {})
        if name in aliases or (
            builtin is not None and not getattr(builtin.callback, "_hami_dispatcher", False)
        ):
            raise ValueError(f"console command {name!r} would shadow an aiomonitor command")
        if name in self._commands:
            raise ValueError(f"console command {name!r} is already registered")
        self._commands[name] = ConsoleCommand(name=name, help=help, func=func)

    def get(self, name: str) -> ConsoleCommand | None:
        return self._commands.get(name)

    def __iter__(self) -> Iterator[ConsoleCommand]:
        return iter(sorted(self._commands.values(), key=lambda c: c.name))


class HamiMonitor(Monitor):  # type: ignore[misc]  # aiomonitor ships no type information
    """aiomonitor's Monitor carrying the role's commands."""

    hami_commands: ConsoleCommands
    command_timeout: float

    async def run_hami_command(self, name: str, args: Sequence[str]) -> str:
        command = self.hami_commands.get(name)
        if command is None:
            return f"{name}: not available in this process"

        async def invoke() -> str:
            result = command.func(tuple(args))
            if inspect.isawaitable(result):
                result = await result
            return str(result)

        future = asyncio.run_coroutine_threadsafe(invoke(), self._monitored_loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.command_timeout)
        except TimeoutError:
            future.cancel()
            return f"{name}: no answer within {self.command_timeout:.0f}s (event loop busy?)"
        except Exception as e:
            logger.warning("console command %s failed", name, exc_info=True)
            return f"{name}: failed: {type(e).__name__}: {e}"


def _install_dispatcher(command: ConsoleCommand) -> None:
    existing = monitor_cli.commands.get(command.name)
    if existing is not None:
        # A dispatcher is already there (it resolves the callable per monitor); its help text is
        # shared, so the latest monitor's wins (roles differ in what e.g. ``ledger`` shows).
        existing.help = command.help
        return

    name = command.name

    # No --help option: click runs option callbacks on every call, and aiomonitor's help callback
    # marks the command done at parse time, before this command's output is written.
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def dispatch(ctx: click.Context, args: tuple[str, ...]) -> None:
        monitor = ctx.obj

        @auto_async_command_done  # type: ignore[untyped-decorator]
        async def run(ctx: click.Context) -> None:
            if isinstance(monitor, HamiMonitor):
                text = await monitor.run_hami_command(name, args)
            else:
                text = f"{name}: not available in this process"
            click.echo(text)

        task = monitor._ui_loop.create_task(run(ctx))
        monitor._termui_tasks.add(task)

    dispatch.__doc__ = command.help
    dispatch._hami_dispatcher = True  # type: ignore[attr-defined]
    monitor_cli.command(name=name, add_help_option=False, context_settings={"ignore_unknown_options": True})(
        dispatch
    )


def check_port_free(port: int, what: str, host: str = CONSOLE_HOST) -> None:
    """Raise :class:`ConsolePortBusy` unless ``host:port`` can be bound right now."""
    if not 0 < port < 65536:
        raise ConsolePortBusy(port, what, "not a TCP port number")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            raise ConsolePortBusy(port, what, e.strerror or str(e)) from None


@asynccontextmanager
async def run_console(
    settings: ConsoleSettings,
    commands: ConsoleCommands | None = None,
    *,
    locals: dict[str, Any] | None = None,
) -> AsyncIterator[HamiMonitor | None]:
    """Run aiomonitor for the current loop while the block runs; yields None when disabled."""
    if settings.disabled:
        yield None
        return
    commands = commands or ConsoleCommands()
    ports = {"telnet": settings.port, "web UI": settings.webui_port}
    if settings.python_console:
        ports["Python console"] = settings.console_port
    if len(set(ports.values())) != len(ports):
        raise ConsolePortBusy(settings.port, "telnet", f"ports must differ: {ports}")
    for what, port in ports.items():
        check_port_free(port, what)
    for command in commands:
        _install_dispatcher(command)
    monitor = HamiMonitor(
        asyncio.get_running_loop(),
        host=CONSOLE_HOST,
        termui_port=settings.port,
        webui_port=settings.webui_port,
        console_port=settings.console_port,
        console_enabled=settings.python_console,
        locals=locals,
    )
    monitor.hami_commands = commands
    monitor.command_timeout = settings.command_timeout
    # start() blocks until the UI thread listens (a few ms); ports were checked above.
    monitor.start()
    logger.info("aiomonitor listening on telnet://%s:%d", CONSOLE_HOST, settings.port)
    try:
        yield monitor
    finally:
        # close() joins the UI thread, which needs no help from this loop.
        await asyncio.to_thread(monitor.close)


def role_console_settings(telnet_port: int) -> ConsoleSettings:
    """A role's default ports: telnet ``telnet_port``, web UI +1, Python console +2."""
    return ConsoleSettings(port=telnet_port, webui_port=telnet_port + 1, console_port=telnet_port + 2)


@asynccontextmanager
async def run_role_console(
    settings: ConsoleSettings,
    commands: ConsoleCommands | None = None,
    *,
    role: str,
    locals: dict[str, Any] | None = None,
) -> AsyncIterator[HamiMonitor | None]:
    """:func:`run_console` for a role: a busy port is logged and yields None instead of raising."""
    async with AsyncExitStack() as stack:
        try:
            monitor = await stack.enter_async_context(run_console(settings, commands, locals=locals))
        except ConsolePortBusy as e:
            logger.error(
                "%s: running without the aiomonitor console: %s (see --monitor-port, --no-monitor)", role, e
            )
            monitor = None
        yield monitor
