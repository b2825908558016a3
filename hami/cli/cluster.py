"""``hami cluster up``: run the embedded cluster (API server, kube-scheduler, kubelets) until stopped.

Writes a kubeconfig on start, prints where everything is (API URL, kubeconfig, each node's
``kubelet.sock`` and the device-plugin command that serves its mock GPUs) and runs until SIGTERM
or SIGINT, then stops cleanly (exit 0). With ``--dra`` the GPUs are offered through dynamic
resource allocation instead: HAMi's DeviceClass is installed and one ``hami dra-plugin --backend
mock`` process per GPU node publishes its ResourceSlice and prepares claims for its kubelet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from hami.core.errors import ConfigError
from hami.runtime.logs import configure_logging
from hami.runtime.shutdown import handle_signals
from hami.simulator.cluster import EmbeddedCluster
from hami.simulator.scenario import (
    DEFAULT_GPU_MEMORY_MIB,
    DEFAULT_GPU_MODEL,
    NodeSpec,
    parse_vendor_mix,
    vendor_node_specs,
)
from hami.simulator.schedconfig import load_scheduler_config


def _positive_or_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("cluster", help="embedded Kubernetes cluster for tests and demos")
    actions = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start API server, kube-scheduler and kubelets; run until SIGTERM")
    up.add_argument("--nodes", type=_positive_or_zero, default=3, help="number of nodes (default 3)")
    up.add_argument(
        "--gpus-per-node", type=_positive_or_zero, default=4, help="mock GPUs per node (default 4)"
    )
    up.add_argument(
        "--gpu-model", default=DEFAULT_GPU_MODEL, help=f"mock GPU model (default {DEFAULT_GPU_MODEL!r})"
    )
    up.add_argument(
        "--gpu-memory",
        type=_positive_or_zero,
        default=DEFAULT_GPU_MEMORY_MIB,
        help=f"memory per mock GPU in MiB (default {DEFAULT_GPU_MEMORY_MIB})",
    )
    up.add_argument(
        "--scheduler-config",
        type=Path,
        default=None,
        help="KubeSchedulerConfiguration YAML (profiles + extenders; a ConfigMap holding one also works)",
    )
    up.add_argument(
        "--vendor-mix",
        default=None,
        metavar="VENDOR:N,...",
        help="nodes per vendor instead of --nodes, e.g. nvidia:2,cambricon:1,hygon:1,ascend:1 "
        "(non-NVIDIA nodes carry their vendor's registration/capacity; see hami device-plugin --vendor)",
    )
    up.add_argument(
        "--dra",
        action="store_true",
        help="DRA mode: install HAMi's DeviceClass and run a `hami dra-plugin --backend mock` per GPU node",
    )
    up.add_argument("--host", default="127.0.0.1", help="API server address (default 127.0.0.1)")
    up.add_argument(
        "--port", type=_positive_or_zero, default=0, help="API server port (default: any free port)"
    )
    up.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="where to write the kubeconfig (default STATE/kubeconfig)",
    )
    up.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="sockets, mock GPU files, kubelet records (default: a temp dir)",
    )
    up.add_argument("--json", action="store_true", help="print the cluster description as one JSON line")
    up.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    up.set_defaults(func=run_up)


def _summary(info: dict[str, Any]) -> str:
    lines = [
        "embedded cluster is up",
        f"  API server:  {info['apiServer']}",
        f"  kubeconfig:  {info['kubeconfig']}    (export KUBECONFIG={shlex.quote(info['kubeconfig'])})",
        f"  state dir:   {info['stateDir']}",
        f"  schedulers:  {', '.join('/'.join(names) for names in info['schedulers'])}",
    ]
    if info["extenders"]:
        lines.append(f"  extenders:   {', '.join(info['extenders'])}")
    dra = info.get("dra") or {}
    if dra.get("deviceClass"):
        lines.append(f"  DRA:         DeviceClass {dra['deviceClass']}")
    dra_plugins = {p["node"]: p for p in dra.get("plugins") or []}
    for node in info["nodes"]:
        vendor = node.get("vendor", "nvidia")
        if vendor != "nvidia":
            lines.append(
                f"  node {node['name']}: {node['gpus']} x {vendor} devices (published at node creation), "
                f"kubelet socket {node['kubeletSocket']}"
            )
            continue
        lines.append(
            f"  node {node['name']}: {node['gpus']} x {node['gpuModel']} ({node['gpuMemoryMiB']} MiB), "
            f"kubelet socket {node['kubeletSocket']}"
        )
        plugin = dra_plugins.get(node["name"])
        if plugin is not None:
            lines.append(f"    DRA plugin: pid {plugin['pid']}, log {plugin['log']}")
            continue
        command = [
            "hami", "device-plugin", "--backend", "mock", "--node-name", node["name"],
            "--plugin-dir", node["pluginDir"], "--kubeconfig", info["kubeconfig"],
            "--mock-gpu-file", node["mockGpuFile"],
        ]  # fmt: skip
        lines.append(f"    device plugin: {shlex.join(command)}")
    lines.append("stop with Ctrl-C or SIGTERM")
    return "\n".join(lines)


async def _serve(args: argparse.Namespace) -> int:
    config = load_scheduler_config(args.scheduler_config) if args.scheduler_config is not None else None
    nodes: int | tuple[NodeSpec, ...] = args.nodes
    if args.vendor_mix is not None:
        nodes = vendor_node_specs(
            parse_vendor_mix(args.vendor_mix),
            gpus_per_node=args.gpus_per_node,
            gpu_model=args.gpu_model,
            gpu_memory_mib=args.gpu_memory,
        )
    with handle_signals() as shutdown:
        async with EmbeddedCluster.running(
            nodes=nodes,
            gpus_per_node=args.gpus_per_node,
            gpu_model=args.gpu_model,
            gpu_memory=args.gpu_memory,
            scheduler_config=config,
            state_dir=args.state_dir,
            host=args.host,
            port=args.port,
            kubeconfig=args.kubeconfig,
            dra=args.dra,
            start_dra_plugins=args.dra,
        ) as cluster:
            info = cluster.describe()
            print(json.dumps(info) if args.json else _summary(info), flush=True)
            await shutdown.wait()
    return 0


def run_up(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, stream=sys.stderr)
    try:
        return asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"hami cluster up: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"hami cluster up: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # a component (e.g. a DRA plugin process) failed to start
        print(f"hami cluster up: {exc}", file=sys.stderr)
        return 1
