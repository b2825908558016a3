from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.server import Server

from hami._proto import v1beta1 as pb


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (sun_path is limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="dp", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class FakeKubelet(pb.RegistrationBase):
    """The kubelet side of the device-plugin API, as far as these tests need it.

    Serves Registration on ``<dir>/kubelet.sock``; on every Register it dials the plugin's
    endpoint, calls GetDevicePluginOptions and follows ListAndWatch, keeping the latest list.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: list[pb.RegisterRequest] = []
        self.options: pb.DevicePluginOptions | None = None
        self.devices: list[pb.Device] = []
        self.updates = 0
        self.registered = asyncio.Event()
        self.changed = asyncio.Event()
        self._server: Server | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._channels: list[Channel] = []

    @property
    def socket(self) -> Path:
        return self.directory / "kubelet.sock"

    async def start(self) -> None:
        self._server = Server([self])
        await self._server.start(path=str(self.socket))

    async def stop(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers.clear()
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    async def restart(self) -> None:
        """What a kubelet restart looks like to a plugin: kubelet.sock removed and re-created."""
        await self.stop()
        self.registered.clear()
        await self.start()

    def plugin_channel(self, endpoint: str) -> Channel:
        channel = Channel(path=str(self.directory / endpoint))
        self._channels.append(channel)
        return channel

    async def register(self, message: pb.RegisterRequest) -> pb.Empty:
        self.requests.append(message)
        stub = pb.DevicePluginStub(self.plugin_channel(message.endpoint))
        self.options = await stub.get_device_plugin_options(pb.Empty(), timeout=5)
        self._watchers.append(asyncio.create_task(self._follow(stub), name="fake kubelet ListAndWatch"))
        self.registered.set()
        return pb.Empty()

    async def _follow(self, stub: pb.DevicePluginStub) -> None:
        with contextlib.suppress(Exception):
            async for response in stub.list_and_watch(pb.Empty()):
                self.devices = list(response.devices)
                self.updates += 1
                self.changed.set()

    async def wait_for(self, predicate: object, wait_s: float = 5.0) -> None:
        assert callable(predicate)
        async with asyncio.timeout(wait_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def fake_kubelet_type() -> type[FakeKubelet]:
    return FakeKubelet


@pytest.fixture
async def kubelet(sock_dir: Path) -> AsyncIterator[FakeKubelet]:
    k = FakeKubelet(sock_dir)
    await k.start()
    try:
        yield k
    finally:
        await k.stop()
