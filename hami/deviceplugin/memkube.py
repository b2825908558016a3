"""An in-memory stand-in for the API server calls the device plugin makes.

Implements :class:`~hami.deviceplugin.podlookup.PodApi` and
:class:`~hami.deviceplugin.podlookup.NodeApi` with JSON merge-patch semantics (RFC 7386),
a resourceVersion precondition on patches, and a record of every patch, so tests and a
standalone plugin (no cluster) can run the full Allocate path.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hami.core.errors import HamiError


class NotFound(HamiError):
    pass


class Conflict(HamiError):
    pass


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``None`` deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass(frozen=True, slots=True)
class PatchRecord:
    kind: str  # "pod", "node", "node/status"
    name: str  # "ns/name" for pods
    patch: Mapping[str, Any]


class InMemoryKube:
    def __init__(self) -> None:
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._rv = 0
        self.patches: list[PatchRecord] = []

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    # -- setup (tests) ---------------------------------------------------------------------

    def put_node(self, node: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(dict(node))
        obj.setdefault("metadata", {})["resourceVersion"] = self._next_rv()
        self._nodes[obj["metadata"]["name"]] = obj
        return copy.deepcopy(obj)

    def put_pod(self, pod: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(dict(pod))
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta["resourceVersion"] = self._next_rv()
        self._pods[(meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def delete_pod(self, namespace: str, name: str) -> None:
        self._pods.pop((namespace, name), None)

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._pods[(namespace, name)])

    def node(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._nodes[name])

    # -- PodApi ----------------------------------------------------------------------------

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        try:
            return copy.deepcopy(self._pods[(namespace, name)])
        except KeyError:
            raise NotFound(f'pods "{name}" not found in namespace {namespace}') from None

    async def list_pods_on_node(self, node: str) -> Sequence[Mapping[str, Any]]:
        return [copy.deepcopy(p) for p in self._pods.values() if p.get("spec", {}).get("nodeName") == node]

    async def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        key = (namespace, name)
        if key not in self._pods:
            raise NotFound(f'pods "{name}" not found in namespace {namespace}')
        self._pods[key] = self._apply(self._pods[key], patch)
        self.patches.append(PatchRecord("pod", f"{namespace}/{name}", copy.deepcopy(dict(patch))))
        return copy.deepcopy(self._pods[key])

    # -- NodeApi ---------------------------------------------------------------------------

    async def get_node(self, name: str) -> Mapping[str, Any]:
        try:
            return copy.deepcopy(self._nodes[name])
        except KeyError:
            raise NotFound(f'nodes "{name}" not found') from None

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        if name not in self._nodes:
            raise NotFound(f'nodes "{name}" not found')
        self._nodes[name] = self._apply(self._nodes[name], patch)
        self.patches.append(PatchRecord("node", name, copy.deepcopy(dict(patch))))
        return copy.deepcopy(self._nodes[name])

    async def patch_node_status(self, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        if name not in self._nodes:
            raise NotFound(f'nodes "{name}" not found')
        status_only = {"status": patch.get("status", {})}
        self._nodes[name] = self._apply(self._nodes[name], status_only)
        self.patches.append(PatchRecord("node/status", name, copy.deepcopy(dict(patch))))
        return copy.deepcopy(self._nodes[name])

    def _apply(self, obj: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
        wanted = (
            patch.get("metadata", {}).get("resourceVersion")
            if isinstance(patch.get("metadata"), Mapping)
            else None
        )
        current = obj.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != current:
            raise Conflict(f"resourceVersion {wanted} does not match {current}")
        result: dict[str, Any] = merge_patch(obj, patch)
        result.setdefault("metadata", {})["resourceVersion"] = self._next_rv()
        return result


def allocating_pod(
    name: str,
    node: str,
    to_allocate: str,
    *,
    namespace: str = "default",
    uid: str | None = None,
    containers: Sequence[str] = ("app",),
    created: str = "2026-02-01T08:00:00Z",
    phase: str = "Pending",
) -> dict[str, Any]:
    """A pod as HAMi's scheduler leaves it between Bind and Allocate (node spec §4.1)."""
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{namespace}-{name}",
            "creationTimestamp": created,
            "labels": {"hami.io/vgpu-node": node},
            "annotations": {
                "hami.io/vgpu-node": node,
                "hami.io/vgpu-time": "1769932800",
                "hami.io/vgpu-devices-to-allocate": to_allocate,
                "hami.io/vgpu-devices-allocated": to_allocate,
                "hami.io/bind-phase": "allocating",
                "hami.io/bind-time": "1769932800",
            },
        },
        "spec": {"nodeName": node, "containers": [{"name": c, "image": "busybox"} for c in containers]},
        "status": {"phase": phase},
    }
