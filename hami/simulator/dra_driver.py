"""HAMi's DRA driver as the embedded cluster installs it: the DeviceClass and ``hami dra-plugin`` processes.

The DeviceClass is the one the Helm chart ships (``templates/dra-deviceclass.yaml``): named after
the driver, selecting the devices it publishes. Each GPU node gets a real ``hami dra-plugin
--backend mock`` process (this package may not import the plugin role, and a process is what
runs on a node anyway) whose directories are the node's own, so the fake kubelet finds its
registration socket and CDI specs where a real kubelet and runtime would:

* ``<node>/plugins/<driver>/dra.sock`` and the plugin's checkpoint;
* ``<node>/plugins_registry/<driver>-reg.sock``, watched by the kubelet;
* ``<node>/cdi``, read by the kubelet when it starts a container;
* ``<node>/host``, standing in for the host's ``/`` (HAMi-core's library and cache paths).

Output goes to ``<node>/dra-plugin.log``. :meth:`DraPluginProcess.stop` sends SIGTERM, as the
kubelet's pod deletion does, so the plugin removes its sockets and keeps slice and checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from hami.core.dra_translate import DEVICE_CLASS_NAME, DEVICE_TYPE, DRIVER_NAME
from hami.runtime.subprocesses import terminate

logger = logging.getLogger(__name__)

JsonObj = dict[str, Any]
PLUGINS_DIR: Final = "plugins"
HOST_ROOT_DIR: Final = "host"
LOG_FILE: Final = "dra-plugin.log"
_STOP_TIMEOUT_S: Final = 10.0
_LOG_TAIL: Final = 4000


def device_class_manifest(driver: str = DRIVER_NAME, name: str = DEVICE_CLASS_NAME) -> JsonObj:
    """The chart's DeviceClass (``dra.enabled=true``, no ``extendedResourceName``)."""
    expression = f'device.driver == "{driver}" && device.attributes["{driver}"].type == "{DEVICE_TYPE}"'
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "hami",
                "app.kubernetes.io/component": "dra-plugin",
                "app.kubernetes.io/managed-by": "hami-embedded-cluster",
            },
        },
        "spec": {"selectors": [{"cel": {"expression": expression}}]},
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class DraPluginLayout:
    """Where one node's plugin keeps its sockets and files (see the module docstring)."""

    node_name: str
    node_dir: Path
    registry_dir: Path
    cdi_dir: Path
    gpu_file: Path
    driver: str = DRIVER_NAME

    @property
    def plugin_dir(self) -> Path:
        return self.node_dir / PLUGINS_DIR / self.driver

    @property
    def host_root(self) -> Path:
        return self.node_dir / HOST_ROOT_DIR

    @property
    def log_file(self) -> Path:
        return self.node_dir / LOG_FILE

    @property
    def registration_socket(self) -> Path:
        return self.registry_dir / f"{self.driver}-reg.sock"

    @property
    def dra_socket(self) -> Path:
        return self.plugin_dir / "dra.sock"

    def argv(self, kubeconfig: Path, *, python: str = sys.executable, extra: Sequence[str] = ()) -> list[str]:
        """The ``hami dra-plugin`` command line for this node."""
        return [
            python, "-m", "hami", "dra-plugin", "--backend", "mock",
            "--node-name", self.node_name, "--driver-name", self.driver,
            "--kubeconfig", str(kubeconfig),
            "--plugin-dir", str(self.plugin_dir), "--registry-dir", str(self.registry_dir),
            "--cdi-dir", str(self.cdi_dir), "--host-root", str(self.host_root),
            "--mock-gpu-file", str(self.gpu_file),
            # One plugin per node on this machine: no fixed ports (metrics on a free local port).
            "--no-monitor", "--metrics-bind", "127.0.0.1", "--metrics-port", "0",
            *extra,
        ]  # fmt: skip


class DraPluginProcess:
    """One node's ``hami dra-plugin`` subprocess."""

    def __init__(self, layout: DraPluginLayout, argv: Sequence[str]) -> None:
        self.layout = layout
        self.argv = tuple(argv)
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """None while running (or never started)."""
        return self._process.returncode if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        if self.running:
            return
        for directory in (self.layout.plugin_dir, self.layout.registry_dir, self.layout.cdi_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.layout.host_root.mkdir(parents=True, exist_ok=True)
        self._log = self.layout.log_file.open("ab")
        self._process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=asyncio.subprocess.STDOUT
        )
        logger.info("started DRA plugin for %s (pid %d)", self.layout.node_name, self._process.pid)

    async def wait(self) -> int:
        """Until the process exits; its exit status."""
        if self._process is None:
            raise RuntimeError(f"the DRA plugin of {self.layout.node_name} was never started")
        return await self._process.wait()

    async def stop(self, grace_s: float = _STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; the exit status (None if never started)."""
        process = self._process
        if process is None:
            return None
        try:
            return await terminate(process, grace_s, f"DRA plugin of {self.layout.node_name}")
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self, limit: int = _LOG_TAIL) -> str:
        """The end of the plugin's output (for error messages)."""
        try:
            return self.layout.log_file.read_text(errors="replace")[-limit:]
        except OSError:
            return ""
