"""``hami device-plugin``: the GPU node agent (kubelet device plugin + node registration).

Examples::

    # real GPUs, in the DaemonSet (NODE_NAME from the downward API, in-cluster credentials)
    hami device-plugin --backend nvml --device-config-file /device-config.yaml \\
        --node-config-file /config/config.json

    # a GPU-less node of the embedded cluster
    hami device-plugin --backend mock --mock-gpus 4 --mock-model "NVIDIA A100-PCIE-40GB" \\
        --mock-memory 40960 --node-name node-1 --plugin-dir /tmp/k/node-1 --kubeconfig kc.yaml

    # impersonate another vendor's node agent (registration annotation / node capacity)
    hami device-plugin --backend mock --vendor cambricon --mock-gpus 4 --node-name node-2 \\
        --kubeconfig kc.yaml

Observability (HAMi 2.8's device plugin has neither): ``/metrics`` (``hami_build_info``,
``hami_allocate_duration_seconds``), ``/healthz`` and ``/readyz`` on ``--metrics-bind``:``--metrics-port``
(default 0.0.0.0:9396; ``--metrics-port 0`` picks a free port, ``--no-metrics`` turns it off), and
the aiomonitor console on 127.0.0.1:20121 (``--monitor-port``, ``--no-monitor``; commands
``devices``, ``pending``, ``registration``). A busy metrics or console port is logged and the
plugin runs without it: it never keeps the node's GPUs from being offered.

HAMi 2.8's environment variables are honoured as defaults: ``NODE_NAME``, ``HOOK_PATH``,
``DEVICE_LIST_STRATEGY``, ``CONFIG_FILE``, ``ENABLE_TOPOLOGY_SCORE``, ``DP_DISABLE_HEALTHCHECKS``
and ``DP_ENABLE_HEALTHCHECKS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry

from hami.config.loader import add_settings_arguments, load_settings
from hami.config.settings import Settings
from hami.core.deviceconfig import parse_device_config
from hami.core.errors import ConfigError
from hami.core.nodeconfig import NodeConfig, parse_node_config
from hami.core.vendors import MOCK_VENDOR_NAMES, mock_vendor
from hami.deviceplugin.agent import AgentConfig, DevicePluginAgent
from hami.deviceplugin.allocate import AllocateSettings, parse_device_list_strategies
from hami.deviceplugin.backend import DeviceBackend, health_policy
from hami.deviceplugin.backends.mock import DEFAULT_MEMORY_MIB, MockBackend, load_gpu_file, mock_gpus
from hami.deviceplugin.backends.nvml import NvmlBackend
from hami.deviceplugin.backends.nvml_replay import RecordedNvml
from hami.deviceplugin.capacity import CapacityNames
from hami.deviceplugin.console import DEVICE_PLUGIN_CONSOLE_PORT, device_plugin_console_commands
from hami.deviceplugin.kubeapi import KubePodNodeApi
from hami.deviceplugin.memkube import InMemoryKube
from hami.deviceplugin.podlookup import NodeApi, PodApi
from hami.deviceplugin.registration import DEFAULT_PLUGIN_DIR
from hami.deviceplugin.vendor_mock import VendorMockAgent
from hami.deviceplugin.virtual import node_device_settings
from hami.k8s.auth import load_credentials
from hami.k8s.client import HttpKubeApi
from hami.metrics.build_info import detect_build_info
from hami.metrics.http import MetricsServer, Readiness, serve_metrics_best_effort
from hami.metrics.instruments import DevicePluginInstruments
from hami.metrics.registry import new_registry
from hami.runtime.console import ConsoleCommands, ConsoleSettings, role_console_settings, run_role_console
from hami.runtime.logs import configure_logging
from hami.runtime.shutdown import handle_signals

logger = logging.getLogger(__name__)

DEFAULT_METRICS_PORT: Final = 9396


@dataclass(frozen=True, slots=True, kw_only=True)
class DevicePluginSettings(Settings):
    console: ConsoleSettings = role_console_settings(DEVICE_PLUGIN_CONSOLE_PORT)  # noqa: RUF009  # frozen


def register(subparsers: Any) -> None:
    env = os.environ
    p: argparse.ArgumentParser = subparsers.add_parser(
        "device-plugin",
        help="run the GPU node agent (kubelet device plugin)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", choices=("nvml", "mock"), default="nvml", help="GPU backend (default nvml)")
    p.add_argument("--node-name", default=env.get("NODE_NAME", ""), help="this node (default $NODE_NAME)")
    p.add_argument("--plugin-dir", type=Path, default=DEFAULT_PLUGIN_DIR, help="kubelet device-plugin dir")
    p.add_argument(
        "--device-config-file",
        default=env.get("CONFIG_FILE") or None,
        help="HAMi device-config.yaml (default $CONFIG_FILE; chart defaults when absent)",
    )
    p.add_argument(
        "--node-config-file", default=None, help="per-node config.json (HAMi: /config/config.json)"
    )
    p.add_argument(
        "--device-list-strategy",
        default=env.get("DEVICE_LIST_STRATEGY", "envvar"),
        help="envvar, volume-mounts, cdi-annotations or cdi-cri; comma-separated (default envvar)",
    )
    p.add_argument("--cdi-dir", type=Path, default=Path("/var/run/cdi"), help="where the CDI spec is written")
    p.add_argument("--cdi-annotation-prefix", default="cdi.k8s.io/", help="CDI annotation key prefix")
    p.add_argument("--hook-path", default=env.get("HOOK_PATH", "/usr/local"), help="HOOK_PATH (vgpu root)")
    p.add_argument("--libvgpu-version", default="v2.8.0", help="suffix of the host libvgpu.so.<version>")
    p.add_argument("--host-root", type=Path, default=Path("/"), help="prefix for host files (testing)")
    p.add_argument(
        "--no-preferred-allocation",
        action="store_true",
        help="do not offer GetPreferredAllocation (HAMi 2.8 does not; kubelet then picks any IDs)",
    )
    p.add_argument(
        "--topology-score",
        action="store_true",
        default=env.get("ENABLE_TOPOLOGY_SCORE", "").lower() == "true",
        help="also publish hami.io/node-nvidia-score (default $ENABLE_TOPOLOGY_SCORE)",
    )
    p.add_argument("--mock-capacity", action="store_true", help="publish gpumem/gpucores/gpumem-percentage")
    p.add_argument("--register-interval", type=float, default=30.0, help="annotation refresh period [s]")
    p.add_argument(
        "--health-recovery", type=float, default=60.0, help="quiet period before recovery [s]; 0=never"
    )
    p.add_argument("--standalone", action="store_true", help="no API server: keep node and pods in memory")
    mock = p.add_argument_group("mock backend")
    mock.add_argument("--mock-gpus", type=int, default=2, help="number of GPUs (default 2)")
    mock.add_argument("--mock-model", default="NVIDIA A100-PCIE-40GB", help="GPU model name")
    mock.add_argument(
        "--mock-memory",
        type=int,
        default=None,
        help="memory per GPU [MiB] (default 40960; --vendor: its card's)",
    )
    mock.add_argument(
        "--vendor",
        choices=MOCK_VENDOR_NAMES,
        default="nvidia",
        help="impersonate this vendor's node agent: publish its registration annotation, handshake "
        "and node capacity for --mock-gpus devices (default nvidia: the kubelet device plugin)",
    )
    mock.add_argument(
        "--mock-gpu-file", type=Path, default=None, help="YAML/JSON GPU list (overrides the above)"
    )
    mock.add_argument(
        "--mock-health-file", type=Path, default=None, help='JSON {"unhealthy": {uuid: reason}}'
    )
    nvml = p.add_argument_group("nvml backend")
    nvml.add_argument("--sysfs-root", type=Path, default=Path("/sys"), help="sysfs mount (NUMA lookup)")
    nvml.add_argument(
        "--nvml-replay", type=Path, default=None, help="replay a recorded NVML capture (no GPU)"
    )
    metrics = p.add_argument_group("metrics")
    metrics.add_argument("--metrics-bind", default="0.0.0.0", help="metrics listen address (default 0.0.0.0)")
    metrics.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help=f"/metrics, /healthz, /readyz port (default {DEFAULT_METRICS_PORT}; 0: any free port)",
    )
    metrics.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    add_settings_arguments(p, DevicePluginSettings)
    p.set_defaults(func=run)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e}") from e


def build_agent_config(args: argparse.Namespace) -> tuple[AgentConfig, CapacityNames]:
    device_config = parse_device_config(
        _read_text(args.device_config_file) if args.device_config_file else ""
    )
    for warning in device_config.warnings:
        logger.warning("device config: %s", warning)
    node_config: NodeConfig | None = NodeConfig()
    if args.node_config_file:
        try:
            node_config = parse_node_config(_read_text(args.node_config_file))
        except ConfigError as e:
            # HAMi 2.8: logged, YAML values used, operating mode empty.
            logger.error("node config ignored: %s", e)
            node_config = None
    nvidia = device_config.nvidia
    try:
        node = node_device_settings(nvidia, node_config, args.node_name)
        strategies = parse_device_list_strategies(args.device_list_strategy)
    except ValueError as e:
        raise ConfigError("device plugin", str(e)) from e
    names = CapacityNames(
        count=nvidia.resource_count_name,
        memory=nvidia.resource_memory_name,
        cores=nvidia.resource_core_name,
        memory_percentage=nvidia.resource_memory_percentage_name,
        memory_factor=nvidia.memory_factor,
    )
    config = AgentConfig(
        node_name=args.node_name,
        node=node,
        allocate=AllocateSettings(
            hook_path=args.hook_path,
            libvgpu_version=args.libvgpu_version,
            device_list_strategies=strategies,
            cdi_annotation_prefix=args.cdi_annotation_prefix,
        ),
        plugin_dir=args.plugin_dir,
        preferred_allocation=not args.no_preferred_allocation,
        cdi_dir=args.cdi_dir,
        topology_score=args.topology_score,
        mock_capacity=names if args.mock_capacity else None,
        host_root=args.host_root,
        register_interval_s=args.register_interval,
    )
    return config, names


def build_backend(args: argparse.Namespace, environ: Mapping[str, str]) -> DeviceBackend:
    try:
        policy = health_policy(
            environ.get("DP_DISABLE_HEALTHCHECKS", ""),
            environ.get("DP_ENABLE_HEALTHCHECKS", ""),
            recovery_after_s=args.health_recovery,
        )
    except ValueError as e:
        raise ConfigError("DP_DISABLE_HEALTHCHECKS/DP_ENABLE_HEALTHCHECKS", str(e)) from e
    if args.backend == "mock":
        gpus = (
            load_gpu_file(args.node_name, args.mock_gpu_file)
            if args.mock_gpu_file
            else mock_gpus(
                args.node_name,
                args.mock_gpus,
                model=args.mock_model,
                memory_mib=DEFAULT_MEMORY_MIB if args.mock_memory is None else args.mock_memory,
            )
        )
        return MockBackend(gpus, policy=policy, health_file=args.mock_health_file)
    if args.nvml_replay is not None:
        module: Any = RecordedNvml.from_file(args.nvml_replay)
    else:
        import pynvml  # only where a real driver is expected

        module = pynvml
    return NvmlBackend(module, policy=policy, sysfs_root=args.sysfs_root)


def build_vendor_agent(args: argparse.Namespace, nodes: NodeApi) -> VendorMockAgent:
    """``--vendor X`` (X != nvidia): the node agent that publishes X's devices."""
    if args.backend != "mock":
        raise ConfigError("--vendor", f"{args.vendor} can only be impersonated with --backend mock")
    if args.mock_gpus < 0:
        raise ConfigError("--mock-gpus", f"must be >= 0, got {args.mock_gpus}")
    if args.mock_memory is not None and args.mock_memory <= 0:
        raise ConfigError("--mock-memory", f"must be > 0 MiB, got {args.mock_memory}")
    device_config = parse_device_config(
        _read_text(args.device_config_file) if args.device_config_file else ""
    )
    return VendorMockAgent(
        nodes,
        args.node_name,
        mock_vendor(args.vendor, device_config),
        devices=args.mock_gpus,
        memory_mib=args.mock_memory,
        interval_s=args.register_interval,
    )


@contextlib.asynccontextmanager
async def _observability(
    args: argparse.Namespace,
    settings: DevicePluginSettings,
    registry: CollectorRegistry,
    commands: ConsoleCommands,
    started: asyncio.Event | None,
) -> AsyncIterator[None]:
    """/metrics (ready once ``started`` is set) and the aiomonitor console around the agent."""
    readiness = Readiness(ready=started is None)
    ready: asyncio.Task[None] | None = None
    if started is not None:
        event = started

        async def mark_ready() -> None:
            await event.wait()
            readiness.set_ready()

        ready = asyncio.create_task(mark_ready(), name="device plugin readiness")
    server: MetricsServer | None = None
    try:
        if not args.no_metrics:
            server = await serve_metrics_best_effort(
                registry, args.metrics_bind, args.metrics_port, readiness, role="device-plugin"
            )
        async with run_role_console(settings.console, commands, role="device-plugin"):
            yield
    finally:
        readiness.set_not_ready("shutting down")
        if ready is not None:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
        if server is not None:
            await server.close()


async def _serve(args: argparse.Namespace, settings: DevicePluginSettings) -> int:
    registry = new_registry(detect_build_info(os.environ))
    if args.vendor != "nvidia":
        return await _serve_vendor(args, settings, registry)
    config, _names = build_agent_config(args)
    backend = build_backend(args, os.environ)
    close: list[Any] = []
    if args.standalone:
        memory = InMemoryKube()
        memory.put_node({"metadata": {"name": config.node_name}, "status": {"capacity": {}}})
        pods: PodApi = memory
        nodes: NodeApi = memory
    else:
        api = HttpKubeApi(
            await load_credentials(settings.networking, environ=os.environ), settings.networking
        )
        close.append(api)
        pods = nodes = KubePodNodeApi(api)
    instruments = DevicePluginInstruments(registry)
    agent = DevicePluginAgent(config, backend, pods, nodes, on_allocate=instruments.allocate_seconds.observe)
    commands = device_plugin_console_commands(agent, pods, nodes)
    try:
        async with _observability(args, settings, registry, commands, agent.started):
            with handle_signals() as shutdown:
                task = asyncio.create_task(agent.run(), name="device plugin")
                stop = asyncio.create_task(shutdown.stopping.wait(), name="wait for stop signal")
                await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    task.cancel()
                stop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return 0
    finally:
        for resource in close:
            await resource.close()


async def _serve_vendor(
    args: argparse.Namespace, settings: DevicePluginSettings, registry: CollectorRegistry
) -> int:
    close: list[Any] = []
    if args.standalone:
        memory = InMemoryKube()
        memory.put_node({"metadata": {"name": args.node_name}, "status": {"capacity": {}}})
        nodes: NodeApi = memory
    else:
        api = HttpKubeApi(
            await load_credentials(settings.networking, environ=os.environ), settings.networking
        )
        close.append(api)
        nodes = KubePodNodeApi(api)
    try:
        agent = build_vendor_agent(args, nodes)
        async with _observability(args, settings, registry, ConsoleCommands(), None):
            with handle_signals() as shutdown:
                task = asyncio.create_task(agent.run(), name=f"{args.vendor} node agent")
                stop = asyncio.create_task(shutdown.stopping.wait(), name="wait for stop signal")
                await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
                for pending in (task, stop):
                    pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return 0
    finally:
        for resource in close:
            await resource.close()


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(DevicePluginSettings, args=args, environ=os.environ)
        configure_logging(settings.logging.level, settings.logging.json)
        if not args.node_name:
            raise ConfigError("--node-name", "required (or set NODE_NAME)")
        if not 0 <= args.metrics_port < 65536:
            raise ConfigError("--metrics-port", f"not a TCP port: {args.metrics_port}")
        return asyncio.run(_serve(args, settings))
    except ConfigError as e:
        logging.getLogger(__name__).error("%s", e)
        print(f"hami device-plugin: {e}", file=sys.stderr)
        return 2
