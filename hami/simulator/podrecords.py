"""What the fake kubelet did with each pod (:class:`PodRecord`), and the files that show it.

A record is what tests and tools read back to check what a device plugin's ``Allocate`` answered
and which DRA claims and CDI edits a container got. Each is written as JSON to
``<state_dir>/pods/<namespace>_<name>_<uid>.json``; the PodResources-``List``-like view of the
running pods is written to ``<state_dir>/pod-resources.json``. Files are replaced atomically
(write, then rename), so a reader never sees half a document.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hami.simulator.devicemanager import ContainerAllocation
from hami.simulator.dra_kubelet import DraContainerDevices

TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRecord:
    """What the kubelet did with one pod: its device allocations and the outcome of admission."""

    namespace: str
    name: str
    uid: str
    node: str
    phase: str
    allocations: tuple[ContainerAllocation, ...] = ()
    dra: tuple[DraContainerDevices, ...] = ()
    claims: tuple[str, ...] = ()
    """The ResourceClaims prepared for the pod."""
    reason: str = ""
    message: str = ""

    def envs(self, container: str) -> dict[str, str]:
        """Env of one container as the runtime would see it (Allocate answers, then CDI edits)."""
        merged: dict[str, str] = {}
        for allocation in self.allocations:
            if allocation.container == container:
                merged.update(allocation.envs)
        for devices in self.dra:
            if devices.container == container:
                merged.update(devices.edits.env)
        return merged

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "node": self.node,
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "allocations": [a.to_json() for a in self.allocations],
            "dynamicResources": [d.to_json() for d in self.dra],
            "claims": list(self.claims),
        }


DeviceIds = Mapping[str, Mapping[str, Sequence[str]]]
"""Container → resource → device IDs a pod holds (:meth:`DeviceManager.assigned`)."""


def pod_resources_listing(
    records: Iterable[PodRecord], *, live: Container[str], assigned: Callable[[str], DeviceIds]
) -> list[dict[str, Any]]:
    """PodResources ``List``-like: the pods still running (``live`` UIDs, not in a terminal phase)
    with the device IDs and DRA claims per container."""
    listing: list[dict[str, Any]] = []
    for record in records:
        if record.phase in TERMINAL_PHASES or record.uid not in live:  # finished or gone
            continue
        containers = [
            {
                "name": container,
                "devices": [
                    {"resourceName": r, "deviceIds": list(ids)} for r, ids in sorted(resources.items())
                ],
            }
            for container, resources in assigned(record.uid).items()
        ]
        for dra in record.dra:
            entry = next((c for c in containers if c["name"] == dra.container), None)
            if entry is None:
                entry = {"name": dra.container, "devices": []}
                containers.append(entry)
            entry["dynamicResources"] = dra.pod_resources(record.namespace)
        listing.append({"name": record.name, "namespace": record.namespace, "containers": containers})
    return listing


def _replace_file(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_record(state_dir: Path, record: PodRecord) -> None:
    directory = state_dir / "pods"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record.namespace}_{record.name}_{record.uid}.json"
    _replace_file(path, json.dumps(record.to_json(), indent=1, sort_keys=True))


def write_pod_resources(state_dir: Path, listing: list[dict[str, Any]]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    _replace_file(state_dir / "pod-resources.json", json.dumps({"podResources": listing}, indent=1))
