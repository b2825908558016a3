"""``hami demo``: HAMi on a laptop. A 3-node cluster with 4 mock GPUs per node, GPU-sharing pods,
a live table of who holds what, and ``hami why`` for the pod that does not fit.

What runs (each role as its own process, as in a cluster):

* the embedded cluster, in this process: API server with admission webhooks, a kube-scheduler
  configured with the HAMi extender, one kubelet per node;
* ``hami scheduler``: extender (filter/bind) and admission webhook over HTTPS (a throw-away CA;
  the MutatingWebhookConfiguration carries it), metrics;
* per node ``hami device-plugin --backend mock`` (registers the node's GPUs with its kubelet and
  the scheduler) and ``hami monitor --backend mock`` (metrics, aiomonitor console).

Then it submits fractional pods (``gpumem``/``gpumem-percentage``/``gpucores``), an exclusive card,
a two-GPU pod and two that cannot fit, prints the table of nodes, GPUs and the pods holding memory
and cores on each (from the pods' ``hami.io/vgpu-devices-allocated`` annotations, read through
the API), ``hami why`` for the pods left Pending, and where the metrics and consoles are.

Examples::

    hami demo                      # live table until Ctrl-C
    hami demo --once               # print the settled table and the explanation, then stop
    hami demo --once --keep-running  # print once, then keep everything up for kubectl/curl/telnet

Ctrl-C or SIGTERM stops every process and removes the state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

from hami.cli._demo_processes import RoleFailed, RoleProcess
from hami.cli._demo_session import HOST, WEBHOOK_NAME, DemoSession
from hami.cli._demo_table import ClusterView, cluster_view, render_table
from hami.cli._demo_workload import NAMESPACE, DemoPod, demo_pods
from hami.core.errors import ConfigError
from hami.runtime.logs import configure_logging
from hami.runtime.shutdown import handle_signals
from hami.scheduler.explain import render_text
from hami.simulator.restclient import ApiError

logger = logging.getLogger(__name__)

MAX_NODES: Final = 10
MAX_GPUS_PER_NODE: Final = 16
SETTLE_TIMEOUT_S: Final = 60.0
_POLL_S: Final = 0.2
_CLEAR: Final = "\x1b[H\x1b[2J"
_LABEL_WIDTH: Final = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    nodes: int = 3
    gpus_per_node: int = 4
    once: bool = False
    keep_running: bool = False
    state_dir: Path | None = None
    refresh_s: float = 1.0
    settle_timeout_s: float = SETTLE_TIMEOUT_S

    def validate(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise ConfigError(
                "--nodes", f"must be 1..{MAX_NODES} (two processes run per node), got {self.nodes}"
            )
        if not 2 <= self.gpus_per_node <= MAX_GPUS_PER_NODE:
            raise ConfigError(
                "--gpus-per-node",
                f"must be 2..{MAX_GPUS_PER_NODE} (the demo runs a two-GPU pod), got {self.gpus_per_node}",
            )
        if self.refresh_s <= 0:
            raise ConfigError("--refresh", f"must be > 0 seconds, got {self.refresh_s}")
        state = self.state_dir
        if state is not None and state.exists() and (not state.is_dir() or any(state.iterdir())):
            raise ConfigError("--state-dir", f"{state} must be empty or not exist (it is removed at exit)")


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run a 3-node mock-GPU cluster with HAMi and show GPU sharing live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=3, help=f"nodes (1..{MAX_NODES}, default 3)")
    p.add_argument(
        "--gpus-per-node", type=int, default=4, help=f"mock GPUs per node (2..{MAX_GPUS_PER_NODE}, default 4)"
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="print the table once all pods settled, then `hami why` and the endpoints, and exit 0",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="with --once: keep everything running after printing, until Ctrl-C/SIGTERM",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="sockets, certificates, logs: an empty or new directory, removed at exit (default: a temp dir)",
    )
    p.add_argument("--refresh", type=float, default=1.0, help="live table refresh period [s] (default 1)")
    p.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="log level of the in-process cluster, on stderr (default warning); roles log to files",
    )
    p.set_defaults(func=run)


class Screen:
    """Frames on a stream: redrawn in place on a terminal; otherwise printed when the table changed."""

    def __init__(self, stream: IO[str], *, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self._last_key: str | None = None

    def _write(self, text: str) -> None:
        # A closed terminal or pipe (the reader went away) must not stop the demo from stopping
        # its processes and removing its state.
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()

    def line(self, text: str) -> None:
        self._write(text + "\n")

    def text(self, text: str) -> None:
        self._write(text)

    def frame(self, text: str, *, key: str) -> None:
        if self.tty:
            self._write(_CLEAR + text)
        elif key != self._last_key:
            self._write(("\n" if self._last_key is not None else "") + text)
        self._last_key = key


# ------------------------------------------------------------------------------------- the demo


class Demo:
    def __init__(self, session: DemoSession, options: DemoOptions, screen: Screen) -> None:
        self.session = session
        self.options = options
        self.screen = screen
        self.pods: tuple[DemoPod, ...] = ()
        self.refused: dict[str, str] = {}
        self.status = "starting the scheduler, device plugins and monitors..."
        self.settled = False

    @property
    def title(self) -> str:
        live = "" if self.options.once else "   (Ctrl-C stops everything)"
        return (
            f"hami demo: {self.options.nodes} nodes x {self.options.gpus_per_node} mock "
            f"{self.session.gpu_model} GPUs   {datetime.now().strftime('%H:%M:%S')}{live}"
        )

    async def view(self) -> ClusterView:
        client = self.session.cluster.client
        nodes = (await client.get("/api/v1/nodes")).get("items") or []
        pods = (await client.get("/api/v1/pods")).get("items") or []
        return cluster_view(nodes, pods)

    async def submit(self, phase: int) -> list[DemoPod]:
        created: list[DemoPod] = []
        for pod in (p for p in self.pods if p.phase == phase):
            try:
                await self.session.cluster.create_pod(pod.manifest)
            except ApiError as e:
                if e.code not in (400, 403, 422):
                    raise
                self.refused[pod.key] = e.message
            else:
                created.append(pod)
        return created

    async def _settled(self, pod: DemoPod) -> bool:
        current = await self.session.cluster.get_pod(NAMESPACE, pod.name)
        if current.get("spec", {}).get("nodeName"):
            return bool(current.get("status", {}).get("phase") == "Running")
        status, record = await self.session.why(NAMESPACE, pod.name)
        return status == 200 and isinstance(record, dict) and record.get("outcome") != "scheduled"

    async def settle(self, pods: Sequence[DemoPod]) -> None:
        """Until every pod runs or the scheduler has recorded why it cannot place it."""
        deadline = time.monotonic() + self.options.settle_timeout_s
        waiting = list(pods)
        while waiting:
            self.session.check_alive()
            waiting = [p for p in waiting if not await self._settled(p)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                states = []
                for pod in waiting:
                    current = await self.session.cluster.get_pod(NAMESPACE, pod.name)
                    states.append(f"{pod.key}: {current.get('status')}")
                raise TimeoutError(
                    f"pods did not settle within {self.options.settle_timeout_s:.0f}s: "
                    + "; ".join(states)
                    + f" (logs in {self.session.layout.logs_dir})"
                )
            await asyncio.sleep(_POLL_S)

    async def why_text(self, view: ClusterView) -> str:
        out: list[str] = []
        url = self.session.layout.scheduler_url
        insecure = " --insecure" if url.startswith("https") else ""
        for waiting in view.waiting:
            namespace, _, name = waiting.pod.partition("/")
            out.append(f"$ hami why {waiting.pod} --scheduler-url {url}{insecure}")
            status, record = await self.session.why(namespace, name)
            if status == 200 and isinstance(record, dict):
                out.append(render_text(record).rstrip("\n"))
            else:
                error = record.get("error") if isinstance(record, dict) else None
                out.append(f"hami why: {error or f'HTTP {status}'}")
            out.append("")
        return "\n".join(out)

    def endpoints_text(self) -> str:
        s = self.session
        layout = s.layout
        kubeconfig = shlex.quote(str(s.cluster.kubeconfig_path))
        out = ["Where things are:"]

        def row(label: str, text: str) -> None:
            out.append(f"  {label:<{_LABEL_WIDTH}} {text}")

        def console(process: RoleProcess) -> None:
            ports = process.command.console
            if ports is not None and process.console_listening():
                row("", f"aiomonitor: telnet {HOST} {ports.telnet}  |  web UI http://{HOST}:{ports.webui}")

        row("API server", f"{s.cluster.api_url}   export KUBECONFIG={kubeconfig}")
        row("scheduler", f"{layout.scheduler_url} (/filter /bind /webhook /why/NS/POD) pid {s.scheduler.pid}")
        row("", f"metrics {layout.scheduler_metrics_url}")
        console(s.scheduler)
        if s.webhook and layout.pki is not None:
            row(
                "webhook",
                f"{layout.scheduler_url}/webhook (MutatingWebhookConfiguration {WEBHOOK_NAME}; "
                f"CA {layout.pki.ca_cert})",
            )
        else:
            row("webhook", f"not registered ({layout.pki_problem})")
        for node, plugin, monitor, ports in zip(
            s.cluster.nodes, s.plugins, s.monitors, layout.node_ports, strict=True
        ):
            row(f"device plugin {node.name}", f"{node.plugin_dir}  pid {plugin.pid}")
            row("", f"metrics http://{HOST}:{ports.plugin_metrics}/metrics")
            console(plugin)
            metrics = f"http://{HOST}:{ports.monitor_metrics}/metrics"
            row(f"monitor {node.name}", f"metrics {metrics}  pid {monitor.pid}")
            console(monitor)
        row("role logs", f"{layout.logs_dir}/")
        row("role commands", str(layout.state_dir / "commands.txt"))
        if self.options.once and not self.options.keep_running:
            out.append("(--once: everything stops now; add --keep-running to keep it up)")
        return "\n".join(out) + "\n"

    async def frame(self) -> tuple[str, str]:
        """(text, change key): the table, then, once settled, `hami why` and the endpoints."""
        view = await self.view()
        notes = [] if self.settled else ["", f"({self.status})"]
        table = render_table(view, title=self.title, refused=self.refused, notes=notes)
        key = table.split("\n", 1)[1]
        if not self.settled:
            return table, key
        return f"{table}\n{await self.why_text(view)}{self.endpoints_text()}", key

    async def refresh_forever(self) -> None:
        while True:
            self.session.check_alive()
            text, key = await self.frame()
            self.screen.frame(text, key=key)
            await asyncio.sleep(self.options.refresh_s)

    async def prepare(self) -> None:
        """Wait for the roles, then decide the pods (they depend on whether the webhook is on)."""
        started = time.monotonic()
        await self.session.serve()
        how = (
            "webhook registered"
            if self.session.webhook
            else f"no webhook: {self.session.layout.pki_problem}; pods set schedulerName themselves"
        )
        self.screen.line(
            f"hami demo: roles ready after {time.monotonic() - started:.1f}s ({how}); submitting:"
        )
        self.pods = demo_pods(
            nodes=self.options.nodes,
            gpus_per_node=self.options.gpus_per_node,
            gpu_memory_mib=self.session.gpu_memory_mib,
            webhook=self.session.webhook,
        )
        for pod in self.pods:
            self.screen.line(f"  {pod.key:<22} {pod.wants}")

    async def run(self, stop: asyncio.Event) -> None:
        self._write_commands()
        live = None if self.options.once else asyncio.create_task(self.refresh_forever(), name="live table")
        try:
            await self._guard(self.prepare(), live)
            self.status = "submitting pods..."
            first = await self.submit(1)
            self.status = "waiting for the pods to run or to be found unschedulable..."
            await self._guard(self.settle(first), live)
            second = await self.submit(2)
            await self._guard(self.settle(second), live)
            self.settled = True
            if live is None:
                text, _ = await self.frame()
                self.screen.text(text)
                if not self.options.keep_running:
                    return
            waiter = asyncio.ensure_future(stop.wait())
            watched = {waiter} if live is None else {waiter, live}
            try:
                while not waiter.done():
                    await asyncio.wait(watched, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                    if live is not None and live.done():
                        live.result()
                    self.session.check_alive()
            finally:
                waiter.cancel()
        finally:
            if live is not None:
                live.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live

    @staticmethod
    async def _guard(step: Coroutine[Any, Any, None], live: asyncio.Task[None] | None) -> None:
        """Run ``step``; if the live table fails meanwhile, raise its error instead."""
        running = asyncio.ensure_future(step)
        watched: set[asyncio.Future[None]] = {running} if live is None else {running, live}
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if live is not None and live.done():
                live.result()
            running.result()
        finally:
            running.cancel()

    def _write_commands(self) -> None:
        lines = [p.command.shown() for p in self.session.processes]
        (self.session.layout.state_dir / "commands.txt").write_text("\n".join(lines) + "\n")


async def _demo(options: DemoOptions, screen: Screen, stop: asyncio.Event) -> None:
    screen.line(
        f"hami demo: starting a {options.nodes}-node cluster with {options.gpus_per_node} mock GPUs per "
        f"node, the scheduler, {options.nodes} device plugins and {options.nodes} monitors..."
    )
    async with DemoSession.running(
        nodes=options.nodes, gpus_per_node=options.gpus_per_node, state_dir=options.state_dir
    ) as session:
        await Demo(session, options, screen).run(stop)
        screen.line("hami demo: stopping")


async def _main(options: DemoOptions, stream: IO[str]) -> int:
    screen = Screen(stream, tty=stream.isatty())
    loop = asyncio.get_running_loop()
    with handle_signals() as shutdown:
        # Closing the terminal (SIGHUP) stops like Ctrl-C; unlike a second Ctrl-C, a hangup that
        # follows one (the terminal going away) must not skip the cleanup.
        loop.add_signal_handler(signal.SIGHUP, shutdown.request_stop, "signal SIGHUP")
        try:
            flow = asyncio.create_task(_demo(options, screen, shutdown.stopping), name="hami demo")
            stopping = asyncio.create_task(shutdown.wait(), name="wait for stop signal")
            try:
                await asyncio.wait({flow, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not flow.done():
                # Signal: the flow's cleanup (stop roles, stop cluster, remove state) runs on cancel.
                flow.cancel()
            try:
                await flow
            except asyncio.CancelledError:
                if not shutdown.is_stopping:
                    raise
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
        screen.line("hami demo: stopped")
        return 0


def run(args: argparse.Namespace) -> int:
    options = DemoOptions(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        once=args.once,
        keep_running=args.keep_running,
        state_dir=args.state_dir,
        refresh_s=args.refresh,
    )
    try:
        options.validate()
        configure_logging(args.log_level, stream=sys.stderr)
        return asyncio.run(_main(options, sys.stdout))
    except ConfigError as e:
        print(f"hami demo: {e}", file=sys.stderr)
        return 2
    except RoleFailed as e:
        print(f"hami demo: {e}", file=sys.stderr)
        return 1
    except (TimeoutError, OSError, RuntimeError, ApiError) as e:
        print(f"hami demo: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
