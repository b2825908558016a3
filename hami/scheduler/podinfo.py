"""Pods decoded once at ingest (style guide §3.3): the typed side table of the pod informer.

:func:`decode_pod` never raises on bad *annotations*: an allocation the scheduler cannot read is
kept as ``decode_error`` so the state can quarantine the node (guessing zero usage would let the
next pod land on a device that is in fact taken). Only a structurally broken object (no
metadata) raises, and the informer then caches it without a decoded value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from hami.core import keys
from hami.core.errors import DecodeError, InvalidRequest
from hami.core.model import PodDevices
from hami.core.pod_annotations import decode_pod_single_device
from hami.core.vendor import VendorRegistry

TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})

OrderKey = tuple[str, str, str]
"""``(creationTimestamp, namespace, name)``: the order in which kubelet admits a batch of pods
(``HandlePodAdditions`` sorts by creation time) and in which the device plugin serves them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PodInfo:
    """What the scheduler needs of one pod, decoded from its raw object."""

    uid: str
    namespace: str
    name: str
    creation: str = ""
    node_name: str = ""  # spec.nodeName ("" = not bound)
    scheduler_name: str = ""
    phase: str = "Pending"
    deleting: bool = False
    vgpu_node: str | None = None  # hami.io/vgpu-node: where a scheduler placed it
    devices: PodDevices | None = None  # decoded *-devices-allocated (None: no allocation annotation)
    allocated: tuple[tuple[str, str], ...] = ()  # raw (key, value) of the allocated annotations
    decode_error: str | None = None
    bind_phase: str | None = None
    to_allocate_pending: bool = False  # some container entry still waits for the device plugin

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def order_key(self) -> OrderKey:
        return (self.creation, self.namespace, self.name)

    @property
    def placed(self) -> bool:
        """A scheduler wrote a decision for it (HAMi's pod cache admits exactly these)."""
        return self.vgpu_node is not None

    @property
    def in_handoff(self) -> bool:
        """Bound, and the device plugin still has to hand it devices (kubelet's Allocate pending).

        These are the pods the device plugin chooses among when kubelet calls Allocate. A pod being
        deleted stays among them until it is gone: kubelet may be admitting it right now (the
        plugin keeps its place too), and binding an older pod ahead of it would put that pod first
        in the plugin's line while kubelet's call is the deleted pod's.
        """
        return (
            bool(self.node_name)
            and self.phase == "Pending"
            and self.bind_phase == keys.BIND_PHASE_ALLOCATING
            and self.to_allocate_pending
        )

    @property
    def allocation_done(self) -> bool:
        """Bound and past Allocate (or never going to get there)."""
        return bool(self.node_name) and not self.in_handoff


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _annotations(meta: Mapping[str, Any]) -> Mapping[str, str]:
    raw = meta.get("annotations")
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}


def decode_pod(pod: Mapping[str, Any], registry: VendorRegistry) -> PodInfo:
    """Decode ``pod``; raises InvalidRequest only when it has no usable metadata.

    Each vendor reads its own accounted allocation (``Vendor.decode_allocation``, the
    ``*-devices-allocated`` key, position-preserving and strict)."""
    meta = pod.get("metadata")
    if not isinstance(meta, Mapping) or not _str(meta.get("name")):
        raise InvalidRequest("pod has no metadata.name")
    spec = pod.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    status = pod.get("status")
    status = status if isinstance(status, Mapping) else {}
    annotations = _annotations(meta)

    devices: dict[str, Any] = {}
    allocated: list[tuple[str, str]] = []
    errors: list[str] = []
    pending = False
    for impl in registry:
        vendor_keys = impl.pod_keys
        value = annotations.get(vendor_keys.allocated)
        if value is not None:
            allocated.append((vendor_keys.allocated, value))
            try:
                decoded = impl.decode_allocation(annotations)
            except DecodeError as e:
                errors.append(str(e))
            else:
                if decoded is not None:
                    devices[impl.name] = decoded
        key = vendor_keys.to_allocate
        if key is not None and key in annotations:
            try:
                if any(decode_pod_single_device(annotations[key], key=key)):
                    pending = True
            except DecodeError:
                pending = True  # unreadable: the plugin cannot be done with it either
    vgpu_node = annotations.get(keys.VGPU_NODE)
    if vgpu_node is not None and not vgpu_node:
        errors.append(f"{keys.VGPU_NODE} is empty")
    return PodInfo(
        uid=_str(meta.get("uid")),
        namespace=_str(meta.get("namespace")),
        name=_str(meta.get("name")),
        creation=_str(meta.get("creationTimestamp")),
        node_name=_str(spec.get("nodeName")),
        scheduler_name=_str(spec.get("schedulerName")),
        phase=_str(status.get("phase")) or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
        vgpu_node=vgpu_node,
        devices=MappingProxyType(devices) if allocated and not errors else None,
        allocated=tuple(allocated),
        decode_error="; ".join(errors) if errors else None,
        bind_phase=annotations.get(keys.BIND_PHASE),
        to_allocate_pending=pending,
    )
