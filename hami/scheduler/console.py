"""The scheduler's aiomonitor commands: the ledger of a node, in-flight decisions, handoffs,
informer lag and leadership (``hami scheduler`` runs them on 127.0.0.1, ``--monitor-port``).

Every command reads the role's live state on the event loop (aiomonitor schedules it there), so
what it prints is exactly what the next ``/filter`` would see. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hami.cache.informer import Delta, Informer
from hami.core.ledger import PodUsage
from hami.core.model import PodDevices
from hami.core.snapshot import NodeSnapshot
from hami.runtime.clock import Clock, LoopClock
from hami.runtime.console import ConsoleCommands
from hami.scheduler.role import SchedulerRole
from hami.scheduler.state import SchedulerState


class InformerActivity:
    """When each informer last delivered a change (the reflector counts events but does not time
    them); registered as an informer handler, so it costs one clock read per delta."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or LoopClock()
        self._last: dict[str, float] = {}
        self._deltas: dict[str, int] = {}

    def watch(self, informer: Informer[Any]) -> None:
        name = informer.name

        def seen(delta: Delta[Any]) -> None:
            self._last[name] = self._clock.monotonic()
            self._deltas[name] = self._deltas.get(name, 0) + 1

        informer.add_handler(seen)

    def age(self, name: str) -> float | None:
        """Seconds since the informer's last change, None when it delivered none yet."""
        last = self._last.get(name)
        return None if last is None else self._clock.monotonic() - last

    def deltas(self, name: str) -> int:
        return self._deltas.get(name, 0)


def _mib(value: int) -> str:
    return f"{value}MiB"


def _pod_name(state: SchedulerState, uid: str) -> str:
    info = state.pod_info(uid)
    if info is not None:
        return info.key
    assumption = state.assumptions.get(uid)  # decided before the watch showed the pod
    return f"{assumption.namespace}/{assumption.name}" if assumption is not None else f"<uid {uid}>"


def _devices_text(devices: PodDevices, node: NodeSnapshot | None) -> str:
    parts: list[str] = []
    for vendor, containers in sorted(devices.items()):
        for index, container in enumerate(containers):
            for d in container:
                where = d.uuid
                if node is not None:
                    dev = node.device(d.uuid.split("[", 1)[0])
                    if dev is not None:
                        where = f"#{dev.index} {d.uuid}"
                parts.append(f"c{index}:{vendor} {where} {_mib(d.usedmem)} {d.usedcores}%")
    return ", ".join(parts) if parts else "no devices"


def ledger_text(state: SchedulerState, node: str | None) -> str:
    """``ledger``: one line per node; ``ledger <node>``: its devices and pods."""
    snapshot = state.ledger.snapshot()
    registered = state.registrar.registered
    quarantined = state.registrar.quarantined
    if node is None:
        if not snapshot.nodes:
            return f"ledger generation {snapshot.generation}: no node has registered devices"
        lines = [f"ledger generation {snapshot.generation}: {len(snapshot.nodes)} nodes"]
        for name in sorted(snapshot.nodes):
            each = snapshot.nodes[name]
            used = sum(d.usedmem for d in each.devices)
            total = sum(d.totalmem for d in each.devices)
            tasks = sum(d.used for d in each.devices)
            flags = "" if name in registered else " (not registered)"
            if name in quarantined:
                flags += f" QUARANTINED: {quarantined[name]}"
            lines.append(
                f"{name}: {len(each.devices)} devices, mem {used}/{total}MiB, {tasks} tasks, "
                f"{each.pods} pods, score {each.score:.2f}{flags}"
            )
        return "\n".join(lines)
    n = snapshot.node(node)
    pods = state.ledger.pods_on(node)
    if n is None and not pods:
        known = ", ".join(sorted(snapshot.nodes)) or "none"
        return f"node {node}: not in the ledger (nodes with devices: {known})"
    lines = [f"node {node} (ledger generation {snapshot.generation})"]
    if node in quarantined:
        lines.append(f"QUARANTINED: {quarantined[node]}")
    if n is not None:
        for d in n.devices:
            health = "healthy" if d.health else "UNHEALTHY"
            mode = f" mode={d.mode}" if d.mode else ""
            lines.append(
                f"  [{d.index}] {d.id} {d.type} {health}{mode} tasks={d.used}/{d.count} "
                f"mem={d.usedmem}/{d.totalmem}MiB cores={d.usedcores}/{d.totalcore}"
            )
        for pod_uid, reason in n.quarantined:
            lines.append(f"  quarantined pod {_pod_name(state, pod_uid)}: {reason}")
    lines.append(f"  pods: {len(pods)}")
    for uid in sorted(pods, key=lambda u: _pod_name(state, u)):
        usage = state.ledger.pod(uid)
        if usage is None:
            continue
        lines.append(f"  {_pod_name(state, uid)} [{usage.state}] {_devices_text(usage.devices, n)}")
    return "\n".join(lines)


def inflight_text(state: SchedulerState) -> str:
    """``inflight``: decisions assumed by this process and not yet confirmed by the watch."""
    assumed: Sequence[PodUsage] = state.ledger.assumed()
    now = state.clock.monotonic()
    if not assumed and not state.assumptions:
        voided = f"; {len(state.voided)} voided by failed binds" if state.voided else ""
        return f"no assumed reservations{voided}"
    lines = [f"{len(assumed)} assumed reservations"]
    for usage in sorted(assumed, key=lambda u: (u.node, _pod_name(state, u.uid))):
        a = state.assumptions.get(usage.uid)
        detail = ""
        if a is not None:
            detail = f" age {now - a.since:.1f}s, {'patch in flight' if a.writing else 'patch written'}"
        lines.append(
            f"  {_pod_name(state, usage.uid)} -> {usage.node}{detail}: {_devices_text(usage.devices, None)}"
        )
    orphans = [a for uid, a in state.assumptions.items() if state.ledger.pod(uid) is None]
    for a in orphans:
        lines.append(f"  {a.namespace}/{a.name} -> {a.node}: assumption without a ledger entry")
    if state.voided:
        lines.append(
            f"{len(state.voided)} voided by failed binds: "
            + ", ".join(_pod_name(state, u) for u in sorted(state.voided))
        )
    return "\n".join(lines)


def handoffs_text(state: SchedulerState) -> str:
    """``handoffs``: per node, pods between bind and Allocate and binds waiting for their turn."""
    tracker = state.tracker
    views = tracker.views()
    mode = "exclusive (compat node lock)" if tracker.exclusive else "ordered"
    if not views:
        return f"handoff ({mode}): no pod between bind and Allocate, no bind waiting"
    lines = [f"handoff ({mode}): {len(views)} nodes"]
    for v in views:
        busy = f", binding {_pod_name(state, v.busy)} now" if v.busy is not None else ""
        lines.append(f"{v.node}: {len(v.handoff)} in handoff, {len(v.waiting)} waiting{busy}")
        if v.handoff:
            lines.append("  in handoff: " + ", ".join(v.handoff))
        if v.waiting:
            lines.append("  waiting: " + ", ".join(v.waiting))
    return "\n".join(lines)


def informers_text(state: SchedulerState, activity: InformerActivity | None) -> str:
    """``informers``: per informer, synced, last resourceVersion, last change age and counters."""
    informers = [i for i in (state.pods, state.nodes, state.quota_informer) if i is not None]
    if not informers:
        return "no informers"
    lines = []
    for informer in informers:
        stats = informer.reflector.stats
        age = activity.age(informer.name) if activity is not None else None
        last = "no change yet" if age is None else f"last change {age:.1f}s ago"
        lines.append(
            f"{informer.name}: synced={informer.has_synced.is_set()} "
            f"rv={informer.reflector.last_resource_version or '-'} {last} objects={len(informer.store)} "
            f"lists={stats.lists} watches={stats.watches} events={stats.events} "
            f"bookmarks={stats.bookmarks} expired={stats.expired} errors={stats.errors} "
            f"decode_failures={informer.decode_failures} handler_failures={informer.handler_failures}"
        )
    return "\n".join(lines)


def leader_text(role: SchedulerRole) -> str:
    """``leader``: whether this replica leads, the Lease, its holder and the last confirmation."""
    serving = role.serving_refusal()
    gate = "serving /filter and /bind" if serving is None else f"refusing /filter and /bind: {serving}"
    candidate = role.elector
    if candidate is None:
        return f"leader election disabled: this replica always leads; {gate}"
    snap = role.leadership.snapshot()
    confirmed = "never confirmed" if snap.renew_age is None else f"last confirmed {snap.renew_age:.1f}s ago"
    leader = candidate.leader
    holder = "unknown (not read yet)" if leader is None else (leader or "none (released)")
    return (
        f"identity {candidate.identity}: {'LEADER' if snap.leading else 'follower'} of lease "
        f"{candidate.namespace}/{candidate.name} (mode {role.settings.scheduler.leader_elect_mode}); "
        f"holder {holder}; term {snap.term}; became leader {snap.transitions} times; {confirmed}; {gate}"
    )


def scheduler_console_commands(
    role: SchedulerRole, activity: InformerActivity | None = None
) -> ConsoleCommands:
    """The scheduler's custom console commands. ``activity`` (already watching the role's
    informers) adds the age of each informer's last change to ``informers``."""
    state = role.state
    commands = ConsoleCommands()

    def ledger(args: Sequence[str]) -> str:
        if len(args) > 1:
            return "usage: ledger [node]"
        return ledger_text(state, args[0] if args else None)

    def no_args(name: str, text: Callable[[], str]) -> Callable[[Sequence[str]], str]:
        def run(args: Sequence[str]) -> str:
            return f"usage: {name} (no arguments)" if args else text()

        return run

    commands.add("ledger", ledger, "allocation ledger: all nodes, or one node's devices and pods")
    commands.add(
        "inflight", no_args("inflight", lambda: inflight_text(state)), "assumed (in-flight) reservations"
    )
    commands.add(
        "handoffs",
        no_args("handoffs", lambda: handoffs_text(state)),
        "pods between bind and Allocate, per node",
    )
    commands.add(
        "informers",
        no_args("informers", lambda: informers_text(state, activity)),
        "informer lag: synced, last resourceVersion, last change age",
    )
    commands.add("leader", no_args("leader", lambda: leader_text(role)), "leadership state")
    return commands


def watch_informers(role: SchedulerRole, activity: InformerActivity) -> None:
    """Let ``activity`` time the role's informers (call before the role runs)."""
    state = role.state
    for informer in (state.pods, state.nodes, state.quota_informer):
        if informer is not None:
            activity.watch(informer)
