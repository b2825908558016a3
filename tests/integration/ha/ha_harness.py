"""Harness for the HA tests: the embedded cluster with ``hami scheduler`` replicas as subprocesses.

How traffic flows, as in a real deployment of the chart with several replicas:

* **kube-scheduler → Service → ready replica.** The fake kube-scheduler has one extender whose
  ``urlPrefix`` is :class:`ReadyService`, a TCP load balancer that, like a ClusterIP Service,
  sends each new connection to an endpoint whose readiness probe (``GET /readyz``) passed at
  the last probe; with none ready the connection is refused. Established connections stay where
  they are (conntrack), which is why followers close the connection when they refuse.
* **replica → apiserver through its own link.** Each replica reaches the apiserver through an
  :class:`ApiLink` (an HTTP proxy, ``--kube-api-server``). A link records every request it
  forwards and can be *partitioned*: requests then wait in the network; one whose client gives up
  first is lost (the client timed out and closed the connection), the others are delivered when
  the partition heals, as are watch events held back meanwhile.

Nodes register by their annotation (no device-plugin processes); the Lease is observed by polling
it through the embedded cluster's own client. Timings are short (Lease 3 s / renew deadline 2 s /
retry 0.5 s) so that failovers take seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from hami.core import keys
from hami.core.errors import DecodeError
from hami.core.ids import DeviceID
from hami.core.ledger import Ledger
from hami.core.model import DeviceInfo
from hami.core.node_annotations import decode_node_devices, encode_node_devices
from hami.core.pod_annotations import decode_pod_devices
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.kubelet import KubeletSettings
from hami.simulator.restclient import ApiError, node_path
from hami.simulator.scenario import gpu_pod
from hami.simulator.schedconfig import load_scheduler_config

JsonObj = dict[str, Any]

LEASE: Final = "hami-scheduler-extender"
NAMESPACE: Final = "default"
LEASE_DURATION: Final = 3.0
RENEW_DEADLINE: Final = 2.0
RETRY_PERIOD: Final = 0.5
PROBE_PERIOD: Final = 0.1  # the readiness probe of the Service's endpoints (the chart: 2 s)

GPUS: Final = 4
GPU_MEMORY: Final = 16000
GPU_SPLIT: Final = 20  # tasks per GPU: room for the 200-pod stream (the memory is what fills up)

WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HOP_HEADERS: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}
)

CONFIG: Final = """\
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: hami-scheduler
extenders:
- urlPrefix: "{url}"
  filterVerb: filter
  bindVerb: bind
  nodeCacheCapable: true
  weight: 1
  httpTimeout: 10s
  managedResources:
  - {{name: nvidia.com/gpu, ignoredByScheduler: true}}
  - {{name: nvidia.com/gpumem, ignoredByScheduler: true}}
  - {{name: nvidia.com/gpumem-percentage, ignoredByScheduler: true}}
  - {{name: nvidia.com/gpucores, ignoredByScheduler: true}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod_count(default: int = 40) -> int:
    """``HAMI_HA_PODS`` (e.g. 200 for the issue's full stream); CI runs 40."""
    return int(os.environ.get("HAMI_HA_PODS", default))


async def until(predicate: Callable[[], bool], *, within: float, what: str, poll: float = 0.02) -> float:
    """Wait for ``predicate``; returns the monotonic time it held."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {within:.1f}s")
        await asyncio.sleep(poll)
    return time.monotonic()


# ----------------------------------------------------------------------------------- network


@dataclasses.dataclass(frozen=True, slots=True)
class Forwarded:
    at: float  # monotonic time the request left for the apiserver
    method: str
    path: str
    query: str

    @property
    def resource(self) -> str:
        """``pods``, ``pods/binding``, ``nodes``, ``leases``, ``events``... ("" if not a resource)."""
        parts = [p for p in self.path.split("/") if p]
        rest = parts[2:] if parts[:2] == ["api", "v1"] else parts[3:] if parts[:1] == ["apis"] else []
        if rest[:1] == ["watch"]:
            rest = rest[1:]
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            rest = rest[2:]
        if not rest:
            return ""
        return rest[0] if len(rest) < 3 else f"{rest[0]}/{rest[2]}"


class ApiLink:
    """One replica's path to the apiserver (an HTTP proxy) that a test can partition."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.forwarded: list[Forwarded] = []
        self.lost: list[Forwarded] = []  # requests whose client gave up while partitioned (at: arrival)
        self.held: list[Forwarded] = []  # requests that waited out a partition and were then delivered
        self._open = asyncio.Event()
        self._open.set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that gives up cancels the held request (it is lost).
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def stop(self) -> None:
        self._open.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def partition(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    def writes(self, since: float, *, resources: Iterable[str] | None = None) -> list[Forwarded]:
        wanted = set(resources) if resources is not None else None
        return [
            f
            for f in self.forwarded
            if f.at >= since and f.method in WRITE_METHODS and (wanted is None or f.resource in wanted)
        ]

    def lists(self, resource: str) -> list[Forwarded]:
        """Collection reads (LIST, not WATCH, not GET of one object) of ``resource``."""
        out = []
        for f in self.forwarded:
            parts = [p for p in f.path.split("/") if p]
            if f.method != "GET" or "watch=" in f.query or "watch" in parts or not parts:
                continue
            if parts[-1] == resource:
                out.append(f)
        return out

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        held = not self._open.is_set()
        if held:
            arrived = Forwarded(time.monotonic(), request.method, request.path, request.query_string)
            try:
                await self._open.wait()
            except asyncio.CancelledError:
                self.lost.append(arrived)
                raise
        assert self._session is not None
        sent = Forwarded(time.monotonic(), request.method, request.path, request.query_string)
        self.forwarded.append(sent)
        if held:
            self.held.append(sent)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body or None,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await self._open.wait()  # a partition holds back watch events too
                await response.write(chunk)
            await response.write_eof()
            return response


class ReadyService:
    """A ClusterIP Service in front of the replicas: new connections go to a ready endpoint."""

    def __init__(self) -> None:
        self.endpoints: dict[str, int] = {}
        self.ready: tuple[str, ...] = ()
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._probe: asyncio.Task[None] | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._turn = itertools.count()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._probe = asyncio.create_task(self._probe_loop(), name="service readiness probe")

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _probe_loop(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:

            async def probe(name: str, port: int) -> str | None:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as r:
                        return name if r.status == 200 else None
                except (aiohttp.ClientError, OSError, TimeoutError):
                    return None

            while True:
                results = await asyncio.gather(*(probe(n, p) for n, p in sorted(self.endpoints.items())))
                self.ready = tuple(n for n in results if n is not None)
                await asyncio.sleep(PROBE_PERIOD)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            ready = self.ready
            if not ready:
                self.refused += 1
                return
            port = self.endpoints[ready[next(self._turn) % len(ready)]]
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                self.refused += 1
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


# ----------------------------------------------------------------------------------- replicas


@dataclasses.dataclass
class Replica:
    name: str  # also its Lease identity
    port: int
    metrics_port: int
    link: ApiLink
    log_path: Path
    lease: str = LEASE
    extra: tuple[str, ...] = ()
    proc: asyncio.subprocess.Process | None = None
    stopped: bool = False  # the test killed or terminated it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, kubeconfig: Path) -> None:
        argv = [
            sys.executable,
            "-m",
            "hami",
            "scheduler",
            f"--kubeconfig={kubeconfig}",
            f"--kube-api-server={self.link.url}",
            f"--http_bind=127.0.0.1:{self.port}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            "--scheduler-name=hami-scheduler",
            "--leader-elect",
            f"--leader-elect-resource-name={self.lease}",
            f"--leader-elect-resource-namespace={NAMESPACE}",
            f"--leader-elect-identity={self.name}",
            f"--leader-elect-lease-duration={LEASE_DURATION}",
            f"--leader-elect-renew-deadline={RENEW_DEADLINE}",
            f"--leader-elect-retry-period={RETRY_PERIOD}",
            "--reconcile-interval=0.5",
            "--shutdown-timeout=2",
            "--no-monitor",  # three replicas on one host would fight over the console's ports
            *self.extra,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.stopped = True
        self.proc.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        assert self.proc is not None
        self.stopped = True
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, within: float = 15.0) -> int:
        assert self.proc is not None
        async with asyncio.timeout(within):
            return await self.proc.wait()

    async def stop(self) -> None:
        if self.alive:
            self.terminate()
            try:
                await self.wait(10.0)
            except TimeoutError:
                self.kill()
                await self.wait(5.0)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def readyz(self, session: aiohttp.ClientSession) -> tuple[int, str]:
        """(status, body) of ``/readyz``; (0, error) when it does not answer."""
        try:
            async with session.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=1.0)) as r:
                return r.status, await r.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return 0, f"{type(e).__name__}: {e}"

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """Unlabelled samples of ``/metrics`` by name."""
        async with session.get(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=aiohttp.ClientTimeout(total=2.0)
        ) as r:
            text = await r.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or "{" in line or not line.strip():
                continue
            name, _, value = line.partition(" ")
            out[name] = float(value.split()[0])
        return out


# ----------------------------------------------------------------------------------- the Lease


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseView:
    at: float
    holder: str
    transitions: int


class LeaseWatch:
    """Polls the Lease through the cluster's own client; keeps every holder change."""

    def __init__(self, cluster: EmbeddedCluster, name: str = LEASE) -> None:
        self.cluster = cluster
        self.name = name
        self.history: list[LeaseView] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def current(self) -> LeaseView | None:
        return self.history[-1] if self.history else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="lease watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _poll(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{self.name}"
        while True:
            try:
                spec = (await self.cluster.client.get(path)).get("spec") or {}
            except ApiError:
                spec = None
            if spec is not None:
                holder = spec.get("holderIdentity") or ""
                transitions = int(spec.get("leaseTransitions") or 0)
                last = self.current
                if last is None or (last.holder, last.transitions) != (holder, transitions):
                    self.history.append(LeaseView(time.monotonic(), holder, transitions))
            await asyncio.sleep(0.03)

    def first_after(self, since: float, predicate: Callable[[LeaseView], bool]) -> LeaseView | None:
        return next((v for v in self.history if v.at >= since and predicate(v)), None)


# ----------------------------------------------------------------------------------- the cluster


@dataclasses.dataclass
class HaCluster:
    cluster: EmbeddedCluster
    service: ReadyService
    replicas: list[Replica]
    lease: LeaseWatch
    session: aiohttp.ClientSession
    root: Path

    def replica(self, identity: str) -> Replica | None:
        """The replica a Lease holder names (``<name>`` or, following kube-scheduler, ``<name>_<uuid>``)."""
        return next(
            (r for r in self.replicas if identity == r.name or identity.startswith(r.name + "_")), None
        )

    async def ready(self) -> list[Replica]:
        statuses = await asyncio.gather(*(r.readyz(self.session) for r in self.replicas))
        return [r for r, (status, _) in zip(self.replicas, statuses, strict=True) if status == 200]

    async def wait_leader(self, *, within: float = 40.0, exclude: Iterable[str] = ()) -> Replica:
        """The replica that holds the Lease and answers ``/readyz`` 200."""
        excluded = set(exclude)
        deadline = time.monotonic() + within
        while True:
            for replica in self.replicas:
                if replica.proc is not None and not replica.alive and not replica.stopped:
                    raise AssertionError(f"{replica.name} exited:\n{replica.log_tail()}")
            current = self.lease.current
            leader = self.replica(current.holder) if current is not None else None
            if leader is not None and leader.name not in excluded:
                if (await leader.readyz(self.session))[0] == 200:
                    return leader
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {r.name}\n{r.log_tail()}" for r in self.replicas)
                raise TimeoutError(f"no leader within {within}s; lease {self.lease.history}\n{logs}")
            await asyncio.sleep(0.05)

    async def wait_following(self, replica: Replica, *, within: float = 30.0) -> None:
        """Until ``replica`` has synced its caches and refuses as a follower."""
        deadline = time.monotonic() + within
        while True:
            status, text = await replica.readyz(self.session)
            if status == 503 and text.startswith("not leader"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{replica.name} not following: {status} {text}\n{replica.log_tail()}")
            await asyncio.sleep(0.05)

    async def pods(self) -> list[JsonObj]:
        return list((await self.cluster.client.get(f"/api/v1/namespaces/{NAMESPACE}/pods"))["items"])

    async def nodes(self) -> list[JsonObj]:
        return list((await self.cluster.client.get("/api/v1/nodes"))["items"])


def devices(node: str) -> str:
    return encode_node_devices(
        DeviceInfo(
            id=DeviceID(f"GPU-{node}-{i}"),
            index=i,
            count=GPU_SPLIT,
            devmem=GPU_MEMORY,
            devcore=100,
            type="NVIDIA A10",
            mode="hami-core",
            health=True,
        )
        for i in range(GPUS)
    )


async def register(cluster: EmbeddedCluster) -> None:
    for node in cluster.nodes:
        await cluster.client.patch(
            node_path(node.name),
            {"metadata": {"annotations": {keys.NODE_NVIDIA_REGISTER: devices(node.name)}}},
        )
        await cluster.client.patch(
            node_path(node.name, "status"),
            {"status": {"allocatable": {keys.RESOURCE_GPU: str(GPUS * GPU_SPLIT)}}},
        )


@contextlib.asynccontextmanager
async def ha_cluster(
    *,
    replicas: Sequence[str] = ("replica-0", "replica-1", "replica-2"),
    nodes: int = 3,
    lease: str = LEASE,
    extra: Sequence[str] = (),
) -> AsyncIterator[HaCluster]:
    """The cluster with one ``hami scheduler`` per name in ``replicas`` (its Lease identity, or its
    hostname when it follows kube-scheduler), all on Lease ``lease``, with ``extra`` flags."""
    root = Path(tempfile.mkdtemp(prefix="hha", dir="/tmp"))
    service = ReadyService()
    await service.start()
    path = root / "scheduler.yaml"
    path.write_text(CONFIG.format(url=service.url))
    config = dataclasses.replace(
        load_scheduler_config(path), pod_initial_backoff=0.05, pod_max_backoff=0.3, unschedulable_flush=0.5
    )
    session = aiohttp.ClientSession()
    started: list[Replica] = []
    links: list[ApiLink] = []
    try:
        async with EmbeddedCluster.running(
            nodes=nodes,
            gpus_per_node=GPUS,
            scheduler_config=config,
            state_dir=root / "c",
            kubelet_settings=KubeletSettings(heartbeat_interval=0.5),
        ) as cluster:
            await register(cluster)
            watch = LeaseWatch(cluster, lease)
            watch.start()
            for name in replicas:
                link = ApiLink(cluster.api_url)
                await link.start()
                links.append(link)
                replica = Replica(
                    name=name,
                    port=free_port(),
                    metrics_port=free_port(),
                    link=link,
                    log_path=root / f"{name}.log",
                    lease=lease,
                    extra=tuple(extra),
                )
                service.endpoints[replica.name] = replica.port
                started.append(replica)
            await asyncio.gather(*(r.start(cluster.kubeconfig_path) for r in started))
            h = HaCluster(
                cluster=cluster, service=service, replicas=started, lease=watch, session=session, root=root
            )
            try:
                yield h
            except BaseException:
                for r in started:
                    print(f"--- {r.name} log tail\n{r.log_tail(60)}")
                raise
            finally:
                await asyncio.gather(*(r.stop() for r in started), return_exceptions=True)
                await watch.stop()
    finally:
        for r in started:
            if r.alive:
                r.kill()
        for link in links:
            await link.stop()
        await service.stop()
        await session.close()
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------- pods and checks


def ha_pod(i: int, gpumem: int) -> JsonObj:
    return gpu_pod(f"ha-{i:03d}", gpumem=gpumem)


def memory_per_pod(pods: int, nodes: int) -> int:
    """Fill about 80 % of the cluster's GPU memory, so that a double allocation would overflow."""
    total = nodes * GPUS * GPU_MEMORY
    return max(1, int(total * 0.8) // pods)


def bound(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in pods if (p.get("spec") or {}).get("nodeName")]


def allocation_problems(pods: Iterable[Mapping[str, Any]], nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """The ledger invariant over what the API holds: every bound pod carries a readable decision
    for the node it is bound to, and no device holds more than it registered."""
    ledger = Ledger()
    problems: list[str] = []
    for node in nodes:
        meta = node.get("metadata") or {}
        value = (meta.get("annotations") or {}).get(keys.NODE_NVIDIA_REGISTER)
        if value:
            ledger.set_node_devices(meta["name"], decode_node_devices(value))
    for pod in bound(pods):
        meta = pod.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        node = pod["spec"]["nodeName"]
        if annotations.get(keys.VGPU_NODE) != node:
            problems.append(f"{meta['name']}: bound to {node}, decided for {annotations.get(keys.VGPU_NODE)}")
            continue
        try:
            decoded = decode_pod_devices(annotations)
        except DecodeError as e:
            problems.append(f"{meta['name']}: unreadable allocation: {e}")
            continue
        if not decoded:
            problems.append(f"{meta['name']}: bound without an allocation annotation")
            continue
        ledger.commit(meta["uid"], node, decoded, namespace=meta.get("namespace", ""))
    problems.extend(str(v) for v in ledger.check_invariants())
    return problems
