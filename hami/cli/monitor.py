"""``hami monitor``: the per-node vGPU monitor (HAMi's ``vGPUmonitor``), metrics on :9394.

Examples::

    # in the DaemonSet (NODE_NAME from the downward API, in-cluster credentials)
    hami monitor --backend nvml --containers-dir /usr/local/vgpu/containers

    # a GPU-less node of the embedded cluster
    hami monitor --backend mock --mock-gpu-file /tmp/k/node-1/mock-gpus.json --node-name node-1 \\
        --kubeconfig kc.yaml --containers-dir /tmp/k/host/node-1/usr/local/vgpu/containers \\
        --metrics-port 9394 --no-monitor

The aiomonitor console listens on 127.0.0.1:20101 (``--monitor-port``; commands ``containers``,
``pods``, ``informer``); a busy console port is logged and the monitor runs without it.

HAMi 2.8's environment is honoured as defaults: ``NODE_NAME``, ``HOOK_PATH`` (containers directory
``$HOOK_PATH/containers``) and ``HAMI_RESYNC_INTERVAL`` (grace before a stale directory is removed).
Stops cleanly on SIGTERM/SIGINT: readiness flips first, then the listeners and the scan stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hami.config.loader import add_settings_arguments, load_settings, parse_duration
from hami.config.settings import Settings
from hami.core.errors import ConfigError
from hami.core.mockgpu import parse_mock_gpu_text
from hami.k8s.auth import load_credentials
from hami.k8s.client import HttpKubeApi
from hami.metrics.build_info import detect_build_info
from hami.metrics.http import Readiness, serve_metrics
from hami.metrics.registry import new_registry
from hami.monitor.gpuinfo import FakeGpuInfo, GpuInfoSource, NvmlGpuInfo, host_gpus_from_mock, mock_gpus
from hami.monitor.metrics import MonitorCollector
from hami.monitor.pods import InformerPodSource, node_pod_informer
from hami.monitor.service import DEFAULT_CONTAINERS_DIR, DEFAULT_MIG_LOCK, MonitorConfig, MonitorService
from hami.runtime.console import ConsoleCommands, ConsolePortBusy, ConsoleSettings, run_role_console
from hami.runtime.logs import configure_logging
from hami.runtime.shutdown import Shutdown, handle_signals
from hami.runtime.tasks import create_guarded_task, stop_tasks

logger = logging.getLogger(__name__)

STOP_GRACE_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorRoleSettings(Settings):
    console: ConsoleSettings = ConsoleSettings()  # noqa: RUF009  # frozen, shared safely


def _default_containers_dir(env: Mapping[str, str]) -> Path:
    hook = env.get("HOOK_PATH")
    return Path(hook) / "containers" if hook else DEFAULT_CONTAINERS_DIR


def _default_grace(env: Mapping[str, str]) -> float:
    text = env.get("HAMI_RESYNC_INTERVAL", "")
    try:
        return parse_duration(text) if text else 300.0
    except ValueError:
        return 300.0


def register(subparsers: Any) -> None:
    env = os.environ
    p: argparse.ArgumentParser = subparsers.add_parser(
        "monitor",
        help="run the per-node vGPU monitor (shared-region metrics, priority feedback)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--node-name", default=env.get("NODE_NAME", ""), help="this node (default $NODE_NAME)")
    p.add_argument(
        "--containers-dir",
        type=Path,
        default=_default_containers_dir(env),
        help="per-container cache directories (default $HOOK_PATH/containers or /usr/local/vgpu/containers)",
    )
    p.add_argument("--metrics-bind", default="0.0.0.0", help="metrics listen address (default 0.0.0.0)")
    p.add_argument("--metrics-port", type=int, default=9394, help="metrics port (default 9394)")
    p.add_argument(
        "--backend", choices=("nvml", "mock"), default="nvml", help="host GPU facts (default nvml)"
    )
    p.add_argument("--mock-gpus", type=int, default=1, help="mock backend: number of GPUs (default 1)")
    p.add_argument("--mock-model", default="NVIDIA H100 80GB HBM3", help="mock backend: GPU model name")
    p.add_argument(
        "--mock-gpu-file",
        type=Path,
        default=None,
        help="mock backend: the device plugin's GPU file (e.g. <state>/<node>/mock-gpus.json of the "
        "embedded cluster); overrides --mock-gpus/--mock-model, same UUIDs as the device plugin",
    )
    p.add_argument("--scan-interval", type=float, default=5.0, help="scan + feedback period [s] (default 5)")
    p.add_argument(
        "--cleanup-grace",
        type=float,
        default=_default_grace(env),
        help="age [s] before a directory of a pod not on this node is removed "
        "(default $HAMI_RESYNC_INTERVAL or 300)",
    )
    p.add_argument("--no-feedback", action="store_true", help="do not run the priority feedback loop")
    p.add_argument(
        "--mig-lock-file", type=Path, default=DEFAULT_MIG_LOCK, help="feedback pauses while this file exists"
    )
    add_settings_arguments(p, MonitorRoleSettings)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> MonitorConfig:
    if not args.node_name:
        raise ConfigError("--node-name", "required (or set NODE_NAME)")
    if not 0 <= args.metrics_port < 65536:
        raise ConfigError("--metrics-port", f"not a TCP port: {args.metrics_port}")
    if args.scan_interval <= 0:
        raise ConfigError("--scan-interval", f"must be > 0, got {args.scan_interval}")
    if args.cleanup_grace < 0:
        raise ConfigError("--cleanup-grace", f"must be >= 0, got {args.cleanup_grace}")
    return MonitorConfig(
        node_name=args.node_name,
        containers_dir=args.containers_dir,
        scan_interval=args.scan_interval,
        cleanup_grace=args.cleanup_grace,
        feedback=not args.no_feedback,
        mig_lock_file=args.mig_lock_file,
    )


def build_gpu_source(args: argparse.Namespace) -> GpuInfoSource:
    if args.backend == "mock":
        if args.mock_gpu_file is not None:
            try:
                text = args.mock_gpu_file.read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError("--mock-gpu-file", f"cannot read {args.mock_gpu_file}: {e}") from e
            specs = parse_mock_gpu_text(args.node_name, text, source=str(args.mock_gpu_file))
            return FakeGpuInfo(host_gpus_from_mock(specs))
        if args.mock_gpus < 0:
            raise ConfigError("--mock-gpus", f"must be >= 0, got {args.mock_gpus}")
        return FakeGpuInfo(mock_gpus(args.mock_gpus, name=args.mock_model, node_name=args.node_name))
    return NvmlGpuInfo()


def console_commands(service: MonitorService, pods: InformerPodSource, informer: Any) -> ConsoleCommands:
    commands = ConsoleCommands()

    def containers(args: Sequence[str]) -> str:
        return service.describe()

    def pod_list(args: Sequence[str]) -> str:
        listed = pods.pods()
        lines = [f"{len(listed)} pods on {service.config.node_name} (synced: {pods.synced()})"]
        for uid, pod in sorted(listed.items(), key=lambda kv: kv[1].get("metadata", {}).get("name", "")):
            meta = pod.get("metadata", {})
            lines.append(f"{meta.get('namespace')}/{meta.get('name')} {uid}")
        return "\n".join(lines)

    def informer_lag(args: Sequence[str]) -> str:
        stats = informer.reflector.stats
        return (
            f"{informer.name}: synced={informer.has_synced.is_set()} "
            f"rv={informer.reflector.last_resource_version or '-'} lists={stats.lists} "
            f"watches={stats.watches} events={stats.events} errors={stats.errors}"
        )

    commands.add("containers", containers, "containers, their regions and usage as of the last scan")
    commands.add("pods", pod_list, "pods on this node as the informer sees them")
    commands.add("informer", informer_lag, "pod informer state (resourceVersion, lists, errors)")
    return commands


async def serve(
    args: argparse.Namespace,
    settings: MonitorRoleSettings,
    environ: Mapping[str, str],
    shutdown: Shutdown,
) -> int:
    config = build_config(args)
    registry = new_registry(detect_build_info(environ))
    gpus = build_gpu_source(args)
    api = HttpKubeApi(await load_credentials(settings.networking, environ=environ), settings.networking)
    informer = node_pod_informer(api, config.node_name, settings=settings.watching)
    pods = InformerPodSource(informer)
    service = MonitorService(config, pods, gpus)
    registry.register(MonitorCollector(service.snapshot))
    readiness = Readiness()
    shutdown.add_stop_callback(lambda: readiness.set_not_ready("shutting down"))
    failed = False
    try:
        try:
            server = await serve_metrics(registry, args.metrics_bind, args.metrics_port, readiness)
        except OSError as e:
            raise ConfigError(
                "--metrics-port", f"cannot listen on {args.metrics_bind}:{args.metrics_port}: {e}"
            ) from e
        try:
            commands = console_commands(service, pods, informer)
            async with run_role_console(settings.console, commands, role="monitor"):
                tasks = [
                    create_guarded_task(informer.run(), name="pod informer"),
                    create_guarded_task(service.run(on_first_pass=readiness.set_ready), name="monitor scan"),
                ]
                stop = asyncio.create_task(shutdown.wait(), name="wait for stop")
                await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
                failed = any(t.done() and not t.cancelled() and t.exception() is not None for t in tasks)
                readiness.set_not_ready("shutting down")
                report = await stop_tasks([*tasks, stop], grace=STOP_GRACE_S, title="monitor")
                failed = failed or bool(report.failed or report.stuck)
        finally:
            await server.close()
    finally:
        await service.aclose()
        await api.close()
    return 1 if failed else shutdown.exit_code


async def _main(args: argparse.Namespace, settings: MonitorRoleSettings) -> int:
    with handle_signals() as shutdown:
        return await serve(args, settings, os.environ, shutdown)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(MonitorRoleSettings, args=args, environ=os.environ)
        configure_logging(settings.logging.level, settings.logging.json)
        build_config(args)  # fail fast on flags before touching the network
        return asyncio.run(_main(args, settings))
    except (ConfigError, ConsolePortBusy) as e:
        logging.getLogger(__name__).error("%s", e)
        print(f"hami monitor: {e}", file=sys.stderr)
        return 2
