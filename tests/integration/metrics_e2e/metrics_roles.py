"""hami roles as subprocesses (their real CLIs) beside the embedded cluster, and /metrics scraping."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import aiohttp
from monitor_telnet import TelnetClient, free_ports
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")
Samples = dict[str, list[tuple[dict[str, str], float]]]


@dataclass(frozen=True, slots=True)
class ConsolePorts:
    telnet: int
    webui: int
    python: int

    @classmethod
    def free(cls) -> ConsolePorts:
        telnet, webui, python = free_ports(3)
        return cls(telnet, webui, python)

    def flags(self) -> list[str]:
        return [
            "--monitor-port", str(self.telnet),
            "--monitor-webui-port", str(self.webui),
            "--monitor-console-port", str(self.python),
        ]  # fmt: skip


class RoleProcess:
    """``python -m hami <argv>`` with its output in ``log``; stopped with SIGTERM."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", "hami", *argv]
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self._out: IO[bytes] | None = None

    async def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("wb")
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=self._out, stderr=asyncio.subprocess.STDOUT
        )

    def check_alive(self) -> None:
        if self.process is not None and self.process.returncode is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def stop(self, within: float = 20.0) -> int:
        """SIGTERM, wait; returns the exit code (killed: -9)."""
        process = self.process
        assert process is not None
        try:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(process.wait(), within)
            except TimeoutError:
                process.kill()
                await process.wait()
                return -9
        finally:
            if self._out is not None:
                self._out.close()


async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for have, v in samples.get(name, []) if all(have.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples in {samples.get(name)}"
    return found[0]


def labelsets(samples: Samples, name: str, **labels: str) -> list[dict[str, str]]:
    return [have for have, _ in samples.get(name, []) if all(have.get(k) == w for k, w in labels.items())]


async def poll(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float,
    what: str,
    alive: Sequence[RoleProcess] = (),
    every: float = 0.2,
) -> T:
    """Call ``probe`` until it returns something other than None (connection errors retry)."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while True:
        for role in alive:
            role.check_alive()
        try:
            got = await probe()
            if got is not None:
                return got
        except (aiohttp.ClientError, OSError, AssertionError) as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {within:g}s (last error: {last!r})")
        await asyncio.sleep(every)


async def console_run(port: int, *lines: str) -> list[str]:
    """Connect to an aiomonitor telnet port and run ``lines``; returns each command's output."""
    client = await TelnetClient.connect(port)
    try:
        await client.until_prompt()
        return [await client.run(line) for line in lines]
    finally:
        await client.close()
