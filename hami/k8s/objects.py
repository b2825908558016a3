"""Wire shapes of Kubernetes objects, resource references and key functions.

``Raw*`` TypedDicts describe JSON exactly as the apiserver sends it (style guide §3.1);
they are ``total=False`` because the server omits empty fields. Objects held by caches
are never mutated (``hami.cache.store``); writes are built as patches
(``hami.k8s.patches``).

This module is pure (no I/O) so that ``hami.simulator`` may share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, NotRequired, TypedDict

# --------------------------------------------------------------------------- metadata


class RawOwnerReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool
    blockOwnerDeletion: bool


class RawMeta(TypedDict, total=False):
    name: str
    generateName: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    creationTimestamp: str
    deletionTimestamp: str
    deletionGracePeriodSeconds: int
    labels: dict[str, str]
    annotations: dict[str, str]
    finalizers: list[str]
    ownerReferences: list[RawOwnerReference]
    managedFields: list[dict[str, Any]]


class RawObject(TypedDict, total=False):
    """Any object: what generic code (stores, reflectors) handles."""

    apiVersion: str
    kind: str
    metadata: RawMeta
    spec: Any
    status: Any


# --------------------------------------------------------------------------- pods


class RawContainer(TypedDict, total=False):
    name: str
    image: str
    resources: dict[str, dict[str, str]]
    env: list[dict[str, Any]]
    securityContext: dict[str, Any]


class RawPodSpec(TypedDict, total=False):
    nodeName: str
    schedulerName: str
    containers: list[RawContainer]
    initContainers: list[RawContainer]
    schedulingGates: list[dict[str, str]]
    priority: int
    nodeSelector: dict[str, str]
    tolerations: list[dict[str, Any]]


class RawPodStatus(TypedDict, total=False):
    phase: str
    conditions: list[dict[str, Any]]
    qosClass: str
    nominatedNodeName: str


class RawPod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: RawMeta
    spec: RawPodSpec
    status: RawPodStatus


# --------------------------------------------------------------------------- nodes


class RawNodeSpec(TypedDict, total=False):
    unschedulable: bool
    taints: list[dict[str, Any]]
    providerID: str


class RawNodeStatus(TypedDict, total=False):
    capacity: dict[str, str]
    allocatable: dict[str, str]
    conditions: list[dict[str, Any]]
    addresses: list[dict[str, str]]


class RawNode(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: RawMeta
    spec: RawNodeSpec
    status: RawNodeStatus


# --------------------------------------------------------------------------- leases


class RawLeaseSpec(TypedDict, total=False):
    holderIdentity: str
    leaseDurationSeconds: int
    acquireTime: str
    renewTime: str
    leaseTransitions: int
    strategy: str
    preferredHolder: str


class RawLease(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: RawMeta
    spec: RawLeaseSpec


# --------------------------------------------------------------------------- status, lists, watch


class RawStatusCause(TypedDict, total=False):
    reason: str
    message: str
    field: str


class RawStatusDetails(TypedDict, total=False):
    name: str
    group: str
    kind: str
    uid: str
    causes: list[RawStatusCause]
    retryAfterSeconds: int


class RawStatus(TypedDict, total=False):
    """``meta/v1 Status``: error bodies, ``ERROR`` watch events, binding/delete results."""

    apiVersion: str
    kind: str
    metadata: dict[str, Any]
    status: Literal["Success", "Failure"]
    message: str
    reason: str
    details: RawStatusDetails
    code: int


# ``continue`` is a Python keyword, hence the functional syntax.
RawListMeta = TypedDict(
    "RawListMeta", {"resourceVersion": str, "continue": str, "remainingItemCount": int}, total=False
)


class RawList(TypedDict):
    apiVersion: NotRequired[str]
    kind: NotRequired[str]
    metadata: RawListMeta
    items: list[RawObject]


RawEventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]


class RawWatchEvent(TypedDict):
    type: RawEventType
    object: RawObject


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    """A group/version/resource plus what is needed to build URLs and messages."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``pods`` or ``leases.coordination.k8s.io``, as apiserver messages spell it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def _prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection_path(self, namespace: str | None = None) -> str:
        """Collection URL path; ``namespace=None`` on a namespaced kind means all namespaces."""
        if self.namespaced and namespace is not None:
            _check_segment("namespace", namespace)
            return f"{self._prefix()}/namespaces/{namespace}/{self.plural}"
        if not self.namespaced and namespace is not None:
            raise ValueError(f"{self.qualified} is cluster-scoped; got namespace {namespace!r}")
        return f"{self._prefix()}/{self.plural}"

    def item_path(self, name: str, namespace: str | None = None, subresource: str | None = None) -> str:
        if self.namespaced and namespace is None:
            raise ValueError(f"{self.qualified} is namespaced; a namespace is required for {name!r}")
        _check_segment("name", name)
        path = f"{self.collection_path(namespace)}/{name}"
        if subresource:
            _check_segment("subresource", subresource)
            path += f"/{subresource}"
        return path


_SEGMENT = re.compile(r"^[^/?#%\s]+$")


def _check_segment(what: str, value: str) -> None:
    # Names end up in URL paths: reject anything that would change the path's meaning.
    if not _SEGMENT.match(value) or value in (".", ".."):
        raise ValueError(f"invalid {what} {value!r} for a URL path")


PODS: Final = Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
NODES: Final = Resource(group="", version="v1", plural="nodes", kind="Node", namespaced=False)
NAMESPACES: Final = Resource(group="", version="v1", plural="namespaces", kind="Namespace", namespaced=False)
EVENTS: Final = Resource(group="", version="v1", plural="events", kind="Event", namespaced=True)
CONFIGMAPS: Final = Resource(group="", version="v1", plural="configmaps", kind="ConfigMap", namespaced=True)
RESOURCE_QUOTAS: Final = Resource(
    group="", version="v1", plural="resourcequotas", kind="ResourceQuota", namespaced=True
)
LEASES: Final = Resource(
    group="coordination.k8s.io", version="v1", plural="leases", kind="Lease", namespaced=True
)
EVENTS_V1: Final = Resource(
    group="events.k8s.io", version="v1", plural="events", kind="Event", namespaced=True
)


# --------------------------------------------------------------------------- keys and accessors


def object_key(obj: RawObject | RawPod | RawNode | RawLease) -> str:
    """``namespace/name`` for namespaced objects, ``name`` otherwise (client-go
    ``MetaNamespaceKeyFunc``)."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ValueError("object has no metadata.name")
    namespace = meta.get("namespace")
    return f"{namespace}/{name}" if namespace else name


def split_key(key: str) -> tuple[str | None, str]:
    """Inverse of ``object_key``: ``(namespace or None, name)``."""
    namespace, sep, name = key.partition("/")
    return (namespace, name) if sep else (None, namespace)


def resource_version(obj: RawObject | RawPod | RawNode | RawLease) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion", "")


def object_uid(obj: RawObject | RawPod | RawNode | RawLease) -> str:
    return (obj.get("metadata") or {}).get("uid", "")


# --------------------------------------------------------------------------- time formats


def format_time(dt: datetime) -> str:
    """``metav1.Time``: RFC 3339, second precision, UTC (``2025-10-23T17:48:23Z``)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(dt: datetime) -> str:
    """``metav1.MicroTime``: exactly six fractional digits. ``isoformat()`` drops them when
    zero, which Go's parser rejects (k8s-apis.md §6.2)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse ``metav1.Time``/``MicroTime`` (``Z`` or an offset, any fraction length)."""
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})", text)
    if m is None:
        raise ValueError(f"invalid RFC 3339 time {text!r}")
    base, frac, zone = m.groups()
    micros = int((frac or "0")[:6].ljust(6, "0"))
    dt = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return dt.replace(microsecond=micros).astimezone(UTC)
