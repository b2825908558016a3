"""The DRA plugin role against the simulated API server and a kubelet plugin watcher on real sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from dra_fixtures import SLICES, RunningPlugin, allocated_claim, create_node, eventually, plugin_config

from hami.core.dra_translate import DRIVER_NAME
from hami.dra.devices import mock_gpus
from hami.dra.slices import validate_resource_slice
from hami.k8s.client import HttpKubeApi
from hami.simulator.dra_controller import KubeletDra, resolve_cdi
from hami.simulator.restclient import RestClient
from hami.simulator.server import ApiServer

NODE = "node-1"


async def node_slices(rest: RestClient, node: str = NODE) -> list[dict]:
    listed = await rest.get(SLICES, {"fieldSelector": f"spec.nodeName={node},spec.driver={DRIVER_NAME}"})
    return list(listed["items"])


async def test_one_slice_per_node_and_restarts_converge_without_duplicates(
    kube: HttpKubeApi, rest: RestClient, dra_dir: Path
) -> None:
    node = await create_node(rest, NODE)
    runner = RunningPlugin(plugin_config(dra_dir, NODE), mock_gpus(NODE, 2), kube)
    await runner.start()
    try:
        (published,) = await node_slices(rest)
        assert validate_resource_slice(published) == []
        assert published["metadata"]["name"] == f"{NODE}-{DRIVER_NAME}"
        assert published["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
        assert [d["name"] for d in published["spec"]["devices"]] == ["hami-gpu-0", "hami-gpu-1"]
        assert published["spec"]["pool"]["generation"] == 1
    finally:
        await runner.stop()
    # A stray slice of the same driver and node (e.g. a generateName leftover) appears meanwhile.
    stray = dict(published, metadata={"generateName": f"{NODE}-{DRIVER_NAME}-"})
    await rest.create(SLICES, stray)
    assert len(await node_slices(rest)) == 2
    # Restart with the same GPUs: same object, unchanged; the stray is deleted.
    await runner.start()
    try:
        (same,) = await eventually(lambda: _single(rest))
        assert same["metadata"]["uid"] == published["metadata"]["uid"]
        assert same["metadata"]["resourceVersion"] == published["metadata"]["resourceVersion"]
        # Someone deletes the slice: the periodic check restores it.
        await rest.delete(f"{SLICES}/{same['metadata']['name']}")
        (restored,) = await eventually(lambda: _single(rest))
        assert validate_resource_slice(restored) == []
    finally:
        await runner.stop()
    # Restart with a different inventory: updated in place, pool generation bumped.
    runner.gpus = mock_gpus(NODE, 3)
    await runner.start()
    try:
        (updated,) = await node_slices(rest)
        assert len(updated["spec"]["devices"]) == 3
        assert updated["spec"]["pool"]["generation"] == restored["spec"]["pool"]["generation"] + 1
    finally:
        await runner.stop()


async def _single(rest: RestClient) -> list[dict] | None:
    items = await node_slices(rest)
    return items if len(items) == 1 else None


async def test_registration_then_prepare_over_the_real_sockets(
    kube: HttpKubeApi, rest: RestClient, dra_dir: Path
) -> None:
    await create_node(rest, NODE)
    config = plugin_config(dra_dir, NODE)
    runner = RunningPlugin(config, mock_gpus(NODE, 2), kube)
    plugin = await runner.start()
    kubelet = KubeletDra(rest, config.registry_dir, poll_s=0.05)
    watcher = asyncio.create_task(kubelet.run())
    try:
        driver = await kubelet.wait_for_driver(DRIVER_NAME)
        assert driver.endpoint == str(config.dra_socket) and driver.uses_v1
        assert driver.versions == ("v1.DRAPlugin", "v1beta1.DRAPlugin")
        await asyncio.wait_for(plugin.registration.registered.wait(), 5)

        pod_uid = "pod-uid-1"
        claim = await allocated_claim(rest, "c1", NODE, "hami-gpu-0", pod_uid=pod_uid)
        pod = {
            "metadata": {"name": "p", "namespace": "default", "uid": pod_uid},
            "spec": {
                "resourceClaims": [{"name": "gpu", "resourceClaimName": "c1"}],
                "containers": [{"name": "app", "resources": {"claims": [{"name": "gpu"}]}}, {"name": "side"}],
            },
        }
        devices = await kubelet.prepare_pod(pod)
        uid = claim["metadata"]["uid"]
        assert devices.containers == {"app": (f"k8s.hami-core-gpu.project-hami.io/claim={uid}-hami-gpu-0",)}
        env = resolve_cdi([config.cdi_dir], devices.containers["app"]).env
        assert env["CUDA_DEVICE_MEMORY_LIMIT_0"] == "4000m"
        assert env["CUDA_DEVICE_SM_LIMIT"] == "30"
        assert env["NVIDIA_VISIBLE_DEVICES"] == mock_gpus(NODE, 1)[0].uuid
        assert await kubelet.unprepare_pod(pod_uid) == []
        assert list(config.cdi_dir.glob("*.json")) == []

        # A pod whose claim is not reserved for it is not prepared.
        await allocated_claim(rest, "c2", NODE, "hami-gpu-1")
        other = {
            **pod,
            "spec": {**pod["spec"], "resourceClaims": [{"name": "gpu", "resourceClaimName": "c2"}]},
        }
        try:
            await kubelet.prepare_pod(other)
        except Exception as e:
            assert "not reserved for this pod" in str(e)
        else:
            raise AssertionError("prepare of an unreserved claim succeeded")

        # The kubelet wiped the registry directory: the plugin serves its socket again.
        config.registration_socket.unlink()
        await eventually(config.registration_socket.exists)
        await kubelet.scan()
        assert DRIVER_NAME in kubelet.drivers
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await runner.stop()
    assert not config.dra_socket.exists() and not config.registration_socket.exists()


async def test_cli_runs_until_sigterm_and_cleans_up(sim: ApiServer, rest: RestClient, dra_dir: Path) -> None:
    await create_node(rest, "node-cli")
    kubeconfig = sim.write_kubeconfig(dra_dir / "kubeconfig")
    config = plugin_config(dra_dir, "node-cli")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hami", "dra-plugin",
        "--backend", "mock", "--mock-gpus", "3", "--mock-memory", "24576",
        "--node-name", "node-cli", "--kubeconfig", str(kubeconfig),
        "--plugin-dir", str(config.plugin_dir), "--registry-dir", str(config.registry_dir),
        "--cdi-dir", str(config.cdi_dir), "--host-root", str(config.host_root),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        (published,) = await eventually(lambda: node_slices(rest, "node-cli"), within=30)
        assert [d["capacity"]["memory"]["value"] for d in published["spec"]["devices"]] == ["24Gi"] * 3
        await eventually(lambda: config.registration_socket.exists() and config.dra_socket.exists())
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 15)
        assert process.returncode == 0, output.decode()
        assert "shutting down: signal SIGTERM" in output.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert not config.registration_socket.exists() and not config.dra_socket.exists()


def test_cli_rejects_bad_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hami", "dra-plugin", "--backend", "mock", "--node-name", ""],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "NODE_NAME"},
    )
    assert result.returncode == 2
    assert "--node-name" in result.stderr
