"""The role processes of ``hami demo``: start, watch, stop; and free ports for them.

Every role runs as its own OS process, as in a cluster: ``hami scheduler``, one ``hami
device-plugin --backend mock`` and one ``hami monitor --backend mock`` per node (launched through
:mod:`hami.cli._demo_launch`). Their output goes to a log file each; a process that dies early
is reported with the end of its log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from hami.cli._demo_launch import PARENT_ENV
from hami.runtime.subprocesses import terminate

logger = logging.getLogger(__name__)

STOP_GRACE_S: Final = 10.0
LOG_TAIL_CHARS: Final = 3000


def free_ports(count: int, host: str = "127.0.0.1") -> tuple[int, ...]:
    """``count`` distinct ports free right now (all held open at once, so they differ)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            sockets.append(s)
            s.bind((host, 0))
        return tuple(int(s.getsockname()[1]) for s in sockets)
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsolePorts:
    """A role's aiomonitor ports on 127.0.0.1 (every role has its own defaults, which several
    processes of one role on one machine would share, so the demo assigns them)."""

    telnet: int
    webui: int
    python: int

    def environ(self) -> dict[str, str]:
        # Settings read HAMI_<FLAG>; a role without a console ignores these.
        return {
            "HAMI_MONITOR_PORT": str(self.telnet),
            "HAMI_MONITOR_WEBUI_PORT": str(self.webui),
            "HAMI_MONITOR_CONSOLE_PORT": str(self.python),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleCommand:
    title: str  # "device plugin node-1"
    role: str  # the hami subcommand
    args: tuple[str, ...]
    log_file: Path
    console: ConsolePorts | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def environ(self) -> dict[str, str]:
        return {**(self.console.environ() if self.console else {}), **self.env}

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "hami.cli._demo_launch", self.role, *self.args]

    def shown(self) -> str:
        """The equivalent ``hami`` command line, for people to copy."""
        assignments = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.environ.items())]
        return " ".join([*assignments, shlex.join(["hami", self.role, *self.args])])


class RoleProcess:
    """One running role; :meth:`stop` is idempotent and never raises."""

    def __init__(self, command: RoleCommand) -> None:
        self.command = command
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    async def start(self) -> None:
        self.command.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.command.log_file.open("ab")
        env = {**os.environ, **self.command.environ, PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        # Own process group: a terminal's Ctrl-C reaches only the demo, which stops the roles in
        # order (a role hit by SIGINT and then by our SIGTERM would take it as "exit at once").
        self._process = await asyncio.create_subprocess_exec(
            *self.command.argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            process_group=0,
        )
        logger.info("started %s (pid %d)", self.command.title, self._process.pid)

    async def wait(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.command.title} was never started")
        return await self._process.wait()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; the exit status (None if never started)."""
        process = self._process
        if process is None:
            return None
        try:
            return await terminate(process, grace_s, self.command.title)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def console_listening(self) -> bool:
        """Whether the role says its aiomonitor console listens on the port we gave it."""
        console = self.command.console
        if console is None:
            return False
        try:
            text = self.command.log_file.read_text(errors="replace")
        except OSError:
            return False
        return f"aiomonitor listening on telnet://127.0.0.1:{console.telnet}" in text

    def log_tail(self, limit: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.command.log_file.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


class RoleFailed(RuntimeError):
    """A role process exited while the demo needed it."""

    def __init__(self, process: RoleProcess) -> None:
        self.process = process
        tail = process.log_tail().rstrip()
        super().__init__(
            f"{process.command.title} exited with status {process.returncode}; "
            f"the end of its log ({process.command.log_file}):\n{tail}"
        )


async def start_all(commands: Iterable[RoleCommand]) -> list[RoleProcess]:
    processes = [RoleProcess(c) for c in commands]
    await asyncio.gather(*(p.start() for p in processes))
    return processes


async def stop_all(processes: Sequence[RoleProcess], grace_s: float = STOP_GRACE_S) -> None:
    results = await asyncio.gather(*(p.stop(grace_s) for p in processes), return_exceptions=True)
    for process, result in zip(processes, results, strict=True):
        if isinstance(result, BaseException):
            logger.error("stopping %s failed: %s", process.command.title, result)
        elif result not in (None, 0, -signal.SIGTERM):  # -SIGTERM: stopped before its handlers were up
            logger.warning("%s exited with status %s", process.command.title, result)


def first_dead(processes: Iterable[RoleProcess]) -> RoleProcess | None:
    for process in processes:
        if process.returncode is not None:
            return process
    return None
