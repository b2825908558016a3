"""A minimal device plugin for exercising the fake kubelet (test-only, grpclib).

Serves ``v1beta1.DevicePlugin`` on its own socket in the kubelet's plugin directory, registers on
``kubelet.sock``, and (like real plugins) re-serves and re-registers when ``kubelet.sock`` is
re-created. It records every call so tests can assert what the kubelet sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpclib
import grpclib.client
import grpclib.server
from grpclib.const import Status

from hami._proto import v1beta1 as dp


class RecordingPlugin(dp.DevicePluginBase):
    def __init__(
        self,
        device_ids: list[str],
        *,
        preferred: bool = False,
        pre_start: bool = False,
        fail_allocate: str | None = None,
    ) -> None:
        self.health = {d: "Healthy" for d in device_ids}
        self.preferred = preferred
        self.pre_start = pre_start
        self.fail_allocate = fail_allocate
        self.allocate_calls: list[list[list[str]]] = []
        self.preferred_calls: list[tuple[list[str], list[str], int]] = []
        self.prestart_calls: list[list[str]] = []
        self.list_and_watch_opened = 0
        self._changed = asyncio.Event()
        self._stopping = False

    def end_streams(self) -> None:
        """End every ListAndWatch stream normally, as a stopping plugin does."""
        self._stopping = True
        self._changed.set()

    def set_health(self, device_id: str, health: str) -> None:
        self.health[device_id] = health
        self._changed.set()

    async def get_device_plugin_options(self, message: dp.Empty) -> dp.DevicePluginOptions:
        return dp.DevicePluginOptions(
            pre_start_required=self.pre_start, get_preferred_allocation_available=self.preferred
        )

    async def list_and_watch(self, message: dp.Empty) -> AsyncIterator[dp.ListAndWatchResponse]:
        self.list_and_watch_opened += 1
        while not self._stopping:
            self._changed.clear()
            yield dp.ListAndWatchResponse(devices=[dp.Device(id=d, health=h) for d, h in self.health.items()])
            await self._changed.wait()

    async def get_preferred_allocation(
        self, message: dp.PreferredAllocationRequest
    ) -> dp.PreferredAllocationResponse:
        responses = []
        for request in message.container_requests:
            available = list(request.available_deviceIDs)
            self.preferred_calls.append(
                (available, list(request.must_include_deviceIDs), request.allocation_size)
            )
            # Prefer the highest IDs, so a test can tell preferred from default choice.
            responses.append(
                dp.ContainerPreferredAllocationResponse(
                    device_i_ds=sorted(available)[::-1][: request.allocation_size]
                )
            )
        return dp.PreferredAllocationResponse(container_responses=responses)

    async def allocate(self, message: dp.AllocateRequest) -> dp.AllocateResponse:
        ids = [list(r.devices_ids) for r in message.container_requests]
        self.allocate_calls.append(ids)
        if self.fail_allocate is not None:
            raise grpclib.GRPCError(Status.UNKNOWN, self.fail_allocate)
        return dp.AllocateResponse(
            container_responses=[
                dp.ContainerAllocateResponse(
                    envs={"TEST_DEVICES": ",".join(r), "ALLOC_SEQ": str(len(self.allocate_calls))},
                    mounts=[
                        dp.Mount(
                            container_path="/usr/lib/libtest.so", host_path="/opt/libtest.so", read_only=True
                        )
                    ],
                    devices=[
                        dp.DeviceSpec(container_path="/dev/test0", host_path="/dev/test0", permissions="rw")
                    ],
                    annotations={"test.example.com/seq": str(len(self.allocate_calls))},
                )
                for r in ids
            ]
        )

    async def pre_start_container(self, message: dp.PreStartContainerRequest) -> dp.PreStartContainerResponse:
        self.prestart_calls.append(list(message.devices_ids))
        return dp.PreStartContainerResponse()


class PluginServer:
    """Serve a plugin in ``plugin_dir`` and keep it registered across kubelet restarts."""

    def __init__(
        self, plugin: RecordingPlugin, plugin_dir: Path, *, resource: str, endpoint: str = "test.sock"
    ) -> None:
        self.plugin = plugin
        self.plugin_dir = plugin_dir
        self.resource = resource
        self.endpoint = endpoint
        self.registrations = 0
        self._server: grpclib.server.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def _serve_and_register(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        path = self.plugin_dir / self.endpoint
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = grpclib.server.Server([self.plugin])
        await self._server.start(path=str(path))
        channel = grpclib.client.Channel(path=str(self.plugin_dir / "kubelet.sock"))
        try:
            await dp.RegistrationStub(channel).register(
                dp.RegisterRequest(
                    version="v1beta1",
                    endpoint=self.endpoint,
                    resource_name=self.resource,
                    options=dp.DevicePluginOptions(
                        pre_start_required=self.plugin.pre_start,
                        get_preferred_allocation_available=self.plugin.preferred,
                    ),
                ),
                timeout=5,
            )
        finally:
            channel.close()
        self.registrations += 1

    def _kubelet_socket_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.plugin_dir / "kubelet.sock")
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_ctime_ns

    async def _watch(self, seen: tuple[int, int] | None) -> None:
        # Polling instead of inotify. The kubelet wipes plugin sockets when it starts, so a missing
        # own socket means "kubelet restarted" even if the new kubelet.sock reused the old inode.
        while True:
            await asyncio.sleep(0.05)
            current = self._kubelet_socket_id()
            if current is None:
                continue
            if current != seen or not (self.plugin_dir / self.endpoint).exists():
                try:
                    await self._serve_and_register()
                except (grpclib.GRPCError, OSError):
                    continue  # kubelet not serving yet: try again on the next poll
                seen = current

    async def start(self) -> None:
        seen = self._kubelet_socket_id()
        await self._serve_and_register()
        self._task = asyncio.create_task(self._watch(seen), name="test plugin: watch kubelet.sock")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.plugin.end_streams()
        await asyncio.sleep(0.05)  # let the streams' trailers go out before the server closes
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
