"""The reliability harness: the embedded cluster with HAMi's roles as real processes.

* :class:`RoleProcess`: ``python -m hami <role> ...`` as a subprocess against the cluster's
  kubeconfig, with :meth:`~RoleProcess.kill` (SIGKILL), :meth:`~RoleProcess.terminate` (SIGTERM)
  and :meth:`~RoleProcess.restart`; output goes to a log file (its tail is shown on failures).
* :class:`ReadyProxy`: what a Service in front of the scheduler replicas does — forwards
  kube-scheduler's extender calls to a replica whose ``/readyz`` answers 200 (the leader).
* :func:`rel_cluster` / :class:`RelCluster`: the embedded cluster, its chaos switches
  (:class:`hami.simulator.chaos.ClusterChaos`), one ``hami device-plugin --backend mock`` per node,
  ``hami scheduler`` replicas and optionally ``hami monitor``.

``HAMI_SOAK_SCALE`` (default 1) multiplies the scenario sizes; ``scripts/soak.py`` sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from rel_invariants import InvariantSettings
from rel_monitor import InvariantMonitor

from hami.core import keys
from hami.simulator.chaos import ClusterChaos
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.kubelet import FakeKubelet, KubeletSettings
from hami.simulator.resources import NODES, PODS
from hami.simulator.restclient import ApiError
from hami.simulator.schedconfig import SchedulerConfig, load_scheduler_config

JsonObj = dict[str, Any]
SCALE_ENV = "HAMI_SOAK_SCALE"
GPU_RESOURCE = keys.RESOURCE_GPU
SCHEDULER_CONFIG = """\
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
  httpTimeout: 30s
  managedResources:
  - {{name: nvidia.com/gpu, ignoredByScheduler: true}}
  - {{name: nvidia.com/gpumem, ignoredByScheduler: true}}
  - {{name: nvidia.com/gpumem-percentage, ignoredByScheduler: true}}
  - {{name: nvidia.com/gpucores, ignoredByScheduler: true}}
"""
LEDGER_FAMILIES = (
    "GPUDeviceMemoryAllocated",
    "GPUDeviceCoreAllocated",
    "GPUDeviceSharedNum",
    "vGPUMemoryAllocated",
    "vGPUCoreAllocated",
)


def soak_scale() -> float:
    raw = os.environ.get(SCALE_ENV, "1")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{SCALE_ENV}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"{SCALE_ENV} must be > 0, got {raw!r}")
    return value


def scaled(ci: int, *, cap: int | None = None) -> int:
    """``ci`` × ``HAMI_SOAK_SCALE``, at most ``cap``."""
    value = max(1, round(ci * soak_scale()))
    return min(value, cap) if cap is not None else value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    predicate: Callable[[], bool], *, within: float = 15.0, poll: float = 0.05, what: str = ""
) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not reached within {within}s: {what or predicate}")
        await asyncio.sleep(poll)


async def until_async(
    predicate: Callable[[], Awaitable[bool]], *, within: float = 15.0, poll: float = 0.1, what: str = ""
) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not reached within {within}s: {what or predicate}")
        await asyncio.sleep(poll)


def _child_env() -> dict[str, str]:
    # HAMI_* variables are settings of the roles: the test's own must not leak into them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMI_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RoleProcess:
    """One ``python -m hami <argv>`` subprocess; its output goes to ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.exits: list[int] = []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: hami {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hami",
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=_child_env(),
            )
        self.starts += 1

    async def _wait(self, within: float) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), within)
        self.exits.append(code)
        return code

    async def kill(self) -> int:
        """SIGKILL: no cleanup at all (a crash, an OOM kill, a node losing power)."""
        if not self.alive:
            raise RuntimeError(f"{self.name} is not running")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return await self._wait(10.0)

    async def terminate(self, *, within: float = 20.0) -> int:
        """SIGTERM and wait for a clean exit; a process that does not exit in time is killed and
        the failure raised (a role must drain within its shutdown timeout)."""
        if not self.alive:
            raise RuntimeError(f"{self.name} is not running")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await self._wait(within)
        except TimeoutError:
            self.proc.send_signal(signal.SIGKILL)
            await self._wait(10.0)
            raise AssertionError(
                f"{self.name} did not exit within {within}s of SIGTERM:\n{self.log_tail()}"
            ) from None

    async def restart(self, *, kill: bool = False) -> None:
        if self.alive:
            await (self.kill() if kill else self.terminate())
        await self.start()

    async def stop(self) -> None:
        """Cleanup: SIGTERM, then SIGKILL; never raises."""
        if not self.alive:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await self._wait(15.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            await self._wait(10.0)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class ReadyProxy:
    """Forwards HTTP requests to the first backend whose ``/readyz`` is 200 (a Service's endpoints)."""

    def __init__(self) -> None:
        self.backends: list[str] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ready: tuple[float, str | None] = (0.0, None)
        self.forwarded = 0
        self.unavailable = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=35))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _pick(self) -> str | None:
        checked, backend = self._ready
        if backend is not None and time.monotonic() - checked < 0.2:
            return backend
        assert self._session is not None
        for candidate in list(self.backends):
            try:
                async with self._session.get(
                    f"{candidate}/readyz", timeout=aiohttp.ClientTimeout(total=1)
                ) as resp:
                    if resp.status == 200:
                        self._ready = (time.monotonic(), candidate)
                        return candidate
            except (aiohttp.ClientError, TimeoutError):
                continue
        self._ready = (0.0, None)
        return None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        backend = await self._pick()
        if backend is None:
            self.unavailable += 1
            return web.Response(status=503, text="no ready scheduler replica")
        assert self._session is not None
        body = await request.read()
        try:
            async with self._session.request(
                request.method,
                f"{backend}{request.rel_url}",
                data=body,
                headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
            ) as resp:
                payload = await resp.read()
                self.forwarded += 1
                return web.Response(
                    status=resp.status,
                    body=payload,
                    headers={"Content-Type": resp.headers.get("Content-Type", "application/json")},
                )
        except (aiohttp.ClientError, TimeoutError) as e:
            self._ready = (0.0, None)
            self.unavailable += 1
            return web.Response(status=503, text=f"scheduler replica unreachable: {e}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerReplica:
    process: RoleProcess
    port: int
    metrics_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


class _View:
    """The invariant checker's view of a :class:`RelCluster`."""

    def __init__(self, cluster: EmbeddedCluster) -> None:
        self._cluster = cluster

    def pods(self) -> list[JsonObj]:
        return self._cluster.api.store.objects(PODS)

    def nodes(self) -> list[JsonObj]:
        return self._cluster.api.store.objects(NODES)

    def kubelets(self) -> Mapping[str, FakeKubelet]:
        return {n.name: n.kubelet for n in self._cluster.nodes}


class RelCluster:
    def __init__(self, cluster: EmbeddedCluster, root: Path, proxy: ReadyProxy) -> None:
        self.cluster = cluster
        self.root = root
        self.proxy = proxy
        self.chaos = ClusterChaos(cluster)
        self.plugins: dict[str, RoleProcess] = {}
        self.monitors: dict[str, RoleProcess] = {}
        self.monitor_ports: dict[str, int] = {}
        self.replicas: list[SchedulerReplica] = []
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    # ---- roles --------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> str:
        return str(self.cluster.kubeconfig_path)

    def host_root(self, node: str) -> Path:
        return self.root / "host" / node

    def plugin_argv(self, node: str) -> list[str]:
        n = self.cluster.node(node)
        return [
            "device-plugin", "--backend", "mock", "--node-name", node,
            "--plugin-dir", str(n.plugin_dir), "--kubeconfig", self.kubeconfig,
            "--mock-gpu-file", str(n.mock_gpu_file), "--host-root", str(self.host_root(node)),
            "--cdi-dir", str(self.root / "cdi" / node), "--register-interval", "1",
            "--log-level", "info", "--no-monitor",
        ]  # fmt: skip

    async def start_plugin(self, node: str, *, wait: bool = True) -> RoleProcess:
        proc = self.plugins.get(node)
        if proc is None:
            proc = RoleProcess(
                f"device-plugin {node}", self.plugin_argv(node), self.root / "logs" / f"dp-{node}.log"
            )
            self.plugins[node] = proc
        await proc.start()
        if wait:
            await self.wait_plugin(node)
        return proc

    async def wait_plugin(self, node: str, *, within: float = 60.0) -> None:
        """Until the node's kubelet has the plugin registered with healthy devices."""
        kubelet = self.cluster.kubelet(node)
        proc = self.plugins[node]

        def ready() -> bool:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited:\n{proc.log_tail()}")
            return kubelet.devices.capacity().get(GPU_RESOURCE, (0, 0))[1] > 0

        await until(ready, within=within, what=f"{proc.name} registered")

    def scheduler_argv(self, port: int, metrics_port: int, *extra: str) -> list[str]:
        return [
            "scheduler", "--kubeconfig", self.kubeconfig,
            "--http_bind", f"127.0.0.1:{port}", "--metrics-bind-address", f"127.0.0.1:{metrics_port}",
            "--scheduler-name", "hami-scheduler", "--reconcile-interval", "0.5",
            "--bind-wait-timeout", "10", "--watching-min-timeout", "30", "--watching-max-timeout", "60",
            "--watching-inactivity-timeout", "30", "--watching-backoff-initial", "0.05",
            "--watching-backoff-maximum", "1", "--networking-request-timeout", "5",
            "--log-level", "info", "--no-monitor", *extra,
        ]  # fmt: skip

    async def start_scheduler(self, *extra: str, wait: bool = True) -> SchedulerReplica:
        port, metrics_port = free_port(), free_port()
        index = len(self.replicas) + 1
        proc = RoleProcess(
            f"scheduler-{index}",
            self.scheduler_argv(port, metrics_port, *extra),
            self.root / "logs" / f"scheduler-{index}.log",
        )
        replica = SchedulerReplica(process=proc, port=port, metrics_port=metrics_port)
        self.replicas.append(replica)
        self.proxy.backends.append(replica.url)
        await proc.start()
        if wait:
            await self.wait_scheduler(replica)
        return replica

    async def ready(self, replica: SchedulerReplica) -> bool:
        try:
            async with self._http.get(f"{replica.url}/readyz") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def serving(self, replica: SchedulerReplica) -> bool:
        """Up (``/healthz`` answers), leader or not."""
        try:
            async with self._http.get(f"{replica.url}/healthz") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_scheduler(
        self, replica: SchedulerReplica, *, within: float = 60.0, leader: bool = True
    ) -> None:
        """Until the replica is ready (``leader``) or at least up, and sees every registered node."""
        proc = replica.process

        async def ok() -> bool:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited:\n{proc.log_tail()}")
            if not await (self.ready(replica) if leader else self.serving(replica)):
                return False
            registered = sum(1 for n in self.cluster.nodes if self.cluster.kubelet(n.name).devices.capacity())
            return len(await self.ledger(replica, families=("GPUDeviceCoreAllocated",))) >= registered * max(
                (n.spec.gpus for n in self.cluster.nodes), default=0
            )

        await until_async(ok, within=within, what=f"{proc.name} ready")

    async def ledger(
        self, replica: SchedulerReplica, *, families: Sequence[str] = LEDGER_FAMILIES
    ) -> dict[str, float]:
        """The scheduler's usage view (its ledger as HAMi 2.8's metrics export it): sample → value."""
        try:
            async with self._http.get(replica.metrics_url) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line:
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in families:
                sample, _, value = line.rpartition(" ")
                out[sample] = float(value)
        return out

    async def start_monitor(self, node: str) -> RoleProcess:
        port = free_port()
        argv = [
            "monitor", "--node-name", node, "--kubeconfig", self.kubeconfig, "--backend", "mock",
            "--containers-dir", str(self.host_root(node) / "usr" / "local" / "vgpu" / "containers"),
            "--metrics-bind", "127.0.0.1", "--metrics-port", str(port), "--scan-interval", "1",
            "--log-level", "info", "--no-monitor",
        ]  # fmt: skip
        proc = RoleProcess(f"monitor {node}", argv, self.root / "logs" / f"monitor-{node}.log")
        self.monitors[node] = proc
        self.monitor_ports[node] = port
        await proc.start()
        await self.wait_monitor(node)
        return proc

    async def monitor_metrics(self, node: str) -> str | None:
        try:
            async with self._http.get(f"http://127.0.0.1:{self.monitor_ports[node]}/metrics") as resp:
                return await resp.text() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_monitor(self, node: str, *, within: float = 60.0) -> None:
        proc = self.monitors[node]

        async def up() -> bool:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited:\n{proc.log_tail()}")
            return await self.monitor_metrics(node) is not None

        await until_async(up, within=within, what=f"{proc.name} serving /metrics")

    def processes(self) -> list[RoleProcess]:
        return [*(r.process for r in self.replicas), *self.plugins.values(), *self.monitors.values()]

    def log_lines_about(self, needles: Sequence[str], *, limit: int = 60) -> str:
        """Lines of every role log that mention any of ``needles`` (pod names, GPU UUIDs): what the
        device plugins and schedulers did with the pods a violation names."""
        found: list[str] = []
        for proc in self.processes():
            found += [
                f"[{proc.name}] {line}"
                for line in proc.log_text().splitlines()
                if any(n in line for n in needles)
            ]
        return "\n".join(found[-limit:])

    def kubelet_story(self, namespace: str, name: str) -> str:
        """What the kubelets recorded for a pod: phase, message and each Allocate's device IDs."""
        lines = []
        for node in self.cluster.nodes:
            for record in node.kubelet.records.values():
                if (record.namespace, record.name) == (namespace, name):
                    calls = [f"{a.container}: {list(a.device_ids)}" for a in record.allocations]
                    lines.append(f"kubelet {node.name}: {record.phase} {record.message!r} allocate {calls}")
        return "\n".join(lines) or f"no kubelet record of {namespace}/{name}"

    def crashed(self) -> list[str]:
        """Roles that exited although nobody stopped them (the harness records every stop)."""
        return [
            f"{p.name} (exit {p.proc.returncode}):\n{p.log_tail(20)}"
            for p in self.processes()
            if p.proc is not None and p.proc.returncode is not None and len(p.exits) < p.starts
        ]

    # ---- pods ---------------------------------------------------------------------------

    def pods(self) -> list[JsonObj]:
        return self.cluster.api.store.objects(PODS)

    def pod(self, name: str, namespace: str = "default") -> JsonObj | None:
        return self.cluster.api.store.try_get(PODS, namespace, name)

    async def create(self, manifest: Mapping[str, Any]) -> JsonObj:
        return await self.cluster.create_pod(manifest)

    async def delete(self, name: str, namespace: str = "default") -> None:
        with contextlib.suppress(ApiError):
            await self.cluster.client.delete(f"/api/v1/namespaces/{namespace}/pods/{name}")

    def monitor(self, scenario: str, **settings: Any) -> InvariantMonitor:
        return InvariantMonitor(_View(self.cluster), InvariantSettings(**settings), scenario=scenario)

    async def close(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes()))
        await self._http.close()


def phase(pod: Mapping[str, Any] | None) -> str:
    if pod is None:
        return "Gone"
    return str((pod.get("status") or {}).get("phase") or "Pending")


@contextlib.asynccontextmanager
async def rel_cluster(
    *,
    nodes: int = 3,
    gpus: int = 4,
    gpu_memory: int = 24000,
    plugins: bool = True,
    scheduler: bool = True,
    scheduler_args: Sequence[str] = (),
    heartbeat: float = 1.0,
) -> AsyncIterator[RelCluster]:
    """The embedded cluster with a device plugin process per node and one scheduler process."""
    root = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    proxy = ReadyProxy()
    await proxy.start()
    path = root / "scheduler.yaml"
    path.write_text(SCHEDULER_CONFIG.format(url=proxy.url))
    config: SchedulerConfig = dataclasses.replace(
        load_scheduler_config(path), pod_initial_backoff=0.1, pod_max_backoff=1.0, unschedulable_flush=1.0
    )
    rel: RelCluster | None = None
    try:
        async with EmbeddedCluster.running(
            nodes=nodes,
            gpus_per_node=gpus,
            gpu_model="NVIDIA A100-PCIE-40GB",
            gpu_memory=gpu_memory,
            scheduler_config=config,
            state_dir=root / "c",
            kubelet_settings=KubeletSettings(heartbeat_interval=heartbeat),
        ) as cluster:
            rel = RelCluster(cluster, root, proxy)
            try:
                # Everything starts at once: the processes spend most of their start importing.
                if plugins:
                    await asyncio.gather(*(rel.start_plugin(n.name, wait=False) for n in cluster.nodes))
                replica = await rel.start_scheduler(*scheduler_args, wait=False) if scheduler else None
                if plugins:
                    for n in cluster.nodes:
                        await rel.wait_plugin(n.name)
                if replica is not None:
                    await rel.wait_scheduler(replica)
                yield rel
            except BaseException:
                # The role logs go with the temporary root: show their tails in the failure report.
                for proc in rel.processes():
                    print(f"---- {proc.name} (last lines of {proc.log_path.name})\n{proc.log_tail(60)}")
                raise
            finally:
                await rel.close()
    finally:
        await proxy.stop()
        shutil.rmtree(root, ignore_errors=True)
