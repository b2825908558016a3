"""Serving the plugin socket and registering with the kubelet (k8s-apis.md §1.4, node spec §2.5).

:class:`KubeletRegistrar` runs one cycle after another: serve ``DevicePlugin`` on
``<plugin_dir>/<socket>`` (stale socket removed first, then dialled once to confirm), call
``v1beta1.Registration/Register`` on ``<plugin_dir>/kubelet.sock`` (retried until the kubelet
answers), then watch both sockets. A re-created ``kubelet.sock`` (kubelet restart) or a vanished
own socket (kubelet wiped the directory) ends the cycle and the next one re-serves and
re-registers. Polling the two files every ``poll_interval_s`` keeps re-registration well within
5 s without an inotify dependency. Cancellation stops the server and removes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from grpclib.client import Channel
from grpclib.server import Server

from hami._proto import v1beta1 as pb
from hami.deviceplugin.service import DevicePluginService

logger = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")

FileId = tuple[int, int, int]  # (device, inode, ctime ns): changes when a file is re-created


def file_id(path: Path) -> FileId | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationSettings:
    socket_name: str  # e.g. nvidia-gpu.sock
    resource_name: str  # e.g. nvidia.com/gpu
    plugin_dir: Path = DEFAULT_PLUGIN_DIR
    kubelet_socket_name: str = KUBELET_SOCKET
    preferred_allocation: bool = True
    poll_interval_s: float = 0.5
    rpc_timeout_s: float = 5.0
    retry_interval_s: float = 2.0

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / self.socket_name

    @property
    def kubelet_socket(self) -> Path:
        return self.plugin_dir / self.kubelet_socket_name


class KubeletRegistrar:
    def __init__(self, service: DevicePluginService, settings: RegistrationSettings) -> None:
        self._service = service
        self._settings = settings
        self.registrations = 0  # successful Register calls so far
        self.registered = asyncio.Event()  # set after each successful Register, cleared on restart

    async def run(self) -> None:
        """Serve and keep registered until cancelled."""
        while True:
            server = await self._serve()
            try:
                kubelet = await self._register()
                await self._watch(kubelet)
            finally:
                self.registered.clear()
                await self._stop(server)

    async def _serve(self) -> Server:
        path = self._settings.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # stale socket of a previous run
        server = Server([self._service])
        await server.start(path=str(path))
        try:
            await self._confirm_serving(path)
        except BaseException:
            await self._stop(server)
            raise
        logger.info("device plugin serving on %s", path)
        return server

    async def _confirm_serving(self, path: Path) -> None:
        channel = Channel(path=str(path))
        try:
            await pb.DevicePluginStub(channel).get_device_plugin_options(
                pb.Empty(), timeout=self._settings.rpc_timeout_s
            )
        finally:
            channel.close()

    async def _stop(self, server: Server) -> None:
        self._service.close_streams()
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=self._settings.rpc_timeout_s)
        except TimeoutError:
            logger.warning("device plugin server did not close within %.0f s", self._settings.rpc_timeout_s)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._settings.socket_path)

    def _request(self) -> pb.RegisterRequest:
        s = self._settings
        return pb.RegisterRequest(
            version=API_VERSION,
            endpoint=s.socket_name,
            resource_name=s.resource_name,
            options=pb.DevicePluginOptions(
                pre_start_required=False, get_preferred_allocation_available=s.preferred_allocation
            ),
        )

    async def _register(self) -> FileId:
        """Register until the kubelet accepts; returns the identity of the kubelet.sock it answered on."""
        s = self._settings
        while True:
            kubelet = file_id(s.kubelet_socket)
            if kubelet is None:
                logger.info("waiting for %s", s.kubelet_socket)
            else:
                channel = Channel(path=str(s.kubelet_socket))
                try:
                    await pb.RegistrationStub(channel).register(self._request(), timeout=s.rpc_timeout_s)
                except Exception as e:  # kubelet not ready yet or refusing: retry
                    logger.warning("registering %s with the kubelet failed: %s", s.resource_name, e)
                else:
                    self.registrations += 1
                    self.registered.set()
                    logger.info(
                        "registered %s with the kubelet (endpoint %s)", s.resource_name, s.socket_name
                    )
                    return kubelet
                finally:
                    channel.close()
            await asyncio.sleep(s.retry_interval_s if kubelet is not None else s.poll_interval_s)

    async def _watch(self, kubelet: FileId) -> None:
        """Return when the kubelet socket is re-created or our own socket disappears."""
        s = self._settings
        while True:
            await asyncio.sleep(s.poll_interval_s)
            if not s.socket_path.exists():
                logger.warning("%s was removed: serving and registering again", s.socket_path)
                return
            current = file_id(s.kubelet_socket)
            if current is not None and current != kubelet:
                logger.info("%s was re-created (kubelet restart): registering again", s.kubelet_socket)
                return
