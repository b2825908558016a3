"""The fake kube-scheduler drives an HTTP extender exactly as kube-scheduler does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from simcluster_extender import RecordingExtender

from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.kubelet import KubeletSettings
from hami.simulator.scenario import container, gpu_pod, pod_manifest
from hami.simulator.schedconfig import SchedulerConfig, load_scheduler_config

FAST = KubeletSettings(heartbeat_interval=0.2)

HAMI_LIKE_CONFIG = """\
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: false
profiles:
- schedulerName: hami-scheduler
extenders:
- urlPrefix: "{url}"
  filterVerb: filter
  bindVerb: bind
  nodeCacheCapable: true
  weight: 1
  httpTimeout: 30s
  enableHTTPS: false
  managedResources:
  - name: nvidia.com/gpu
    ignoredByScheduler: true
  - name: nvidia.com/gpumem
    ignoredByScheduler: true
  - name: nvidia.com/gpucores
    ignoredByScheduler: true
"""


def fast(config: SchedulerConfig) -> SchedulerConfig:
    return dataclasses.replace(config, pod_initial_backoff=0.05, pod_max_backoff=0.2, unschedulable_flush=0.3)


@contextlib.asynccontextmanager
async def cluster_with_extender(
    short_dir: Path,
    make_config: Callable[[str], SchedulerConfig],
    *,
    ssl_context: ssl.SSLContext | None = None,
    **kwargs: Any,
) -> AsyncIterator[tuple[EmbeddedCluster, RecordingExtender]]:
    extender = RecordingExtender(api_url="")
    await extender.start(ssl_context)
    try:
        async with EmbeddedCluster.running(
            state_dir=short_dir,
            scheduler_config=fast(make_config(extender.url)),
            kubelet_settings=FAST,
            **kwargs,
        ) as cluster:
            extender.api_url = cluster.api_url
            yield cluster, extender
    finally:
        await extender.stop()


def yaml_config(short_dir: Path, text: str) -> Callable[[str], SchedulerConfig]:
    def make(url: str) -> SchedulerConfig:
        path = short_dir / "scheduler.yaml"
        path.write_text(text.format(url=url))
        return load_scheduler_config(path)

    return make


def bound(pod: dict[str, Any]) -> bool:
    return bool(pod["spec"].get("nodeName"))


async def events_of(cluster: EmbeddedCluster, name: str) -> list[dict[str, Any]]:
    listing = await cluster.client.get(
        "/api/v1/namespaces/default/events", {"fieldSelector": f"involvedObject.name={name}"}
    )
    return sorted(listing["items"], key=lambda e: int(e["metadata"]["resourceVersion"]))


async def wait_events(
    cluster: EmbeddedCluster, name: str, predicate: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    async with asyncio.timeout(10):
        while True:
            events = await events_of(cluster, name)
            if predicate(events):
                return events
            await asyncio.sleep(0.05)


def pod_scheduled(pod: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"), None)


async def test_filter_and_bind_speak_the_wire_protocol(short_dir):
    async with cluster_with_extender(short_dir, yaml_config(short_dir, HAMI_LIKE_CONFIG), nodes=2) as (
        cluster,
        ext,
    ):
        ext.filter_answer = lambda args: {
            "NodeNames": ["node-2"],
            "FailedNodes": {"node-1": "CardInsufficientMemory"},
            "Error": "",
        }
        created = await cluster.create_pod(gpu_pod("vgpu", gpumem=3000))
        pod = await cluster.wait_for_pod("default", "vgpu", bound)
        assert pod["spec"]["nodeName"] == "node-2"

        [args] = ext.calls["filter"]
        assert set(args) == {"Pod", "Nodes", "NodeNames"}
        assert args["Nodes"] is None and args["NodeNames"] == ["node-1", "node-2"]
        assert args["Pod"]["metadata"]["uid"] == created["metadata"]["uid"]
        assert args["Pod"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpumem"] == "3000"
        assert ext.calls["bind"] == [
            {
                "PodName": "vgpu",
                "PodNamespace": "default",
                "PodUID": created["metadata"]["uid"],
                "Node": "node-2",
            }
        ]
        assert ext.calls["prioritize"] == []  # no prioritizeVerb configured
        events = await wait_events(cluster, "vgpu", lambda es: any(e["reason"] == "Scheduled" for e in es))
        [scheduled] = [e for e in events if e["reason"] == "Scheduled"]
        assert scheduled["message"] == "Successfully assigned default/vgpu to node-2"
        assert scheduled["source"]["component"] == "hami-scheduler"
        assert pod_scheduled(pod)["status"] == "True"

        # A pod without any managed resource never reaches the extender.
        await cluster.create_pod(
            pod_manifest(
                "plain", containers=[container("c", requests={"cpu": "1"})], scheduler_name="hami-scheduler"
            )
        )
        await cluster.wait_for_pod("default", "plain", bound)
        assert len(ext.calls["filter"]) == 1 and len(ext.calls["bind"]) == 1


async def test_node_objects_prioritize_and_default_binding(short_dir):
    def config(url: str) -> SchedulerConfig:
        text = (
            HAMI_LIKE_CONFIG.replace("  bindVerb: bind\n", "  prioritizeVerb: prioritize\n")
            .replace("nodeCacheCapable: true", "nodeCacheCapable: false")
            .replace("weight: 1", "weight: 2")
        )
        return yaml_config(short_dir, text)(url)

    async with cluster_with_extender(short_dir, config, nodes=3) as (cluster, ext):
        # Lower-case keys: Go decodes case-insensitively, so must we.
        ext.filter_answer = lambda args: {
            "nodes": {"items": [n for n in args["Nodes"]["items"] if n["metadata"]["name"] != "node-1"]},
            "failedNodes": {"node-1": "NodeUnfitPod"},
        }
        ext.prioritize_answer = lambda args: [{"Host": "node-2", "Score": 1}, {"Host": "node-3", "Score": 7}]
        await cluster.create_pod(gpu_pod("vgpu"))
        pod = await cluster.wait_for_pod("default", "vgpu", bound)
        assert pod["spec"]["nodeName"] == "node-3"
        [args] = ext.calls["filter"]
        assert args["NodeNames"] is None
        assert [n["metadata"]["name"] for n in args["Nodes"]["items"]] == ["node-1", "node-2", "node-3"]
        assert args["Nodes"]["items"][0]["metadata"]["labels"]["gpu"] == "on"
        [prio] = ext.calls["prioritize"]
        assert [n["metadata"]["name"] for n in prio["Nodes"]["items"]] == ["node-2", "node-3"]
        assert ext.calls["bind"] == []  # no bindVerb: the scheduler POSTed pods/binding itself


async def test_filter_rejection_is_reported_and_retried(short_dir):
    async with cluster_with_extender(short_dir, yaml_config(short_dir, HAMI_LIKE_CONFIG), nodes=2) as (
        cluster,
        ext,
    ):
        ext.filter_answer = lambda args: {
            "NodeNames": [],
            "FailedNodes": {"node-1": "CardInsufficientMemory"},
            "FailedAndUnresolvableNodes": {"node-2": "NoGPU"},
        }
        await cluster.create_pod(gpu_pod("big", gpumem=200_000))
        pod = await cluster.wait_for_pod(
            "default", "big", lambda p: (pod_scheduled(p) or {}).get("reason") == "Unschedulable"
        )
        message = "0/2 nodes are available: 1 CardInsufficientMemory, 1 NoGPU."
        condition = pod_scheduled(pod)
        assert (condition["status"], condition["message"]) == ("False", message)
        events = await wait_events(cluster, "big", lambda es: any(e["count"] >= 2 for e in es))
        [failed] = events  # repeats of the same failure bump one event's count
        assert (failed["type"], failed["reason"], failed["message"]) == (
            "Warning",
            "FailedScheduling",
            message,
        )
        assert failed["involvedObject"]["uid"] == pod["metadata"]["uid"]
        assert len(ext.calls["filter"]) >= 2  # retried after the backoff

        ext.filter_answer = lambda args: {"NodeNames": ["node-1"]}
        pod = await cluster.wait_for_pod("default", "big", bound)
        assert pod["spec"]["nodeName"] == "node-1"


async def test_extender_errors_fail_the_cycle_unless_ignorable(short_dir):
    async with cluster_with_extender(short_dir, yaml_config(short_dir, HAMI_LIKE_CONFIG), nodes=1) as (
        cluster,
        ext,
    ):
        ext.filter_answer = lambda args: {"Error": "failed to decode node annotation"}
        await cluster.create_pod(gpu_pod("err"))
        pod = await cluster.wait_for_pod(
            "default", "err", lambda p: (pod_scheduled(p) or {}).get("reason") == "SchedulerError"
        )
        assert pod_scheduled(pod)["message"] == "failed to decode node annotation"

    def unreachable(url: str) -> SchedulerConfig:
        text = HAMI_LIKE_CONFIG.replace("  weight: 1\n", "  weight: 1\n  ignorable: true\n")
        return yaml_config(short_dir, text)("http://127.0.0.1:9")  # nothing listens on the discard port

    async with cluster_with_extender(short_dir, unreachable, nodes=1) as (cluster, _):
        await cluster.create_pod(gpu_pod("ignored"))
        pod = await cluster.wait_for_pod("default", "ignored", bound)
        assert pod["spec"]["nodeName"] == "node-1"  # filter and bind errors skipped; default binder used


async def test_bind_error_is_reported_and_retried(short_dir):
    async with cluster_with_extender(short_dir, yaml_config(short_dir, HAMI_LIKE_CONFIG), nodes=1) as (
        cluster,
        ext,
    ):
        ext.bind_errors = ["node lock not acquired"]
        await cluster.create_pod(gpu_pod("retry"))
        pod = await cluster.wait_for_pod("default", "retry", bound)
        assert len(ext.calls["bind"]) == 2
        events = await wait_events(cluster, "retry", lambda es: any(e["reason"] == "Scheduled" for e in es))
        assert [e["reason"] for e in events] == ["FailedScheduling", "Scheduled"]
        assert events[0]["message"] == "binding rejected: node lock not acquired"
        assert pod_scheduled(pod)["status"] == "True"


async def test_http_timeout_fails_the_filter(short_dir):
    def slow(url: str) -> SchedulerConfig:
        return yaml_config(short_dir, HAMI_LIKE_CONFIG.replace("httpTimeout: 30s", "httpTimeout: 200ms"))(url)

    async with cluster_with_extender(short_dir, slow, nodes=1) as (cluster, ext):
        ext.filter_delay = 1.0
        await cluster.create_pod(gpu_pod("slow"))
        pod = await cluster.wait_for_pod(
            "default", "slow", lambda p: (pod_scheduled(p) or {}).get("reason") == "SchedulerError"
        )
        assert pod_scheduled(pod)["message"] == (
            f'Post "{ext.url}/filter": context deadline exceeded (Client.Timeout exceeded)'
        )
        ext.filter_delay = 0.0
        await cluster.wait_for_pod("default", "slow", bound)


def self_signed(directory: Path) -> tuple[ssl.SSLContext, bytes]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert.read_bytes()


async def test_https_extender_with_and_without_ca(short_dir):
    context, pem = self_signed(short_dir)
    insecure = HAMI_LIKE_CONFIG.replace("enableHTTPS: false", "enableHTTPS: true")
    async with cluster_with_extender(
        short_dir, yaml_config(short_dir, insecure), ssl_context=context, nodes=1
    ) as (
        cluster,
        ext,
    ):
        assert ext.url.startswith("https://")
        await cluster.create_pod(gpu_pod("tls"))
        await cluster.wait_for_pod("default", "tls", bound)
        assert len(ext.calls["filter"]) == 1 and len(ext.calls["bind"]) == 1

    verified = insecure.replace(
        "  enableHTTPS: true\n",
        f"  enableHTTPS: true\n  tlsConfig:\n    caData: {base64.b64encode(pem).decode()}\n",
    )
    assert "caData" in verified
    async with cluster_with_extender(
        short_dir, yaml_config(short_dir, verified), ssl_context=context, nodes=1
    ) as (
        cluster,
        ext,
    ):
        await cluster.create_pod(gpu_pod("tls-ca"))
        await cluster.wait_for_pod("default", "tls-ca", bound)
        assert len(ext.calls["bind"]) == 1

    # A CA that did not sign the extender's certificate: the scheduler refuses to talk to it.
    other = short_dir / "other"
    other.mkdir()
    _, other_pem = self_signed(other)
    wrong = insecure.replace(
        "  enableHTTPS: true\n",
        f"  enableHTTPS: true\n  tlsConfig:\n    caData: {base64.b64encode(other_pem).decode()}\n",
    )
    async with cluster_with_extender(
        short_dir, yaml_config(short_dir, wrong), ssl_context=context, nodes=1
    ) as (
        cluster,
        ext,
    ):
        await cluster.create_pod(gpu_pod("tls-wrong"))
        pod = await cluster.wait_for_pod(
            "default", "tls-wrong", lambda p: (pod_scheduled(p) or {}).get("reason") == "SchedulerError"
        )
        assert "certificate verify failed" in pod_scheduled(pod)["message"]
        assert ext.calls["filter"] == []
