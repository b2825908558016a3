"""The DRA plugin's aiomonitor commands: prepared claims and the plugin's GPUs.

``hami dra-plugin`` serves them on 127.0.0.1:20131 (``--monitor-port``). ``claims`` prints the
checkpoint (what the kubelet will be answered for a repeated prepare, and what an unprepare
undoes); ``gpus`` the inventory published in the ResourceSlice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from hami.dra.plugin import DraPlugin
from hami.runtime.console import ConsoleCommands

DRA_PLUGIN_CONSOLE_PORT: Final = 20131
"""aiomonitor telnet port (web UI 20132, Python console 20133); the monitor uses 20101, the
scheduler 20111 and the device plugin 20121."""


def claims_text(plugin: DraPlugin) -> str:
    claims = plugin.checkpoint.claims
    registered = "registered" if plugin.registration.registered.is_set() else "NOT registered"
    error = plugin.registration.last_error
    head = (
        f"driver {plugin.config.driver} on {plugin.config.node_name}: kubelet {registered}"
        + (f" (last error: {error})" if error else "")
        + f"; {len(claims)} prepared claims (checkpoint {plugin.checkpoint.path})"
    )
    lines = [head]
    for claim in sorted(claims.values(), key=lambda c: (c.ref.namespace, c.ref.name)):
        lines.append(f"  {claim.ref.namespace}/{claim.ref.name} uid={claim.ref.uid} cache={claim.cache_dir}")
        for d in claim.devices:
            share = f" share={d.share_id}" if d.share_id else ""
            requests = ",".join(d.request_names)
            lines.append(f"    {d.pool}/{d.device}{share} requests={requests} cdi={' '.join(d.cdi_ids)}")
    return "\n".join(lines)


def gpus_text(plugin: DraPlugin) -> str:
    if not plugin.gpus:
        return "no GPUs discovered (yet)"
    lines = [f"{len(plugin.gpus)} GPUs"]
    for g in plugin.gpus:
        lines.append(f"  {g.device_name} {g.uuid} {g.name} {g.memory_bytes // 1048576}MiB")
    return "\n".join(lines)


def dra_plugin_console_commands(plugin: DraPlugin) -> ConsoleCommands:
    commands = ConsoleCommands()

    def claims(args: Sequence[str]) -> str:
        return "usage: claims (no arguments)" if args else claims_text(plugin)

    def gpus(args: Sequence[str]) -> str:
        return "usage: gpus (no arguments)" if args else gpus_text(plugin)

    commands.add("claims", claims, "prepared ResourceClaims (the checkpoint) and kubelet registration")
    commands.add("gpus", gpus, "GPUs published in this node's ResourceSlice")
    return commands
