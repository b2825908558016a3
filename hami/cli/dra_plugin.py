"""``hami dra-plugin``: the kubelet DRA plugin for shared GPUs (driver ``hami-core-gpu.project-hami.io``).

Examples::

    # real GPUs, in the DaemonSet (NODE_NAME from the downward API, in-cluster credentials)
    hami dra-plugin --backend nvml

    # a GPU-less node of the embedded cluster
    hami dra-plugin --backend mock --mock-gpus 4 --node-name node-1 --kubeconfig kc.yaml \\
        --plugin-dir /tmp/k/node-1/plugins/hami-core-gpu.project-hami.io \\
        --registry-dir /tmp/k/node-1/plugins_registry --cdi-dir /tmp/k/node-1/cdi

It publishes one ResourceSlice for the node, registers with the kubelet through the plugin
registry and prepares allocated claims as CDI devices carrying HAMi-core's env and mounts.
SIGTERM/SIGINT stop it cleanly (sockets removed; slice and checkpoint kept for the restart).

Observability: ``/metrics`` (``hami_build_info``, ``hami_dra_prepare_duration_seconds``),
``/healthz`` and ``/readyz`` on ``--metrics-bind``:``--metrics-port`` (default 0.0.0.0:9397;
``0``: any free port; ``--no-metrics``: off), and the aiomonitor console on 127.0.0.1:20131
(``--monitor-port``, ``--no-monitor``; commands ``claims``, ``gpus``). A busy metrics or console
port is logged and the plugin runs without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hami.config.loader import add_settings_arguments, load_settings
from hami.config.settings import Settings
from hami.core.dra_translate import DRIVER_NAME
from hami.core.errors import ConfigError
from hami.core.hamicore_env import HamiCoreOptions
from hami.dra.console import DRA_PLUGIN_CONSOLE_PORT, dra_plugin_console_commands
from hami.dra.devices import GpuSource, MockGpuSource, NvmlGpuSource, load_gpu_file, mock_gpus
from hami.dra.plugin import (
    DEFAULT_CDI_DIR,
    KUBELET_PLUGINS_DIR,
    KUBELET_REGISTRY_DIR,
    DraPlugin,
    DraPluginConfig,
)
from hami.dra.slices import DEFAULT_SPLIT_COUNT
from hami.k8s.auth import load_credentials
from hami.k8s.client import HttpKubeApi
from hami.metrics.build_info import detect_build_info
from hami.metrics.http import MetricsServer, Readiness, serve_metrics_best_effort
from hami.metrics.instruments import DraPluginInstruments
from hami.metrics.registry import new_registry
from hami.runtime.console import ConsoleSettings, role_console_settings, run_role_console
from hami.runtime.logs import configure_logging
from hami.runtime.shutdown import handle_signals

logger = logging.getLogger(__name__)

DEFAULT_METRICS_PORT: Final = 9397


@dataclass(frozen=True, slots=True, kw_only=True)
class DraPluginSettings(Settings):
    console: ConsoleSettings = role_console_settings(DRA_PLUGIN_CONSOLE_PORT)  # noqa: RUF009  # frozen


def register(subparsers: Any) -> None:
    env = os.environ
    p: argparse.ArgumentParser = subparsers.add_parser(
        "dra-plugin",
        help="run the kubelet DRA plugin for shared GPUs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", choices=("nvml", "mock"), default="nvml", help="GPU source (default nvml)")
    p.add_argument("--node-name", default=env.get("NODE_NAME", ""), help="this node (default $NODE_NAME)")
    p.add_argument("--driver-name", default=DRIVER_NAME, help=f"DRA driver name (default {DRIVER_NAME})")
    p.add_argument(
        "--plugin-dir",
        type=Path,
        default=None,
        help=f"where dra.sock lives (default {KUBELET_PLUGINS_DIR}/<driver>)",
    )
    p.add_argument(
        "--registry-dir",
        type=Path,
        default=KUBELET_REGISTRY_DIR,
        help="the kubelet's plugin registry directory",
    )
    p.add_argument("--cdi-dir", type=Path, default=DEFAULT_CDI_DIR, help="where claim CDI specs are written")
    p.add_argument("--hook-path", default=env.get("HOOK_PATH", "/usr/local"), help="HOOK_PATH (vgpu root)")
    p.add_argument("--libvgpu-version", default="v2.8.0", help="suffix of the host libvgpu.so.<version>")
    p.add_argument("--lib-cuda-log-level", default="1", help="LIBCUDA_LOG_LEVEL given to containers")
    p.add_argument("--host-root", type=Path, default=Path("/"), help="prefix for host files (testing)")
    p.add_argument("--slice-interval", type=float, default=30.0, help="ResourceSlice re-check period [s]")
    p.add_argument(
        "--device-split-count",
        type=int,
        default=DEFAULT_SPLIT_COUNT,
        help=f"claims that may share one GPU: HAMi's deviceSplitCount (default {DEFAULT_SPLIT_COUNT})",
    )
    mock = p.add_argument_group("mock backend")
    mock.add_argument("--mock-gpus", type=int, default=2, help="number of GPUs (default 2)")
    mock.add_argument("--mock-model", default="NVIDIA A100-PCIE-40GB", help="GPU model name")
    mock.add_argument("--mock-memory", type=int, default=40960, help="memory per GPU [MiB]")
    mock.add_argument(
        "--mock-gpu-file", type=Path, default=None, help="YAML/JSON GPU list (overrides the above)"
    )
    nvml = p.add_argument_group("nvml backend")
    nvml.add_argument("--sysfs-root", type=Path, default=Path("/sys"), help="sysfs mount (NUMA lookup)")
    metrics = p.add_argument_group("metrics")
    metrics.add_argument("--metrics-bind", default="0.0.0.0", help="metrics listen address (default 0.0.0.0)")
    metrics.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help=f"/metrics, /healthz, /readyz port (default {DEFAULT_METRICS_PORT}; 0: any free port)",
    )
    metrics.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    add_settings_arguments(p, DraPluginSettings)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> DraPluginConfig:
    if not args.node_name:
        raise ConfigError("--node-name", "required (or set NODE_NAME)")
    if args.slice_interval <= 0:
        raise ConfigError("--slice-interval", f"must be > 0 seconds, got {args.slice_interval}")
    if not 0 <= args.metrics_port < 65536:
        raise ConfigError("--metrics-port", f"not a TCP port: {args.metrics_port}")
    try:
        return DraPluginConfig(
            node_name=args.node_name,
            driver=args.driver_name,
            plugin_dir=args.plugin_dir or KUBELET_PLUGINS_DIR / args.driver_name,
            registry_dir=args.registry_dir,
            cdi_dir=args.cdi_dir,
            hamicore=HamiCoreOptions(
                hook_path=args.hook_path,
                libvgpu_version=args.libvgpu_version,
                lib_cuda_log_level=args.lib_cuda_log_level,
            ),
            host_root=args.host_root,
            slice_interval_s=args.slice_interval,
            split_count=args.device_split_count,
        )
    except ValueError as e:
        raise ConfigError("dra-plugin", str(e)) from e


def build_source(args: argparse.Namespace) -> GpuSource:
    if args.backend == "mock":
        gpus = (
            load_gpu_file(args.node_name, args.mock_gpu_file)
            if args.mock_gpu_file
            else mock_gpus(args.node_name, args.mock_gpus, model=args.mock_model, memory_mib=args.mock_memory)
        )
        return MockGpuSource(gpus)
    import pynvml  # only where a real driver is expected

    return NvmlGpuSource(pynvml, sysfs_root=args.sysfs_root)


async def _serve(args: argparse.Namespace, settings: DraPluginSettings) -> int:
    config = build_config(args)
    source = build_source(args)
    registry = new_registry(detect_build_info(os.environ))
    instruments = DraPluginInstruments(registry)
    api = HttpKubeApi(await load_credentials(settings.networking, environ=os.environ), settings.networking)
    plugin = DraPlugin(config, source, api, on_prepare=instruments.prepare_seconds.observe)
    readiness = Readiness()
    server: MetricsServer | None = None

    async def mark_ready() -> None:
        await plugin.serving.wait()
        readiness.set_ready()

    ready = asyncio.create_task(mark_ready(), name="dra plugin readiness")
    try:
        if not args.no_metrics:
            server = await serve_metrics_best_effort(
                registry, args.metrics_bind, args.metrics_port, readiness, role="dra-plugin"
            )
        async with run_role_console(settings.console, dra_plugin_console_commands(plugin), role="dra-plugin"):
            with handle_signals() as shutdown:
                task = asyncio.create_task(plugin.run(), name="dra plugin")
                stop = asyncio.create_task(shutdown.stopping.wait(), name="wait for stop signal")
                await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                readiness.set_not_ready("shutting down")
                if task.done():
                    task.result()  # a failure of the plugin is the process's failure
                    return 1
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return shutdown.exit_code
    finally:
        ready.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ready
        if server is not None:
            await server.close()
        await api.close()


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(DraPluginSettings, args=args, environ=os.environ)
        configure_logging(settings.logging.level, settings.logging.json)
        return asyncio.run(_serve(args, settings))
    except ConfigError as e:
        logger.error("%s", e)
        print(f"hami dra-plugin: {e}", file=sys.stderr)
        return 2
