from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hami.config.settings import NetworkingSettings
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.simulator.restclient import RestClient
from hami.simulator.server import ApiServer


@pytest.fixture
def dra_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (sun_path is limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="dra", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def sim() -> AsyncIterator[ApiServer]:
    async with ApiServer.running() as server:
        yield server


@pytest.fixture
async def kube(sim: ApiServer) -> AsyncIterator[HttpKubeApi]:
    settings = NetworkingSettings(max_retries=0, request_timeout=5.0, connect_timeout=2.0)
    async with HttpKubeApi(Credentials.anonymous(sim.url), settings) as api:
        yield api


@pytest.fixture
async def rest(sim: ApiServer) -> AsyncIterator[RestClient]:
    client = RestClient(sim.url, request_timeout=5.0)
    try:
        yield client
    finally:
        await client.close()
