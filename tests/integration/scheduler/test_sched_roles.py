"""Registration written directly, leader election, TLS reload and the CLI's clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from sched_cluster import free_port, hami_cluster

from hami.config.settings import LeaderElectionSettings
from hami.core import keys
from hami.core.ids import DeviceID
from hami.core.model import DeviceInfo
from hami.core.node_annotations import encode_node_devices
from hami.simulator.restclient import node_path
from hami.simulator.scenario import gpu_pod

pytestmark = pytest.mark.slow


async def register(h, node: str, value: str, count: int = 40) -> None:
    await h.cluster.client.patch(
        node_path(node), {"metadata": {"annotations": {keys.NODE_NVIDIA_REGISTER: value}}}
    )
    await h.cluster.client.patch(
        node_path(node, "status"), {"status": {"allocatable": {keys.RESOURCE_GPU: str(count)}}}
    )


def devices(node: str, n: int = 4) -> str:
    return encode_node_devices(
        DeviceInfo(
            id=DeviceID(f"GPU-{node}-{i}"),
            index=i,
            count=10,
            devmem=16000,
            devcore=100,
            type="NVIDIA A10",
            mode="hami-core",
            health=True,
        )
        for i in range(n)
    )


async def test_malformed_node_annotation_quarantines_only_that_node():
    async with hami_cluster(plugins=False) as h:
        for node in ("node-1", "node-2", "node-3"):
            await register(h, node, devices(node))
        await h.until(lambda: len(h.role.state.registrar.registered) == 3)
        await register(h, "node-1", '[{"id":"GPU-x","devmem":"lots"}]')
        await h.until(lambda: h.role.state.registrar.quarantine_reason("node-1") is not None)
        pinned = gpu_pod("pinned", gpumem=1000, annotations={keys.USE_GPUUUID: "GPU-node-1-0"})
        free = gpu_pod("free", gpumem=1000)
        await h.create(pinned)
        await h.create(free)
        pod = await h.wait("free", lambda p: bool(p["spec"].get("nodeName")))
        assert pod["spec"]["nodeName"] in ("node-2", "node-3")
        await h.until(lambda: h.role.why.get("default", "pinned") is not None)
        record = h.role.why.get("default", "pinned")
        by_node = {n.node: n for n in record.nodes}
        assert by_node["node-1"].reason == "NodeQuarantined" and "devmem" in by_node["node-1"].detail
        assert by_node["node-2"].reason == "NodeUnfitPod"
        # fixing the annotation brings the node back
        await register(h, "node-1", devices("node-1"))
        pod = await h.wait("pinned", lambda p: bool(p["spec"].get("nodeName")), within=20)
        assert pod["spec"]["nodeName"] == "node-1"


async def test_leader_election_follower_refuses_at_once_and_takes_over():
    election = LeaderElectionSettings(
        enabled=True,
        lease_name="hami-scheduler",
        lease_namespace="default",
        lease_duration=3.0,
        renew_deadline=2.0,
        retry_period=0.2,
    )
    async with hami_cluster(plugins=False, start_scheduler=False) as h:
        for node in ("node-1", "node-2", "node-3"):
            await register(h, node, devices(node))
        leader = await h.start_scheduler(leader_election=election, identity="replica-a")
        follower_port = free_port()
        follower = await h.start_scheduler(
            leader_election=election, identity="replica-b", port=follower_port, wait_serving=False
        )
        await h.until(lambda: follower.state.synced)
        url = f"http://127.0.0.1:{follower_port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/readyz") as r:
                assert r.status == 503
            started = time.monotonic()
            async with s.post(
                f"{url}/filter", json={"Pod": gpu_pod("x", gpumem=1), "NodeNames": ["node-1"]}
            ) as r:
                body = await r.json()
            assert time.monotonic() - started < 1.0
            assert (
                body["Error"].startswith("not leader: this replica (replica-b)")
                and "replica-a" in body["Error"]
            )
            async with s.post(
                f"{url}/bind", json={"PodName": "x", "PodNamespace": "default", "Node": "node-1"}
            ) as r:
                assert (await r.json())["Error"].startswith("not leader")
        # the leader schedules
        await h.create(gpu_pod("led", gpumem=1000))
        await h.wait("led", lambda p: p["status"].get("phase") == "Running")
        # the follower's caches are warm: it accounts the leader's decision already
        await h.until(lambda: follower.state.ledger.namespace_usage("default", "NVIDIA") == (1000, 0))
        # a clean stop of the leader hands over at once (Lease released)
        await h.stop_scheduler(index=0)
        assert leader.elector is not None and not leader.elector.is_leader
        started = time.monotonic()
        await h.until(lambda: follower.serving_refusal() is None, within=5)
        assert time.monotonic() - started < 2.0


def make_cert(directory: Path, name: str) -> tuple[str, str]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


async def _peer_der(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return bytes(der)


def _der(path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text())


async def test_https_with_hot_reloaded_certificate_and_webhook(tmp_path):
    cert, key = make_cert(tmp_path, "first")
    async with hami_cluster(plugins=False, start_scheduler=False) as h:
        port = free_port()
        role = await h.start_scheduler(port=port, cert_file=cert, key_file=key)
        first = _der(cert)
        assert await _peer_der(port) == first
        new_cert, new_key = make_cert(tmp_path, "second")
        second = _der(new_cert)
        os.replace(new_key, key)
        os.replace(new_cert, cert)
        assert role.tls is not None and role.tls.check()
        assert await _peer_der(port) == second != first
        # the admission webhook shares the listener (hami.scheduler.webhook)
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "r1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "default",
                "object": gpu_pod("w", gpumem=1000, scheduler_name=None),
            },
        }
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"https://127.0.0.1:{port}/webhook", json=review, ssl=insecure) as r,
        ):
            body = await r.json()
        assert body["response"]["uid"] == "r1" and body["response"]["allowed"] is True
        assert body["response"]["patchType"] == "JSONPatch"


async def test_cli_serves_and_stops_cleanly_on_sigterm():
    async with hami_cluster(plugins=False, start_scheduler=False) as h:
        port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hami",
            "scheduler",
            "--kube-api-server",
            h.cluster.api_url,
            "--http_bind",
            f"127.0.0.1:{port}",
            "--metrics-bind-address",
            "127.0.0.1:0",
            "--scheduler-name",
            "hami-scheduler",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            async with aiohttp.ClientSession() as s:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline, "scheduler did not become ready"
                    await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = await asyncio.wait_for(proc.wait(), 15)
            output = (await proc.stdout.read()).decode()
            assert code == 0, output
            assert time.monotonic() - started < 10
            assert 'FLAG: --http_bind="127.0.0.1:' in output and "shutting down: signal SIGTERM" in output
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
