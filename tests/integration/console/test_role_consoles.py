"""Each role's aiomonitor commands, over telnet, on roles built in-process in states worth seeing:
a node with a committed pod in handoff and an assumed reservation (scheduler), a pod waiting for
Allocate (device plugin), a prepared claim (DRA plugin). The same commands on roles started by
their CLIs in the embedded cluster: tests/integration/metrics_e2e."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from monitor_telnet import TelnetClient, free_ports

from hami._proto import v1beta1 as pb
from hami.cache.informer import Delta
from hami.config.settings import LeaderElectionSettings, NetworkingSettings
from hami.core import keys
from hami.core.model import ContainerDevice, DeviceInfo
from hami.core.node_annotations import encode_node_devices
from hami.deviceplugin.agent import AgentConfig, DevicePluginAgent
from hami.deviceplugin.backends.mock import MockBackend, mock_gpus
from hami.deviceplugin.console import device_plugin_console_commands
from hami.deviceplugin.memkube import InMemoryKube, allocating_pod
from hami.dra.claims import ClaimRef, PreparedClaim, PreparedDevice
from hami.dra.console import dra_plugin_console_commands
from hami.dra.devices import MockGpuSource
from hami.dra.devices import mock_gpus as dra_mock_gpus
from hami.dra.plugin import DraPlugin, DraPluginConfig
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.k8s.watch import Listed
from hami.runtime.console import ConsoleCommands, ConsoleSettings, run_role_console
from hami.scheduler.console import InformerActivity, scheduler_console_commands, watch_informers
from hami.scheduler.role import SchedulerRole
from hami.scheduler.settings import SchedulerSection, SchedulerSettings
from hami.scheduler.state import Assumption

NODE = "node-a"


def console_settings() -> ConsoleSettings:
    telnet, web, python = free_ports(3)
    return ConsoleSettings(port=telnet, webui_port=web, console_port=python, python_console=False)


async def run_commands(commands: ConsoleCommands, *lines: str) -> list[str]:
    """Start the role console as the CLIs do, connect over telnet, run ``lines``."""
    settings = console_settings()
    async with run_role_console(settings, commands, role="test") as monitor:
        assert monitor is not None
        client = await TelnetClient.connect(settings.port)
        try:
            await client.until_prompt()
            return [await client.run(line) for line in lines]
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def unreachable_api() -> AsyncIterator[HttpKubeApi]:
    """A client nobody answers: the roles are built, never run against an API server."""
    api = HttpKubeApi(Credentials.anonymous("http://127.0.0.1:9"), NetworkingSettings())
    try:
        yield api
    finally:
        await api.close()


def registered_node() -> dict[str, Any]:
    devices = [
        DeviceInfo(
            id=f"GPU-{c}", index=i, count=10, devmem=8000, devcore=100, type="NVIDIA A100", health=True
        )
        for i, c in enumerate("ab")
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "uid": "node-uid",
            "resourceVersion": "7",
            "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices)},
        },
        "status": {"allocatable": {keys.RESOURCE_GPU: "20"}},
    }


def pod_in_handoff() -> dict[str, Any]:
    """Bound to node-a, its devices not yet handed out by the device plugin."""
    pod = allocating_pod("train-1", NODE, "GPU-a,NVIDIA,3000,30:;", uid="uid-1", containers=("main",))
    pod["metadata"]["resourceVersion"] = "8"
    pod["spec"]["schedulerName"] = "hami-scheduler"
    return pod


async def test_scheduler_commands_show_ledger_reservations_handoffs_informers_and_leadership() -> None:
    settings = SchedulerSettings(
        scheduler=SchedulerSection(http_bind="127.0.0.1:0", metrics_bind_address="127.0.0.1:0"),
        leader_election=LeaderElectionSettings(enabled=True, identity="replica-a"),
    )
    async with unreachable_api() as api:
        role = SchedulerRole(settings, api, identity="replica-a")
        activity = InformerActivity()
        watch_informers(role, activity)
        state = role.state
        node = registered_node()
        state.on_node(Delta(type="added", key=NODE, object=node, decoded=state.decode_node(node)))
        pod = pod_in_handoff()
        state.on_pod(Delta(type="added", key="default/train-1", object=pod, decoded=state.decode_pod(pod)))
        # A decision of this replica whose annotation the watch has not shown yet.
        devices = {"NVIDIA": ((ContainerDevice(uuid="GPU-b", type="NVIDIA", usedmem=1000, usedcores=0),),)}
        state.ledger.assume("uid-2", NODE, devices, namespace="default")
        state.assumed(
            Assumption(
                uid="uid-2",
                namespace="default",
                name="infer-2",
                node=NODE,
                allocated=(),
                since=state.clock.monotonic(),
            )
        )
        out = await run_commands(
            scheduler_console_commands(role, activity),
            "ledger",
            f"ledger {NODE}",
            "ledger node-x",
            "ledger a b",
            "inflight",
            "handoffs",
            "informers",
            "leader",
            "help",
        )
    overview, node_view, unknown, usage, inflight, handoffs, informers, leader, helptext = out
    assert f"{NODE}: 2 devices, mem 4000/16000MiB, 2 tasks, 2 pods" in overview
    assert "[0] GPU-a NVIDIA A100 healthy tasks=1/10 mem=3000/8000MiB cores=30/100" in node_view
    assert "[1] GPU-b NVIDIA A100 healthy tasks=1/10 mem=1000/8000MiB cores=0/100" in node_view
    assert "default/train-1 [committed] c0:NVIDIA #0 GPU-a 3000MiB 30%" in node_view
    assert "default/infer-2 [assumed] c0:NVIDIA #1 GPU-b 1000MiB 0%" in node_view
    assert f"node node-x: not in the ledger (nodes with devices: {NODE})" in unknown
    assert "usage: ledger [node]" in usage
    assert "1 assumed reservations" in inflight
    assert f"default/infer-2 -> {NODE} age" in inflight and "patch in flight" in inflight
    assert "handoff (ordered): 1 nodes" in handoffs
    assert f"{NODE}: 1 in handoff, 0 waiting" in handoffs and "in handoff: default/train-1" in handoffs
    assert "scheduler pods: synced=False rv=- no change yet" in informers
    assert "scheduler nodes: synced=False" in informers and "scheduler resourcequotas" in informers
    assert "identity replica-a: follower of lease kube-system/hami-scheduler (mode own)" in leader
    assert "holder unknown (not read yet)" in leader and "never confirmed" in leader
    assert "refusing /filter and /bind: scheduler caches are not synced yet" in leader
    for command in ("ledger", "inflight", "handoffs", "informers", "leader"):
        assert command in helptext


async def test_informer_activity_times_the_last_change() -> None:
    async with unreachable_api() as api:
        role = SchedulerRole(SchedulerSettings(), api)
        activity = InformerActivity()
        watch_informers(role, activity)
        pods = role.state.pods
        assert pods is not None and activity.age(pods.name) is None
        pods.apply(Listed(objects=(pod_in_handoff(),), resource_version="8"))  # as the reflector would
        age = activity.age(pods.name)
        assert age is not None and 0 <= age < 5 and activity.deltas(pods.name) == 1
        [text] = await run_commands(scheduler_console_commands(role, activity), "informers")
        # The resourceVersion is the reflector's (none ran here); the change is the informer's.
        assert "scheduler pods: synced=True rv=- last change 0." in text and "objects=1 lists=0" in text


async def test_device_plugin_commands_show_devices_registration_and_pending_pods(tmp_path: Path) -> None:
    gpus = mock_gpus(NODE, 2)
    kube = InMemoryKube()
    kube.put_node({"metadata": {"name": NODE}, "status": {"capacity": {}}})
    kube.put_pod(allocating_pod("train", NODE, f"{gpus[0].uuid},NVIDIA,3000,30:;", containers=("main",)))
    config = AgentConfig(
        node_name=NODE,
        plugin_dir=tmp_path / "dp",  # no kubelet.sock there: the agent keeps waiting to register
        host_root=tmp_path / "host",
        cdi_dir=tmp_path / "cdi",
        poll_interval_s=0.05,
        register_interval_s=0.2,
    )
    allocations: list[float] = []
    agent = DevicePluginAgent(config, MockBackend(gpus), kube, kube, on_allocate=allocations.append)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.started.wait(), 10)
        assert agent.annotator is not None
        while agent.annotator.publishes == 0:  # noqa: ASYNC110 - the first annotation patch
            await asyncio.sleep(0.02)
        commands = device_plugin_console_commands(agent, kube, kube)
        devices, registration, pending = await run_commands(commands, "devices", "registration", "pending")
        assert agent.service is not None
        # The kubelet's Allocate for the waiting pod (what ListAndWatch offered), timed for /metrics.
        await agent.service.allocate(
            pb.AllocateRequest(
                container_requests=[pb.ContainerAllocateRequest(devices_ids=[f"{gpus[0].uuid}-0"])]
            )
        )
        [after] = await run_commands(commands, "pending")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert f"node {NODE}: 2 GPUs as nvidia.com/gpu, split 10" in devices
    assert f"[0] {gpus[0].uuid} NVIDIA A100-PCIE-40GB 40960MiB" in devices and "10 virtual devices" in devices
    assert f"registered in {keys.NODE_NVIDIA_REGISTER}: 2 devices" in devices
    assert "kubelet: NOT registered as nvidia.com/gpu (0 successful Register calls)" in registration
    assert f"{keys.NODE_NVIDIA_REGISTER}: 1 patches written" in registration and gpus[1].uuid in registration
    assert f"node {NODE}: 1 pods wait for Allocate" in pending
    assert f"default/train container #0 created 2026-02-01T08:00:00Z: {gpus[0].uuid} 3000MiB 30%" in pending
    assert len(allocations) == 1 and allocations[0] >= 0
    assert f"node {NODE}: 0 pods wait for Allocate" in after
    assert "default/train: not waiting (hami.io/bind-phase is 'success')" in after


async def test_dra_plugin_commands_show_prepared_claims_and_gpus(tmp_path: Path) -> None:
    config = DraPluginConfig(
        node_name=NODE,
        plugin_dir=tmp_path / "plugin",
        registry_dir=tmp_path / "registry",
        cdi_dir=tmp_path / "cdi",
        host_root=tmp_path / "host",
    )
    prepares: list[float] = []
    async with unreachable_api() as api:
        plugin = DraPlugin(config, MockGpuSource(dra_mock_gpus(NODE, 2)), api, on_prepare=prepares.append)
        await plugin.start()
        ref = ClaimRef(namespace="default", name="shared-gpu", uid="claim-uid-1")
        plugin.checkpoint.put(
            PreparedClaim(
                ref=ref,
                devices=(
                    PreparedDevice(
                        request_names=("gpu",),
                        pool=NODE,
                        device="hami-gpu-1",
                        cdi_ids=("k8s.hami-core-gpu.project-hami.io/claim=claim-uid-1",),
                        share_id="share-7",
                    ),
                ),
                cdi_spec={
                    "cdiVersion": "0.6.0",
                    "kind": "k8s.hami-core-gpu.project-hami.io/claim",
                    "devices": [],
                },
                cache_dir="/usr/local/vgpu/claims/claim-uid-1",
            )
        )
        assert plugin.preparer is not None
        answered = await plugin.preparer.prepare([ref])  # a repeated prepare: from the checkpoint
        claims, gpus = await run_commands(dra_plugin_console_commands(plugin), "claims", "gpus")
    assert isinstance(answered[ref.uid], PreparedClaim) and len(prepares) == 1
    assert f"on {NODE}: kubelet NOT registered; 1 prepared claims" in claims
    assert "default/shared-gpu uid=claim-uid-1 cache=/usr/local/vgpu/claims/claim-uid-1" in claims
    assert f"{NODE}/hami-gpu-1 share=share-7 requests=gpu" in claims
    assert "2 GPUs" in gpus and "hami-gpu-0" in gpus and dra_mock_gpus(NODE, 1)[0].uuid in gpus


async def test_a_busy_console_port_is_logged_and_the_role_runs_without_console(
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    web, python = free_ports(2)
    settings = ConsoleSettings(port=busy, webui_port=web, console_port=python)
    try:
        with caplog.at_level(logging.ERROR, logger="hami.runtime.console"):
            async with run_role_console(settings, ConsoleCommands(), role="device-plugin") as monitor:
                assert monitor is None
        assert (
            f"device-plugin: running without the aiomonitor console: aiomonitor telnet port 127.0.0.1:{busy}"
            in (caplog.text)
        )
    finally:
        blocker.close()
    async with run_role_console(ConsoleSettings(disabled=True), role="scheduler") as monitor:
        assert monitor is None
