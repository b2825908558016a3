"""Registration with a (fake) kubelet over real Unix sockets; kubelet restarts; clean stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from hami.deviceplugin.allocate import AllocateSettings, HostLayout
from hami.deviceplugin.backends.mock import mock_gpus
from hami.deviceplugin.memkube import InMemoryKube
from hami.deviceplugin.podlookup import HamiPendingPodSource, KubeAllocationRecorder
from hami.deviceplugin.registration import KubeletRegistrar, RegistrationSettings
from hami.deviceplugin.service import DevicePluginService
from hami.deviceplugin.state import DeviceState
from hami.deviceplugin.virtual import NodeDeviceSettings


def registrar(directory: Path) -> tuple[KubeletRegistrar, DeviceState]:
    kube = InMemoryKube()
    state = DeviceState(mock_gpus("n1", 2), NodeDeviceSettings(split_count=4))
    service = DevicePluginService(
        node_name="n1",
        state=state,
        allocate_settings=AllocateSettings(),
        pods=HamiPendingPodSource(kube, kube),
        recorder=KubeAllocationRecorder(kube, kube),
        host=HostLayout(AllocateSettings(), root=directory),
    )
    settings = RegistrationSettings(
        socket_name="nvidia-gpu.sock",
        resource_name="nvidia.com/gpu",
        plugin_dir=directory,
        poll_interval_s=0.05,
        retry_interval_s=0.05,
    )
    return KubeletRegistrar(service, settings), state


async def test_registers_serves_and_reregisters_after_kubelet_restart(kubelet: Any, sock_dir: Path) -> None:
    reg, _state = registrar(sock_dir)
    task = asyncio.create_task(reg.run())
    try:
        await asyncio.wait_for(kubelet.registered.wait(), 5)
        (req,) = kubelet.requests
        assert (req.version, req.endpoint, req.resource_name) == (
            "v1beta1",
            "nvidia-gpu.sock",
            "nvidia.com/gpu",
        )
        assert req.options is not None and req.options.get_preferred_allocation_available
        assert kubelet.options is not None and not kubelet.options.pre_start_required
        await kubelet.wait_for(lambda: len(kubelet.devices) == 8)
        assert (sock_dir / "nvidia-gpu.sock").is_socket()

        started = time.monotonic()
        await kubelet.restart()  # kubelet.sock removed and re-created
        await asyncio.wait_for(kubelet.registered.wait(), 5)
        assert time.monotonic() - started < 5
        assert len(kubelet.requests) == 2 and reg.registrations == 2
        await kubelet.wait_for(lambda: len(kubelet.devices) == 8)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not (sock_dir / "nvidia-gpu.sock").exists()  # clean stop removes the socket


async def test_waits_for_kubelet_and_reserves_when_socket_is_wiped(
    sock_dir: Path, fake_kubelet_type: Any
) -> None:
    reg, _state = registrar(sock_dir)
    task = asyncio.create_task(reg.run())
    kubelet = fake_kubelet_type(sock_dir)
    try:
        await asyncio.sleep(0.2)  # no kubelet yet: the plugin serves and keeps trying
        assert (sock_dir / "nvidia-gpu.sock").is_socket() and reg.registrations == 0
        await kubelet.start()
        await asyncio.wait_for(kubelet.registered.wait(), 5)
        kubelet.registered.clear()
        (sock_dir / "nvidia-gpu.sock").unlink()  # kubelet wiped the plugin directory
        await asyncio.wait_for(kubelet.registered.wait(), 5)
        assert (sock_dir / "nvidia-gpu.sock").is_socket() and reg.registrations == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kubelet.stop()


async def test_stale_socket_is_replaced(kubelet: Any, sock_dir: Path) -> None:
    (sock_dir / "nvidia-gpu.sock").write_text("stale")
    reg, _state = registrar(sock_dir)
    task = asyncio.create_task(reg.run())
    try:
        await asyncio.wait_for(kubelet.registered.wait(), 5)
        assert (sock_dir / "nvidia-gpu.sock").is_socket()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
