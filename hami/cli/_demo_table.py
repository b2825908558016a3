"""The ``hami demo`` table: nodes, their GPUs and which pod holds what memory and cores.

Pure: built only from what the API returns, i.e. each Node's registration annotation
(``hami.io/node-nvidia-register``, written by the device plugin) and each Pod's allocation
annotation (``hami.io/vgpu-devices-allocated``, written by the scheduler). It therefore shows
what any HAMi 2.8 tool would read from the cluster, not the scheduler's private state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hami.core import keys
from hami.core.errors import DecodeError
from hami.core.model import DeviceInfo
from hami.core.node_annotations import decode_node_devices
from hami.core.pod_annotations import decode_pod_single_device

JsonObj = Mapping[str, Any]

BAR_WIDTH: Final = 20
_FINISHED: Final = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Holding:
    """One pod's share of one GPU."""

    pod: str  # namespace/name
    state: str  # Running, Pending (bound, starting), binding (not bound yet)
    memory_mib: int
    cores: int
    part: str = ""  # "1/2" when the pod holds several GPUs


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuRow:
    node: str
    device: DeviceInfo
    holdings: tuple[Holding, ...] = ()

    @property
    def used_memory_mib(self) -> int:
        return sum(h.memory_mib for h in self.holdings)

    @property
    def used_cores(self) -> int:
        return sum(h.cores for h in self.holdings)


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitingPod:
    """A GPU pod the scheduler has not placed."""

    pod: str
    wants: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterView:
    nodes: tuple[str, ...]
    gpus: tuple[GpuRow, ...]
    waiting: tuple[WaitingPod, ...]
    problems: tuple[str, ...] = ()
    """Annotations that could not be read, allocations on unknown GPUs: shown, never hidden."""

    @property
    def placed(self) -> tuple[str, ...]:
        return tuple(sorted({h.pod for row in self.gpus for h in row.holdings}))

    def holder(self, pod: str) -> tuple[GpuRow, ...]:
        """The GPUs ``pod`` holds a share of."""
        return tuple(row for row in self.gpus if any(h.pod == pod for h in row.holdings))


def _meta(obj: JsonObj) -> JsonObj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _annotations(obj: JsonObj) -> Mapping[str, str]:
    notes = _meta(obj).get("annotations")
    return notes if isinstance(notes, Mapping) else {}


def pod_key(pod: JsonObj) -> str:
    meta = _meta(pod)
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def gpu_request_text(pod: JsonObj) -> str | None:
    """What a pod asks of HAMi in words, from its containers' limits; None if no GPU resource."""
    parts: list[str] = []
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    for container in containers if isinstance(containers, list) else []:
        resources = container.get("resources") if isinstance(container, Mapping) else None
        limits = resources.get("limits") if isinstance(resources, Mapping) else None
        if not isinstance(limits, Mapping) or not any(str(k).startswith("nvidia.com/") for k in limits):
            continue
        count = str(limits.get(keys.RESOURCE_GPU, "1"))
        words = [f"{count} GPU" + ("" if count == "1" else "s")]
        if keys.RESOURCE_GPUMEM in limits:
            words.append(f"{limits[keys.RESOURCE_GPUMEM]} MiB")
        if keys.RESOURCE_GPUMEM_PERCENTAGE in limits:
            words.append(f"{limits[keys.RESOURCE_GPUMEM_PERCENTAGE]}% memory")
        if keys.RESOURCE_GPUCORES in limits:
            words.append(f"{limits[keys.RESOURCE_GPUCORES]}% cores")
        parts.append(", ".join(words) + ("" if count == "1" else " each"))
    return "; ".join(parts) if parts else None


def _state(pod: JsonObj) -> str:
    spec = pod.get("spec")
    if not isinstance(spec, Mapping) or not spec.get("nodeName"):
        return "binding"
    status = pod.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    return str(phase or "Pending")


def cluster_view(nodes: Iterable[JsonObj], pods: Iterable[JsonObj]) -> ClusterView:
    """Join the Nodes' registered GPUs with the Pods' allocations."""
    problems: list[str] = []
    rows: dict[str, tuple[str, DeviceInfo]] = {}
    node_names: list[str] = []
    for node in sorted(nodes, key=lambda n: str(_meta(n).get("name", ""))):
        name = str(_meta(node).get("name", "?"))
        node_names.append(name)
        value = _annotations(node).get(keys.NODE_NVIDIA_REGISTER)
        if value is None:
            continue
        try:
            devices = decode_node_devices(value)
        except DecodeError as e:
            problems.append(f"node {name}: {e}")
            continue
        for device in sorted(devices, key=lambda d: d.index):
            rows[str(device.id)] = (name, device)
    holdings: dict[str, list[Holding]] = {uuid: [] for uuid in rows}
    waiting: list[WaitingPod] = []
    for pod in sorted(pods, key=pod_key):
        status = pod.get("status")
        if isinstance(status, Mapping) and status.get("phase") in _FINISHED:
            continue
        key = pod_key(pod)
        value = _annotations(pod).get(keys.VGPU_DEVICES_ALLOCATED)
        if not value:
            wants = gpu_request_text(pod)
            spec = pod.get("spec")
            if wants is not None and not (isinstance(spec, Mapping) and spec.get("nodeName")):
                waiting.append(WaitingPod(pod=key, wants=wants))
            continue
        try:
            containers = decode_pod_single_device(value)
        except DecodeError as e:
            problems.append(f"pod {key}: {e}")
            continue
        shares = [share for container in containers for share in container]
        for i, held in enumerate(shares):
            part = f"{i + 1}/{len(shares)}" if len(shares) > 1 else ""
            if held.uuid not in holdings:
                problems.append(f"pod {key} holds {held.uuid}, which no node registers")
                continue
            holdings[held.uuid].append(
                Holding(pod=key, state=_state(pod), memory_mib=held.usedmem, cores=held.usedcores, part=part)
            )
    return ClusterView(
        nodes=tuple(node_names),
        gpus=tuple(
            GpuRow(node=node, device=device, holdings=tuple(holdings[uuid]))
            for uuid, (node, device) in sorted(rows.items(), key=lambda kv: (kv[1][0], kv[1][1].index))
        ),
        waiting=tuple(waiting),
        problems=tuple(problems),
    )


def _bar(used: int, total: int) -> str:
    filled = 0 if total <= 0 else min(BAR_WIDTH, round(BAR_WIDTH * used / total))
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def _short(uuid: str) -> str:
    return uuid if len(uuid) <= 16 else uuid[:15] + "~"


def render_table(
    view: ClusterView,
    *,
    title: str,
    refused: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The table as text (ASCII only, at most ~100 columns)."""
    out = [title, ""]
    by_node: dict[str, list[GpuRow]] = {}
    for row in view.gpus:
        by_node.setdefault(row.node, []).append(row)
    for node in view.nodes:
        rows = by_node.get(node, [])
        if not rows:
            out.append(f"{node}: no GPUs registered yet (waiting for its device plugin)")
            continue
        models = sorted({r.device.type for r in rows})
        sizes = sorted({r.device.devmem for r in rows})
        size = f"{sizes[0]} MiB" if len(sizes) == 1 else "various sizes"
        out.append(f"{node}: {len(rows)} x {', '.join(models)} ({size})")
        for row in rows:
            dev = row.device
            mem = f"{row.used_memory_mib:>6}/{dev.devmem} MiB"
            cores = f"cores {row.used_cores:>3}/{dev.devcore}%"
            shares = f"{len(row.holdings)}/{dev.count} shares"
            idle = "  idle" if not row.holdings else ""
            out.append(
                f"  GPU {dev.index:<2} {_short(str(dev.id)):<16} {_bar(row.used_memory_mib, dev.devmem)} "
                f"{mem}  {cores}  {shares}{idle}"
            )
            for h in row.holdings:
                label = h.pod + (f" [{h.part}]" if h.part else "")
                out.append(f"      - {label:<30} {h.memory_mib:>6} MiB  {h.cores:>3}% cores  {h.state}")
    total_mem = sum(r.device.devmem for r in view.gpus)
    used_mem = sum(r.used_memory_mib for r in view.gpus)
    busy = sum(1 for r in view.gpus if r.holdings)
    out.append("")
    out.append(
        f"{len(view.gpus)} GPUs on {len(view.nodes)} nodes, {busy} in use; {len(view.placed)} pods placed, "
        f"{len(view.waiting)} waiting; memory allocated {used_mem}/{total_mem} MiB"
        + (f" ({100 * used_mem / total_mem:.0f}%)" if total_mem else "")
    )
    if view.waiting:
        out.append("Not placed (Pending):")
        out.extend(f"  - {w.pod:<30} wants {w.wants}" for w in view.waiting)
    if refused:
        out.append("Refused at admission:")
        out.extend(f"  - {pod:<30} {message}" for pod, message in sorted(refused.items()))
    if view.problems:
        out.append("Problems:")
        out.extend(f"  ! {p}" for p in view.problems)
    out.extend(notes)
    return "\n".join(out) + "\n"
