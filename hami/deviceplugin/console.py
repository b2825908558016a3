"""The device plugin's aiomonitor commands: offered devices, pods waiting for Allocate, registration.

``hami device-plugin`` serves them on 127.0.0.1:20121 (``--monitor-port``). ``devices`` and
``registration`` read the agent's state; ``pending`` asks the API server (through the agent's pod
API) which pods of this node wait for the plugin, and why the others do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from hami.core import keys
from hami.core.errors import DecodeError
from hami.deviceplugin.agent import DevicePluginAgent
from hami.deviceplugin.podlookup import NodeApi, PodApi, annotations_of, pending_entry, pod_ref
from hami.deviceplugin.virtual import virtual_ids
from hami.runtime.console import ConsoleCommands

DEVICE_PLUGIN_CONSOLE_PORT: Final = 20121
"""aiomonitor telnet port (web UI 20122, Python console 20123); the monitor uses 20101, the
scheduler 20111 and the DRA plugin 20131."""


def devices_text(agent: DevicePluginAgent) -> str:
    """``devices``: the GPUs offered to the kubelet, their health and virtual device count."""
    state = agent.state
    if state is None:
        return "devices not discovered yet"
    settings = state.settings
    health = state.health
    lines = [
        f"node {agent.config.node_name}: {len(state.gpus)} GPUs as {settings.resource_name}, "
        f"split {settings.split_count}, mode {settings.mode or '-'}, health version {state.version}"
    ]
    for gpu in state.gpus:
        ok = health.get(gpu.uuid, False)
        status = "healthy" if ok else f"UNHEALTHY ({state.reason(gpu.uuid) or 'no reason given'})"
        numa = "-" if gpu.numa_node is None else str(gpu.numa_node)
        lines.append(
            f"  [{gpu.index}] {gpu.uuid} {gpu.name} {gpu.memory_mib}MiB numa={numa} "
            f"pci={gpu.pci_bus_id or '-'} {status}, "
            f"{len(virtual_ids(gpu.uuid, settings.split_count))} virtual devices"
        )
    registered = state.registered_devices()
    lines.append(f"registered in {keys.NODE_NVIDIA_REGISTER}: {len(registered)} devices")
    for d in registered:
        lines.append(
            f"  {d.id} count={d.count} mem={d.devmem}MiB cores={d.devcore} type={d.type} health={d.health}"
        )
    return "\n".join(lines)


def registration_text(agent: DevicePluginAgent) -> str:
    """``registration``: the kubelet registration and the node annotation loop."""
    cfg = agent.config
    registrar = agent.registrar
    annotator = agent.annotator
    if registrar is None or annotator is None:
        return "agent not started yet"
    socket = cfg.plugin_dir / cfg.node.socket_name
    kubelet = registrar.registered.is_set()
    lines = [
        f"kubelet: {'registered' if kubelet else 'NOT registered'} as {cfg.node.resource_name} "
        f"({registrar.registrations} successful Register calls); serving {socket} "
        f"({'present' if socket.exists() else 'absent'}); kubelet socket {cfg.plugin_dir / 'kubelet.sock'}",
        f"node annotation {keys.NODE_NVIDIA_REGISTER}: {annotator.publishes} patches written, "
        f"refreshed every {cfg.register_interval_s:g}s",
        f"  value: {annotator.register_value() or '(no devices)'}",
    ]
    return "\n".join(lines)


async def pending_text(agent: DevicePluginAgent, pods: PodApi, nodes: NodeApi) -> str:
    """``pending``: pods of this node waiting for Allocate (what the next Allocate chooses from)."""
    node = agent.config.node_name
    listed = await pods.list_pods_on_node(node)
    node_obj = await nodes.get_node(node)
    lock = annotations_of(node_obj).get(keys.NODE_LOCK)
    waiting: list[tuple[str, str, str]] = []  # (creationTimestamp, ns/name, line): kubelet's order
    others: list[str] = []
    for pod in listed:
        ann = annotations_of(pod)
        if keys.VGPU_DEVICES_TO_ALLOCATE not in ann and keys.BIND_PHASE not in ann:
            continue  # not a HAMi pod
        try:
            entry = pending_entry(pod, node)
        except DecodeError as e:
            others.append(f"  {pod_ref(pod)}: unreadable allocation: {e}")
            continue
        if isinstance(entry, str):
            others.append(f"  {pod_ref(pod)}: not waiting ({entry})")
            continue
        index, devices, _psd = entry
        wanted = ", ".join(f"{d.uuid} {d.usedmem}MiB {d.usedcores}%" for d in devices)
        created = str(pod.get("metadata", {}).get("creationTimestamp", ""))
        line = f"  {pod_ref(pod)} container #{index} created {created}: {wanted}"
        waiting.append((created, pod_ref(pod), line))
    lines = [f"node {node}: {len(waiting)} pods wait for Allocate (oldest first is served first)"]
    lines += [line for *_, line in sorted(waiting)]
    if lock:
        lines.append(f"node lock {keys.NODE_LOCK}: {lock}")
    if others:
        lines.append(f"{len(others)} HAMi pods on {node} not waiting:")
        lines += others
    return "\n".join(lines)


def device_plugin_console_commands(agent: DevicePluginAgent, pods: PodApi, nodes: NodeApi) -> ConsoleCommands:
    commands = ConsoleCommands()

    def devices(args: Sequence[str]) -> str:
        return "usage: devices (no arguments)" if args else devices_text(agent)

    def registration(args: Sequence[str]) -> str:
        return "usage: registration (no arguments)" if args else registration_text(agent)

    async def pending(args: Sequence[str]) -> str:
        if args:
            return "usage: pending (no arguments)"
        return await pending_text(agent, pods, nodes)

    commands.add("devices", devices, "GPUs offered to the kubelet, health, registered devices")
    commands.add("pending", pending, "pods of this node waiting for Allocate (the handoff)")
    commands.add("registration", registration, "kubelet registration and node annotation state")
    return commands
