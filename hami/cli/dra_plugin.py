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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hami.config.loader import add_settings_arguments, load_settings
from hami.config.settings import Settings
from hami.core.dra_translate import DRIVER_NAME
from hami.core.errors import ConfigError
from hami.core.hamicore_env import HamiCoreOptions
from hami.dra.devices import GpuSource, MockGpuSource, NvmlGpuSource, load_gpu_file, mock_gpus
from hami.dra.plugin import (
    DEFAULT_CDI_DIR,
    KUBELET_PLUGINS_DIR,
    KUBELET_REGISTRY_DIR,
    DraPlugin,
    DraPluginConfig,
)
from hami.k8s.auth import load_credentials
from hami.k8s.client import HttpKubeApi
from hami.runtime.logs import configure_logging
from hami.runtime.shutdown import handle_signals

logger = logging.getLogger(__name__)


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
    mock = p.add_argument_group("mock backend")
    mock.add_argument("--mock-gpus", type=int, default=2, help="number of GPUs (default 2)")
    mock.add_argument("--mock-model", default="NVIDIA A100-PCIE-40GB", help="GPU model name")
    mock.add_argument("--mock-memory", type=int, default=40960, help="memory per GPU [MiB]")
    mock.add_argument(
        "--mock-gpu-file", type=Path, default=None, help="YAML/JSON GPU list (overrides the above)"
    )
    nvml = p.add_argument_group("nvml backend")
    nvml.add_argument("--sysfs-root", type=Path, default=Path("/sys"), help="sysfs mount (NUMA lookup)")
    add_settings_arguments(p, Settings)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> DraPluginConfig:
    if not args.node_name:
        raise ConfigError("--node-name", "required (or set NODE_NAME)")
    if args.slice_interval <= 0:
        raise ConfigError("--slice-interval", f"must be > 0 seconds, got {args.slice_interval}")
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


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    config = build_config(args)
    source = build_source(args)
    api = HttpKubeApi(await load_credentials(settings.networking, environ=os.environ), settings.networking)
    plugin = DraPlugin(config, source, api)
    try:
        with handle_signals() as shutdown:
            task = asyncio.create_task(plugin.run(), name="dra plugin")
            stop = asyncio.create_task(shutdown.stopping.wait(), name="wait for stop signal")
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if task.done():
                task.result()  # a failure of the plugin is the process's failure
                return 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return shutdown.exit_code
    finally:
        await api.close()


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(Settings, args=args, environ=os.environ)
        configure_logging(settings.logging.level, settings.logging.json)
        return asyncio.run(_serve(args, settings))
    except ConfigError as e:
        logger.error("%s", e)
        print(f"hami dra-plugin: {e}", file=sys.stderr)
        return 2
