"""Builders shared by the vendor tests: pods as the API returns them, nodes from node-agent output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from hami.core.deviceconfig import DeviceConfig
from hami.core.errors import DecodeError
from hami.core.ledger import Ledger
from hami.core.model import PodDevices
from hami.core.placement import Decision, Unschedulable, schedule
from hami.core.requests import PodRequest, pod_request
from hami.core.snapshot import ClusterSnapshot
from hami.core.vendor import VendorRegistry
from hami.core.vendors import build_registry

NOW = datetime(2026, 1, 20, 7, 12, 17, tzinfo=UTC)
CONFIG = DeviceConfig()


def registry() -> VendorRegistry:
    return build_registry(CONFIG, enable_ascend=True, enable_iluvatar=True, clock=lambda: NOW)


def pod(
    *containers: Mapping[str, object] | None,
    annotations: Mapping[str, str] | None = None,
    name: str = "p",
) -> dict[str, Any]:
    """One container per argument: its ``limits`` (None: a container asking nothing)."""
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "containers": [
                {"name": f"c{i}", "resources": {"limits": {k: str(v) for k, v in (limits or {}).items()}}}
                for i, limits in enumerate(containers)
            ]
        },
    }


def request_of(reg: VendorRegistry, raw: Mapping[str, Any]) -> PodRequest:
    return pod_request(raw, CONFIG.nvidia, readers=reg.request_readers())


def node_from(
    reg: VendorRegistry, name: str, annotations: Mapping[str, str], allocatable: Mapping[str, str]
) -> list[Any]:
    """Every registry vendor's devices on a node with these annotations and capacity."""
    devices: list[Any] = []
    for vendor in reg:
        try:
            devices.extend(vendor.node_devices(annotations, allocatable, node=name))
        except DecodeError as e:  # only "vendor not on this node" is expected
            assert "not found" in str(e), f"{vendor.name}: {e}"
    return devices


def cluster(reg: VendorRegistry, nodes: Mapping[str, tuple[Mapping[str, str], Mapping[str, str]]]) -> Ledger:
    ledger = Ledger()
    for name, (notes, allocatable) in nodes.items():
        ledger.set_node_devices(name, node_from(reg, name, notes, allocatable))
    return ledger


def place(
    reg: VendorRegistry,
    snapshot: ClusterSnapshot,
    raw_pod: Mapping[str, Any],
    nodes: Sequence[str] | None = None,
) -> Decision | Unschedulable:
    return schedule(
        snapshot, list(nodes if nodes is not None else snapshot.nodes), request_of(reg, raw_pod), reg
    )


def annotations_for(reg: VendorRegistry, decision: Decision, raw_pod: Mapping[str, Any]) -> dict[str, str]:
    """What the scheduler's Filter writes: every vendor's PatchAnnotations for the decision."""
    out: dict[str, str] = {}
    devices: PodDevices = decision.devices
    for vendor, assigned in devices.items():
        out.update(reg[vendor].allocation_annotations(assigned, pod=raw_pod, node=decision.node, now=NOW))
    return out
