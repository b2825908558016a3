"""Shared builders for the DRA integration tests (objects written straight into the API server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hami.core.dra_translate import DRIVER_NAME
from hami.dra.devices import DraGpu, MockGpuSource
from hami.dra.plugin import DraPlugin, DraPluginConfig
from hami.k8s.client import KubeApi
from hami.simulator.restclient import RestClient

CLAIMS = "/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"
DEVICE_CLASS = {
    "apiVersion": "resource.k8s.io/v1",
    "kind": "DeviceClass",
    "metadata": {"name": DRIVER_NAME},
    "spec": {
        "selectors": [
            {
                "cel": {
                    "expression": f'device.driver == "{DRIVER_NAME}" && '
                    f'device.attributes["{DRIVER_NAME}"].type == "hami-gpu"'
                }
            }
        ]
    },
}


async def eventually(check: Callable[[], Any], within: float = 10.0, poll: float = 0.05) -> Any:
    """Await ``check()`` (sync or async) until it returns something truthy."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(poll)


async def create_node(rest: RestClient, name: str) -> dict[str, Any]:
    return await rest.create(
        "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    )


async def allocated_claim(
    rest: RestClient, name: str, node: str, device: str, *, namespace: str = "default", pod_uid: str = ""
) -> dict[str, Any]:
    """A claim allocated to one shared GPU (4000Mi, 30 %), optionally reserved for a pod."""
    claim = await rest.create(
        CLAIMS.format(ns=namespace),
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER_NAME}}]}},
        },
    )
    claim["status"] = {
        "allocation": {
            "devices": {
                "results": [
                    {
                        "request": "gpu",
                        "driver": DRIVER_NAME,
                        "pool": node,
                        "device": device,
                        "shareID": f"share-{name}",
                        "consumedCapacity": {"memory": "4000Mi", "cores": "30"},
                    }
                ]
            }
        }
    }
    if pod_uid:
        claim["status"]["reservedFor"] = [{"resource": "pods", "name": "p", "uid": pod_uid}]
    return await rest.request("PUT", f"{CLAIMS.format(ns=namespace)}/{name}/status", body=claim)


def plugin_config(base: Path, node: str, **kw: Any) -> DraPluginConfig:
    return DraPluginConfig(
        node_name=node,
        plugin_dir=base / node / "plugins" / DRIVER_NAME,
        registry_dir=base / node / "plugins_registry",
        cdi_dir=base / node / "cdi",
        host_root=base / node / "host",
        poll_interval_s=0.05,
        slice_interval_s=0.3,
        **kw,
    )


class RunningPlugin:
    """A DraPlugin task that tests can stop and start again (a plugin restart)."""

    def __init__(self, config: DraPluginConfig, gpus: tuple[DraGpu, ...], api: KubeApi) -> None:
        self.config = config
        self.gpus = gpus
        self.api = api
        self.plugin: DraPlugin | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> DraPlugin:
        self.plugin = DraPlugin(self.config, MockGpuSource(self.gpus), self.api)
        self.task = asyncio.create_task(self.plugin.run(), name=f"dra plugin {self.config.node_name}")
        await eventually(lambda: self.plugin is not None and self.plugin.serving.is_set())
        assert self.plugin.publisher is not None
        await asyncio.wait_for(self.plugin.publisher.published.wait(), 10)
        return self.plugin

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
