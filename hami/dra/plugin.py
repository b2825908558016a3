"""The DRA plugin role: GPUs → ResourceSlice, kubelet registration, prepare/unprepare service.

:class:`DraPlugin` discovers the GPUs once, loads the checkpoint, then runs until cancelled:

* the DRA service (v1 and v1beta1 ``DRAPlugin`` on one server) on ``<plugin dir>/dra.sock``;
* the ``Registration`` service on ``<registry dir>/<driver>-reg.sock``, which the kubelet's plugin
  watcher finds by itself (also after a kubelet restart, so nothing has to be re-sent);
* the ResourceSlice publisher (:class:`~hami.dra.slices.SlicePublisher`).

A socket that disappears (the kubelet or an operator wiped the directory) is served again
within ``poll_interval_s``. Cancellation closes both servers and removes both sockets; the slice
and the checkpoint stay, so a restarted plugin converges to the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from grpclib.server import Server

from hami.core.dra_translate import DRIVER_NAME
from hami.core.hamicore_env import HamiCoreOptions
from hami.dra.claims import CONTROL_DEVICES
from hami.dra.devices import DraGpu, GpuSource
from hami.dra.service import (
    ClaimPreparer,
    DraServiceV1,
    DraServiceV1beta1,
    PreparerSettings,
    RegistrationService,
)
from hami.dra.slices import DEFAULT_SPLIT_COUNT, SlicePublisher
from hami.dra.state import STATE_FILE, ClaimCheckpoint
from hami.k8s.client import KubeApi

logger = logging.getLogger(__name__)

KUBELET_REGISTRY_DIR: Final = Path("/var/lib/kubelet/plugins_registry")
KUBELET_PLUGINS_DIR: Final = Path("/var/lib/kubelet/plugins")
DEFAULT_CDI_DIR: Final = Path("/var/run/cdi")
DRA_SOCKET: Final = "dra.sock"


@dataclass(frozen=True, slots=True, kw_only=True)
class DraPluginConfig:
    node_name: str
    driver: str = DRIVER_NAME
    plugin_dir: Path = KUBELET_PLUGINS_DIR / DRIVER_NAME
    registry_dir: Path = KUBELET_REGISTRY_DIR
    cdi_dir: Path = DEFAULT_CDI_DIR
    hamicore: HamiCoreOptions = field(default_factory=HamiCoreOptions)
    host_root: Path = Path("/")
    control_devices: tuple[str, ...] = CONTROL_DEVICES
    slice_interval_s: float = 30.0
    split_count: int = DEFAULT_SPLIT_COUNT
    poll_interval_s: float = 0.5
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.node_name:
            raise ValueError("the node name is required (--node-name or NODE_NAME)")
        if self.split_count < 1:
            raise ValueError(f"--device-split-count must be at least 1, got {self.split_count}")

    @property
    def dra_socket(self) -> Path:
        return self.plugin_dir.absolute() / DRA_SOCKET

    @property
    def registration_socket(self) -> Path:
        return self.registry_dir.absolute() / f"{self.driver}-reg.sock"

    @property
    def checkpoint_path(self) -> Path:
        return self.plugin_dir / STATE_FILE


class DraPlugin:
    def __init__(
        self,
        config: DraPluginConfig,
        source: GpuSource,
        api: KubeApi,
        *,
        on_prepare: Callable[[float], object] | None = None,
    ) -> None:
        self.config = config
        self._on_prepare = on_prepare  # NodePrepareResources latency observer (metrics)
        self._source = source
        self._api = api
        self.gpus: tuple[DraGpu, ...] = ()
        self.checkpoint = ClaimCheckpoint(config.checkpoint_path)
        self.preparer: ClaimPreparer | None = None
        self.publisher: SlicePublisher | None = None
        self.registration = RegistrationService(config.driver, config.dra_socket)
        self.serving = asyncio.Event()  # both sockets are up

    async def start(self) -> None:
        """Discover GPUs and load the checkpoint (no background work yet)."""
        cfg = self.config
        self.gpus = await self._source.gpus()
        await asyncio.to_thread(self.checkpoint.load)
        self.preparer = ClaimPreparer(
            self._api,
            self.gpus,
            self.checkpoint,
            PreparerSettings(
                driver=cfg.driver,
                node_name=cfg.node_name,
                cdi_dir=cfg.cdi_dir,
                hamicore=cfg.hamicore,
                host_root=cfg.host_root,
                control_devices=cfg.control_devices,
            ),
            on_prepare=self._on_prepare,
        )
        self.publisher = SlicePublisher(
            self._api, cfg.node_name, cfg.driver, self.gpus, split_count=cfg.split_count
        )
        if not self.gpus:
            logger.warning("no GPUs found on %s: publishing an empty ResourceSlice", cfg.node_name)

    async def _start_server(self, server: Server, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of a previous run
        await server.start(path=str(path))

    async def _stop_server(self, server: Server, path: Path) -> None:
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=self.config.shutdown_timeout_s)
        except TimeoutError:
            logger.warning("server on %s did not close within %.0f s", path, self.config.shutdown_timeout_s)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    async def _serve_sockets(self) -> None:
        """Serve both sockets; re-serve one whose file vanished. Cleans up on cancellation."""
        assert self.preparer is not None
        cfg = self.config
        dra = Server([DraServiceV1(self.preparer), DraServiceV1beta1(self.preparer)])
        registration = Server([self.registration])
        await self._start_server(dra, cfg.dra_socket)
        try:
            await self._start_server(registration, cfg.registration_socket)
            try:
                logger.info(
                    "DRA plugin %s serving %s, registering via %s",
                    cfg.driver,
                    cfg.dra_socket,
                    cfg.registration_socket,
                )
                self.serving.set()
                while True:
                    await asyncio.sleep(cfg.poll_interval_s)
                    if not cfg.dra_socket.exists():
                        logger.warning("%s was removed: serving it again", cfg.dra_socket)
                        await self._stop_server(dra, cfg.dra_socket)
                        dra = Server([DraServiceV1(self.preparer), DraServiceV1beta1(self.preparer)])
                        await self._start_server(dra, cfg.dra_socket)
                    if not cfg.registration_socket.exists():
                        logger.warning("%s was removed: registering again", cfg.registration_socket)
                        self.registration.registered.clear()
                        await self._stop_server(registration, cfg.registration_socket)
                        registration = Server([self.registration])
                        await self._start_server(registration, cfg.registration_socket)
            finally:
                self.serving.clear()
                # Registration first: the kubelet must stop sending work before the service goes.
                await asyncio.shield(self._stop_server(registration, cfg.registration_socket))
        finally:
            await asyncio.shield(self._stop_server(dra, cfg.dra_socket))

    async def run(self) -> None:
        """Run until cancelled; closes the GPU source on the way out."""
        try:
            await self.start()
            assert self.publisher is not None
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._serve_sockets(), name="dra sockets")
                tg.create_task(
                    self.publisher.run(interval_s=self.config.slice_interval_s),
                    name="resourceslice publisher",
                )
        finally:
            await self._source.close()
