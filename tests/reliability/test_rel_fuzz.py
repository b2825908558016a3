"""Malformed input fuzzed with hypothesis against the real HTTP handlers: extender JSON and
AdmissionReviews posted to a running scheduler role, malformed node and pod annotations written
through the API it watches, and corrupt shared-region files under a monitor. Zero crashes: every
input gets a well-formed answer (an extender ``Error``, a 4xx, a denied review) or a log line, the
role keeps serving, and the ledger keeps its invariants."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from rel_harness import free_port, until, until_async

from hami.config.settings import NetworkingSettings, WatchingSettings
from hami.core import keys
from hami.core.ids import DeviceID
from hami.core.model import DeviceInfo
from hami.core.node_annotations import encode_node_devices
from hami.k8s.auth import Credentials
from hami.k8s.client import HttpKubeApi
from hami.metrics.http import serve_metrics
from hami.monitor.gpuinfo import FakeGpuInfo, mock_gpus
from hami.monitor.metrics import MonitorCollector
from hami.monitor.pods import InMemoryPodSource
from hami.monitor.service import MonitorConfig, MonitorService
from hami.scheduler.role import SchedulerRole
from hami.scheduler.settings import SchedulerSection, SchedulerSettings
from hami.simulator.resources import NODES, PODS
from hami.simulator.scenario import NodeSpec, gpu_pod, node_manifest
from hami.simulator.server import ApiServer

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

FUZZ = settings(
    max_examples=int(40 * float(os.environ.get("HAMI_SOAK_SCALE", "1"))),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HAMI_KEYS = (
    keys.VGPU_DEVICES_ALLOCATED,
    keys.VGPU_DEVICES_TO_ALLOCATE,
    keys.VGPU_NODE,
    keys.BIND_PHASE,
    keys.BIND_TIME,
    keys.USE_GPUUUID,
    keys.NOUSE_GPUUUID,
    keys.USE_GPUTYPE,
    keys.NOUSE_GPUTYPE,
    keys.NUMA_BIND,
    keys.GPU_SCHEDULER_POLICY,
    keys.NODE_SCHEDULER_POLICY,
    keys.VGPU_MODE,
)
RESOURCES = (keys.RESOURCE_GPU, keys.RESOURCE_GPUMEM, keys.RESOURCE_GPUMEM_PERCENTAGE, keys.RESOURCE_GPUCORES)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
quantities = st.one_of(
    st.integers(-5, 10**12).map(str),
    st.sampled_from(["", "abc", "1.5", "1e3", "1Gi", "-1", "0x10", "1m", " 2", "9" * 40]),
    st.text(max_size=8),
    st.integers(0, 100),
)
allocation_values = st.one_of(
    st.text(alphabet="GPU-abc0123,:;NVIDIA[]", max_size=60),
    st.sampled_from(
        ["GPU-x,NVIDIA,1000,10:;", "GPU-x,NVIDIA,-1,10:;", "GPU-x,NVIDIA,1000:;", ";;;", ":", "GPU-x,,1,1:;"]
    ),
)
# Keys the API server accepts (it rejects malformed keys itself); values anything.
annotation_keys = st.sampled_from(HAMI_KEYS) | st.from_regex(r"\A[a-z]([a-z0-9.-]{0,8}[a-z0-9])?\Z")
annotations = st.dictionaries(annotation_keys, st.text(max_size=30) | allocation_values, max_size=5)


@st.composite
def fuzzed_pods(draw: st.DrawFn) -> dict[str, Any]:
    containers = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.text(max_size=8),
                    "resources": st.fixed_dictionaries(
                        {
                            "limits": st.dictionaries(
                                st.sampled_from(RESOURCES) | st.text(max_size=8), quantities
                            )
                        }
                    ),
                }
            ),
            max_size=3,
        )
    )
    meta = {
        "name": draw(st.text(max_size=12)),
        "namespace": draw(st.sampled_from(["default", "", "x" * 70])),
        "uid": draw(st.uuids().map(str) | st.text(max_size=5)),
        "annotations": draw(annotations),
    }
    return draw(
        st.sampled_from(
            [
                {"metadata": meta, "spec": {"containers": containers}},
                {"metadata": meta, "spec": containers},
                {"metadata": meta},
                {"spec": {"containers": containers}},
            ]
        )
    )


# Bodies JSON encoders cannot produce: deep nesting, huge numbers, duplicate keys, bad UTF-8.
raw_bodies = st.sampled_from(
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"Pod": {"metadata": {"name": "p", "uid": 1' + b"0" * 400 + b'}}, "NodeNames": ["node-1"]}',
        b'{"Pod": 1e999, "NodeNames": null}',
        b'{"Pod": {}, "Pod": [], "NodeNames": ["node-1"]}',
        b'{"PodName": "\xff\xfe", "Node": "node-1"}',
        b"",
        b"null",
    ]
)
extender_args = st.fixed_dictionaries(
    {
        "Pod": fuzzed_pods() | json_values,
        "NodeNames": st.none()
        | st.lists(st.sampled_from(["node-1", "node-2", "nope"]) | st.text(max_size=6)),
        "Nodes": st.none() | json_values,
    }
)
bind_args = st.fixed_dictionaries(
    {
        "PodName": st.text(max_size=10) | json_values,
        "PodNamespace": st.sampled_from(["default", ""]) | st.text(max_size=5),
        "PodUID": st.uuids().map(str) | st.text(max_size=5),
        "Node": st.sampled_from(["node-1", "node-2", ""]) | st.text(max_size=5),
    }
)
admission_reviews = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1", "v1", ""]),
        "kind": st.sampled_from(["AdmissionReview", "Pod", ""]),
        "request": st.fixed_dictionaries(
            {
                "uid": st.uuids().map(str) | st.text(max_size=5) | st.integers(-(2**63), 2**63 - 1),
                "kind": st.just({"group": "", "version": "v1", "kind": "Pod"}) | json_values,
                "operation": st.sampled_from(["CREATE", "UPDATE", "DELETE", "x"]),
                "namespace": st.sampled_from(["default", ""]),
                "object": fuzzed_pods() | json_values,
            }
        )
        | json_values,
    }
)


def registration(node: str, count: int = 2) -> str:
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
        for i in range(count)
    )


@dataclass
class Fuzzed:
    sim: ApiServer
    role: SchedulerRole
    task: asyncio.Task[None]
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.role.url

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        async with self.http.post(
            f"{self.url}{path}", data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            return resp.status, await resp.read()

    def alive(self) -> None:
        assert not self.task.done(), f"the scheduler role stopped: {self.task}"
        assert self.role.state.ledger.check_invariants() == []


@contextlib.asynccontextmanager
async def fuzzed_scheduler() -> AsyncIterator[Fuzzed]:
    async with ApiServer.running() as sim:
        for name in ("node-1", "node-2"):
            node = node_manifest(NodeSpec(name=name, gpus=0))
            node["metadata"]["annotations"] = {keys.NODE_NVIDIA_REGISTER: registration(name)}
            node["status"]["allocatable"][keys.RESOURCE_GPU] = "20"
            sim.store.create(NODES, None, node)
        api = HttpKubeApi(Credentials.anonymous(sim.url), NetworkingSettings())
        role = SchedulerRole(
            SchedulerSettings(
                scheduler=SchedulerSection(
                    http_bind=f"127.0.0.1:{free_port()}",
                    metrics_bind_address="127.0.0.1:0",
                    scheduler_name="hami-scheduler",
                    cache_wait=0.05,
                    bind_wait_timeout=1.0,
                ),
                watching=WatchingSettings(min_timeout=30, max_timeout=60, inactivity_timeout=30),
            ),
            api,
            metrics_registry=CollectorRegistry(),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(role.run(stop))
        try:
            await until(
                lambda: (role.started.is_set() and role.serving_refusal() is None) or task.done(), within=20
            )
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                yield Fuzzed(sim=sim, role=role, task=task, http=http)
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await api.close()


@pytest.fixture
async def fuzzed() -> AsyncIterator[Fuzzed]:
    async with fuzzed_scheduler() as f:
        f.alive()
        yield f
        f.alive()
        async with f.http.get(f"{f.url}/healthz") as resp:
            assert resp.status == 200


def as_body(value: Any) -> bytes:
    return value if isinstance(value, bytes) else orjson.dumps(value)


@FUZZ
@given(
    path=st.sampled_from(["/filter", "/prioritize", "/bind"]),
    body=st.one_of(extender_args, bind_args, json_values, st.binary(max_size=64), raw_bodies),
)
async def test_fuzzed_extender_requests_get_clear_answers(fuzzed: Fuzzed, path: str, body: Any) -> None:
    status, raw = await fuzzed.post(path, as_body(body))
    assert status < 500, raw[:300]
    if status == 200:
        answer = orjson.loads(raw)
        if path == "/prioritize":
            assert isinstance(answer, list | dict)
        else:
            assert isinstance(answer, dict) and "Error" in answer
            if answer["Error"]:
                assert isinstance(answer["Error"], str)
    assert fuzzed.sim.store.objects(PODS) == []  # nothing was created or bound
    fuzzed.alive()


@FUZZ
@given(review=admission_reviews | json_values | st.binary(max_size=64) | raw_bodies)
async def test_fuzzed_admission_reviews_get_reviews_back(fuzzed: Fuzzed, review: Any) -> None:
    status, raw = await fuzzed.post("/webhook", as_body(review))
    assert status == 200, raw[:300]
    answer = orjson.loads(raw)
    response = answer["response"]
    assert isinstance(response["allowed"], bool) and response["status"]["code"] in (200, 400, 403)
    if not response["allowed"]:
        assert response["status"]["message"]
    fuzzed.alive()


async def caught_up(fuzzed: Fuzzed, *, node_rv: int, pod_rv: int) -> None:
    pods, nodes = fuzzed.role.state.pods, fuzzed.role.state.nodes
    assert pods is not None and nodes is not None

    def seen() -> bool:
        return (
            int(nodes.reflector.last_resource_version or 0) >= node_rv
            and int(pods.reflector.last_resource_version or 0) >= pod_rv
        )

    await until(seen, within=10, what="the scheduler's caches caught up")


@FUZZ
@given(
    registered=st.text(max_size=80) | json_values.map(lambda v: orjson.dumps(v).decode()),
    pod_notes=annotations,
)
async def test_fuzzed_annotations_never_crash_the_scheduler(
    fuzzed: Fuzzed, registered: str, pod_notes: dict[str, str]
) -> None:
    sim = fuzzed.sim
    node = sim.store.mutate(
        NODES,
        None,
        "node-2",
        lambda n: n["metadata"]["annotations"].update({keys.NODE_NVIDIA_REGISTER: registered}),
    )
    odd = gpu_pod("odd", gpumem=1000, annotations={keys.VGPU_NODE: "node-1", **pod_notes})
    odd["spec"]["nodeName"] = "node-1"
    pod = sim.store.create(PODS, "default", odd)
    try:
        await caught_up(
            fuzzed,
            node_rv=int(node["metadata"]["resourceVersion"]),
            pod_rv=int(pod["metadata"]["resourceVersion"]),
        )
        args = {"Pod": gpu_pod("probe", gpumem=1000), "NodeNames": ["node-1", "node-2"], "Nodes": None}
        args["Pod"]["metadata"]["uid"] = "00000000-0000-4000-8000-000000000001"
        status, raw = await fuzzed.post("/filter", orjson.dumps(args))
        assert status == 200, raw[:300]
        answer = orjson.loads(raw)
        assert isinstance(answer.get("Error"), str)
        # The probe fits node-1 (at most one 1000 MiB pod there besides it) unless a decision was
        # written for it; a readable node-2 may win too. Either way no crash and no over-commit.
        fuzzed.alive()
        async with fuzzed.http.get(f"{fuzzed.url}/why/default/probe") as resp:
            assert resp.status in (200, 404)
    finally:
        sim.store.delete(PODS, "default", "odd", grace_period=0)
        sim.store.mutate(
            NODES,
            None,
            "node-2",
            lambda n: n["metadata"]["annotations"].update(
                {keys.NODE_NVIDIA_REGISTER: registration("node-2")}
            ),
        )


# ------------------------------------------------------------------------------- region files

UID = "5e0b7d39-5e1c-4c38-9f7a-0a0a0a0a0a0a"


def monitored_pod(uid: str) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": "p", "namespace": "default"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "main"}]},
        "status": {"phase": "Running"},
    }


@st.composite
def corrupted_regions(draw: st.DrawFn, base: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "garbage", "header"]))
    data = bytearray(base)
    if kind == "flip":
        for offset, value in draw(
            st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), max_size=30)
        ):
            data[offset] = value
    elif kind == "truncate":
        data = data[: draw(st.integers(1, len(base) - 1))]
    elif kind == "header":
        for offset, value in draw(
            st.lists(st.tuples(st.integers(0, 64), st.integers(0, 255)), min_size=1, max_size=8)
        ):
            data[offset] = value
    else:
        data = bytearray(draw(st.binary(min_size=1, max_size=4096)))
    return bytes(data)


@dataclass
class Monitored:
    service: MonitorService
    metrics_url: str
    directory: Path
    http: aiohttp.ClientSession
    written: int = 0


@pytest.fixture
async def monitored() -> AsyncIterator[Monitored]:
    root = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
    service = MonitorService(
        MonitorConfig(node_name="node-1", containers_dir=root, feedback=True, mig_lock_file=None),
        InMemoryPodSource([monitored_pod(UID)]),
        FakeGpuInfo(mock_gpus(1)),
    )
    registry = CollectorRegistry()
    registry.register(MonitorCollector(service.snapshot))
    server = await serve_metrics(registry, "127.0.0.1", 0)
    directory = root / f"{UID}_main"
    directory.mkdir()
    try:
        async with aiohttp.ClientSession() as http:
            yield Monitored(
                service=service, metrics_url=f"{server.url}/metrics", directory=directory, http=http
            )
    finally:
        await server.close()
        shutil.rmtree(root, ignore_errors=True)


BASE_REGION = (
    Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "h100" / "vgpu_c_1_hold.cache"
).read_bytes()


@FUZZ
@given(region=corrupted_regions(BASE_REGION))
async def test_fuzzed_region_files_never_crash_the_monitor(monitored: Monitored, region: bytes) -> None:
    # A new file (new inode) per example, as a restarted container's HAMi-core writes one.
    for old in monitored.directory.iterdir():
        old.unlink()
    monitored.written += 1
    (monitored.directory / f"r{monitored.written}.cache").write_bytes(region)
    snapshot = await monitored.service.tick()  # never raises: a bad region is counted and logged
    assert snapshot.unreadable + snapshot.waiting + len(snapshot.containers) == 1
    async with monitored.http.get(monitored.metrics_url) as resp:
        assert resp.status == 200
        await resp.read()


async def test_region_truncated_under_a_running_monitor_process(h100_fixtures: Path) -> None:
    """A region shrunk in place while the monitor has it mapped must not kill the process
    (touching a ``MAP_SHARED`` mapping past the file's new end raises SIGBUS)."""
    root = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
    port = free_port()
    log = root / "monitor.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        async with ApiServer.running() as sim, aiohttp.ClientSession() as http:
            node = node_manifest(NodeSpec(name="node-1", gpus=0))
            sim.store.create(NODES, None, node)
            pod = gpu_pod("p", gpumem=1000, node_name="node-1")
            uid = sim.store.create(PODS, "default", pod)["metadata"]["uid"]
            directory = root / "containers" / f"{uid}_main"
            directory.mkdir(parents=True)
            region = directory / "region.cache"
            region.write_bytes((h100_fixtures / "vgpu_c_1_hold.cache").read_bytes())
            kubeconfig = sim.write_kubeconfig(root / "kubeconfig")
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "hami", "monitor", "--node-name", "node-1",
                    "--kubeconfig", str(kubeconfig), "--backend", "mock",
                    "--containers-dir", str(root / "containers"), "--metrics-bind", "127.0.0.1",
                    "--metrics-port", str(port), "--scan-interval", "0.2", "--log-level", "info",
                    stdout=out, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip

            async def scraped(marker: str) -> bool:
                assert proc is not None and proc.returncode is None, log.read_text()[-3000:]
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        return resp.status == 200 and marker in await resp.text()
                except aiohttp.ClientError:
                    return False

            await until_async(
                lambda: scraped('podname="p"'), within=60, what="the monitor exports the container"
            )
            os.truncate(region, 512)  # same inode, mapped by the monitor, now 512 bytes long
            started = time.monotonic()
            while time.monotonic() - started < 2.0:  # about ten scans
                assert await scraped(""), "metrics stopped answering"
                await asyncio.sleep(0.2)
            assert proc.returncode is None, f"monitor died ({proc.returncode}):\n{log.read_text()[-3000:]}"
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0, log.read_text()[-3000:]
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        shutil.rmtree(root, ignore_errors=True)
