from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from monitor_telnet import TelnetClient
from prometheus_client.parser import text_string_to_metric_families

from hami.cli import build_parser
from hami.cli.monitor import MonitorRoleSettings, serve
from hami.config.loader import load_settings
from hami.config.settings import NetworkingSettings
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.k8s.objects import PODS
from hami.runtime.shutdown import Shutdown
from hami.simulator.server import ApiServer, ApiServerSettings

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def apiserver() -> AsyncIterator[ApiServer]:
    async with ApiServer.running(settings=ApiServerSettings(bookmark_interval_s=0.2)) as server:
        yield server


async def create_pod(server: ApiServer, name: str, node: str, containers: list[str]) -> str:
    async with HttpKubeApi(Credentials.anonymous(server.url), NetworkingSettings()) as api:
        created = await api.create(
            PODS,
            {
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": node, "containers": [{"name": c, "image": "cuda"} for c in containers]},
            },
            namespace="default",
        )
    return str(created["metadata"]["uid"])


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


async def test_monitor_role_end_to_end(apiserver: ApiServer, tmp_path: Path, h100_fixtures: Path) -> None:
    uid = await create_pod(apiserver, "trainer", "node-1", ["worker"])
    await create_pod(apiserver, "elsewhere", "node-2", ["main"])
    containers = tmp_path / "containers"
    live = containers / f"{uid}_worker"
    live.mkdir(parents=True)
    (live / "libvgpu.so").touch()
    (live / "a.cache").write_bytes((h100_fixtures / "vgpu_c_1_hold.cache").read_bytes())
    stale = containers / "00000000-dead-beef-0000-000000000000_main"
    stale.mkdir()
    (stale / "b.cache").write_bytes((h100_fixtures / "vgpu_d_after_exit.cache").read_bytes())
    then = time.time() - 3600
    os.utime(stale, (then, then))

    metrics_port, telnet, web, console = (free_port() for _ in range(4))
    argv = [
        "monitor",
        "--node-name", "node-1",
        "--kube-api-server", apiserver.url,
        "--containers-dir", str(containers),
        "--metrics-bind", "127.0.0.1",
        "--metrics-port", str(metrics_port),
        "--backend", "mock",
        "--mock-gpus", "2",
        "--scan-interval", "0.2",
        "--cleanup-grace", "60",
        "--mig-lock-file", str(tmp_path / "none.lock"),
        "--monitor-port", str(telnet),
        "--monitor-webui-port", str(web),
        "--monitor-console-port", str(console),
    ]  # fmt: skip
    args = build_parser().parse_args(argv)
    settings = load_settings(MonitorRoleSettings, args=args, environ={})
    shutdown = Shutdown(ultimate_timeout=None)
    role = asyncio.create_task(serve(args, settings, {}, shutdown))
    url = f"http://127.0.0.1:{metrics_port}"
    async with aiohttp.ClientSession() as session:

        async def ready_with_pod() -> dict[str, list[tuple[dict[str, str], float]]]:
            while True:
                await asyncio.sleep(0.1)
                assert not role.done(), role
                try:
                    async with session.get(url + "/readyz") as resp:
                        if resp.status != 200:
                            continue
                    found = await scrape(session, url)
                except aiohttp.ClientConnectionError:
                    continue
                if found.get("vGPU_device_memory_usage_in_bytes"):
                    return found

        found = await asyncio.wait_for(ready_with_pod(), 20)
        assert found["hami_build_info"][0][1] == 1.0
        assert set(found["hami_build_info"][0][0]) == {
            "version", "revision", "build_date", "python_version", "platform"
        }  # fmt: skip
        labels, used = found["vGPU_device_memory_usage_in_bytes"][0]
        assert labels == {
            "podnamespace": "default",
            "podname": "trainer",
            "ctrname": "worker",
            "vdeviceid": "0",
            "deviceuuid": "GPU-c7a18d9c-18fd-13e6-447c-983f490b6495",
            "zone": "vGPU",
        }
        assert used == 4575985664.0
        assert found["hami_vgpu_memory_over_limit_bytes"] == [(labels, 281018368.0)]
        hosts = sorted((lab["deviceidx"], lab["node"]) for lab, _ in found["HostGPUMemoryUsage"])
        assert hosts == [("0", "node-1"), ("1", "node-1")]
        async with session.get(url + "/healthz") as resp:
            assert resp.status == 200
        # The stale directory of a pod that is not on this node is gone; the live one stays.
        for _ in range(50):
            if not stale.exists():
                break
            await asyncio.sleep(0.1)
        assert not stale.exists() and live.exists()

        client = await TelnetClient.connect(telnet)
        try:
            await client.until_prompt()
            out = await client.run("containers")
            assert "default/trainer/worker" in out and "OVER LIMIT by 281018368" in out
            out = await client.run("pods")
            assert "1 pods on node-1 (synced: True)" in out and "default/trainer" in out
            out = await client.run("informer")
            assert "synced=True" in out
        finally:
            await client.close()

        shutdown.request_stop("test")
        assert await asyncio.wait_for(role, 20) == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url + "/healthz"):
                pass


async def test_sigterm_stops_the_process(apiserver: ApiServer, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hami", "monitor",
        "--node-name", "node-1",
        "--kube-api-server", apiserver.url,
        "--containers-dir", str(tmp_path),
        "--metrics-bind", "127.0.0.1",
        "--metrics-port", str(port),
        "--backend", "mock",
        "--no-monitor",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:

            async def until_ready() -> None:
                while True:
                    await asyncio.sleep(0.1)
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                            if resp.status == 200:
                                return
                    except aiohttp.ClientConnectionError:
                        assert proc.returncode is None
                        continue

            await asyncio.wait_for(until_ready(), 30)
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 20)
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        assert rc == 0, err
        assert "shutting down: signal SIGTERM" in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_missing_node_name_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    from hami.cli import main

    assert main(["monitor", "--node-name", "", "--backend", "mock"]) == 2
    assert "--node-name" in capsys.readouterr().err


def test_busy_metrics_port_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    from hami.cli import main

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        rc = main(
            [
                "monitor", "--node-name", "n", "--backend", "mock", "--no-monitor",
                "--kube-api-server", "http://127.0.0.1:9", "--metrics-bind", "127.0.0.1",
                "--metrics-port", str(port),
            ]
        )  # fmt: skip
    assert rc == 2
    assert f"--metrics-port: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
