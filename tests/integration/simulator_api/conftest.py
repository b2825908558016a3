"""Fixtures for the simulated API server: a running server, a kubeconfig and a kubectl runner."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from hami.simulator.server import ApiServer, ApiServerSettings


@pytest.fixture
async def apiserver() -> AsyncIterator[ApiServer]:
    settings = ApiServerSettings(bookmark_interval_s=0.2, too_large_rv_wait_s=0.2)
    async with ApiServer.running(settings=settings) as server:
        yield server


@pytest.fixture
def kubeconfig(apiserver: ApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
async def http(apiserver: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=apiserver.url) as session:
        yield session


@dataclass(frozen=True, slots=True)
class KubectlResult:
    rc: int
    out: str
    err: str


@dataclass(frozen=True, slots=True)
class Kubectl:
    binary: Path
    kubeconfig: Path
    cache: Path

    async def __call__(self, *args: str, stdin: str | None = None, within_s: float = 20) -> KubectlResult:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(self.cache),
            "HOME": str(self.cache),
        }
        proc = await asyncio.create_subprocess_exec(
            str(self.binary),
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), within_s)
        return KubectlResult(proc.returncode or 0, out.decode(), err.decode())

    async def ok(self, *args: str, stdin: str | None = None) -> str:
        result = await self(*args, stdin=stdin)
        assert result.rc == 0, f"kubectl {' '.join(args)} failed: {result.err}"
        return result.out


@pytest.fixture
def kube(kubectl: Path, kubeconfig: Path, tmp_path: Path) -> Kubectl:
    cache = tmp_path / "kube-cache"
    cache.mkdir()
    return Kubectl(kubectl, kubeconfig, cache)
