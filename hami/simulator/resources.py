"""The kinds the simulated API server serves, and what differs between them.

One :class:`ResourceType` per (group, version, resource). Behaviour that real apiserver strategies
vary per kind (status subresource, generation tracking, unconditional PUT, create-on-PUT, field
selectors, name rules, whether DELETE returns the object) is data here, not code paths elsewhere.

Workload, networking, policy and RBAC kinds (services, deployments, jobs, roles, ...) are stored as an
apiserver without a controller-manager stores them: defaulted, validated and, for Services, given
cluster IPs and node ports (:mod:`hami.simulator.kindrules`), but no controller acts on them (no
ReplicaSets or pods appear, no status is filled in, no endpoints exist).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

ALL_VERBS: tuple[str, ...] = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)

FieldLabelStyle = Literal["core", "group", "generic"]
NameRule = Literal["subdomain", "label", "path"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceType:
    """One served kind; ``singular`` defaults to the lower-cased kind and ``plural`` to the singular
    plus ``s``, as every kind served here but ``deviceclasses`` names itself."""

    kind: str
    namespaced: bool
    group: str = ""
    version: str = "v1"
    plural: str = ""
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    tracks_generation: bool = False
    return_deleted: bool = False
    """DELETE answers with the removed object instead of a Success Status."""
    unconditional_update: bool = True
    """A PUT without ``metadata.resourceVersion`` is allowed (leases refuse it)."""
    create_on_update: bool = False
    """A PUT to a missing object creates it (leases)."""
    field_labels: tuple[str, ...] = ()
    """Field selector keys beyond ``metadata.name``/``metadata.namespace``."""
    field_label_style: FieldLabelStyle = "generic"
    name_rule: NameRule = "subdomain"
    storage: str = ""
    """Key of the object table; two API versions of one kind share it (events)."""
    subresources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # frozen: the derived names are set once, here
        if not self.singular:
            object.__setattr__(self, "singular", self.kind.lower())
        if not self.plural:
            object.__setattr__(self, "plural", f"{self.singular}s")

    @property
    def has_status(self) -> bool:
        """Has a ``/status`` subresource: main writes keep status, status writes keep spec."""
        return "status" in self.subresources

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The resource as messages name it: ``pods``, ``leases.coordination.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def store_key(self) -> str:
        return self.storage or self.qualified

    @property
    def group_version(self) -> str:
        return self.api_version


_CORE_POD_FIELDS = (
    "spec.nodeName",
    "spec.host",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
)
_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

_RBAC = "rbac.authorization.k8s.io"
# apps/v1 kinds: (kind, short name, field selector message style: only ReplicaSets register their own)
_APPS: tuple[tuple[str, str, FieldLabelStyle], ...] = (
    ("Deployment", "deploy", "generic"),
    ("DaemonSet", "ds", "generic"),
    ("StatefulSet", "sts", "generic"),
    ("ReplicaSet", "rs", "core"),
)

RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType(
        kind="Namespace",
        namespaced=False,
        short_names=("ns",),
        return_deleted=True,
        field_labels=("status.phase",),
        field_label_style="core",
        name_rule="label",
        subresources=("status",),
    ),
    ResourceType(
        kind="Node",
        namespaced=False,
        short_names=("no",),
        field_labels=("spec.unschedulable",),
        field_label_style="core",
        subresources=("status",),
    ),
    ResourceType(
        kind="Pod",
        namespaced=True,
        short_names=("po",),
        categories=("all",),
        tracks_generation=True,
        return_deleted=True,
        field_labels=_CORE_POD_FIELDS,
        field_label_style="core",
        subresources=("status", "binding"),
    ),
    ResourceType(
        kind="Event",
        namespaced=True,
        short_names=("ev",),
        field_labels=_EVENT_FIELDS,
        field_label_style="core",
        name_rule="path",
    ),
    ResourceType(
        kind="ConfigMap",
        namespaced=True,
        short_names=("cm",),
    ),
    ResourceType(
        kind="Secret",
        namespaced=True,
        field_labels=("type",),
        field_label_style="core",
    ),
    ResourceType(
        kind="ResourceQuota",
        namespaced=True,
        short_names=("quota",),
        subresources=("status",),
    ),
    ResourceType(
        kind="ServiceAccount",
        namespaced=True,
        short_names=("sa",),
    ),
    ResourceType(
        kind="Service",
        namespaced=True,
        short_names=("svc",),
        categories=("all",),
        return_deleted=True,
        field_label_style="core",
        subresources=("status",),
    ),
    ResourceType(
        group="events.k8s.io",
        kind="Event",
        namespaced=True,
        short_names=("ev",),
        field_labels=_EVENT_FIELDS,
        field_label_style="core",
        name_rule="path",
        storage="events",
    ),
    ResourceType(
        group="coordination.k8s.io",
        kind="Lease",
        namespaced=True,
        unconditional_update=False,
        create_on_update=True,
    ),
    ResourceType(
        group="admissionregistration.k8s.io",
        kind="MutatingWebhookConfiguration",
        namespaced=False,
        categories=("api-extensions",),
        tracks_generation=True,
    ),
    ResourceType(
        group="admissionregistration.k8s.io",
        kind="ValidatingWebhookConfiguration",
        namespaced=False,
        categories=("api-extensions",),
        tracks_generation=True,
    ),
    ResourceType(
        group="resource.k8s.io",
        plural="deviceclasses",
        kind="DeviceClass",
        namespaced=False,
        tracks_generation=True,
    ),
    ResourceType(
        group="resource.k8s.io",
        kind="ResourceClaim",
        namespaced=True,
        tracks_generation=True,
        subresources=("status",),
    ),
    ResourceType(
        group="resource.k8s.io",
        kind="ResourceClaimTemplate",
        namespaced=True,
    ),
    ResourceType(
        group="resource.k8s.io",
        kind="ResourceSlice",
        namespaced=False,
        tracks_generation=True,
        field_labels=("spec.nodeName", "spec.driver"),
        field_label_style="group",
    ),
    *(
        ResourceType(group=_RBAC, kind=kind, namespaced=namespaced)
        for kind, namespaced in (
            ("Role", True),
            ("RoleBinding", True),
            ("ClusterRole", False),
            ("ClusterRoleBinding", False),
        )
    ),
    ResourceType(
        group="policy",
        kind="PodDisruptionBudget",
        namespaced=True,
        short_names=("pdb",),
        tracks_generation=True,
        subresources=("status",),
    ),
    *(
        ResourceType(
            group="apps",
            kind=kind,
            namespaced=True,
            short_names=(short,),
            categories=("all",),
            tracks_generation=True,
            field_label_style=style,
            subresources=("status",),
        )
        for kind, short, style in _APPS
    ),
    ResourceType(
        group="batch",
        kind="Job",
        namespaced=True,
        categories=("all",),
        tracks_generation=True,
        field_label_style="core",
        subresources=("status",),
    ),
)


@dataclass(frozen=True, slots=True)
class ResourceRegistry:
    """Lookup of served resources by (group, version, plural)."""

    types: tuple[ResourceType, ...] = RESOURCE_TYPES

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self.types)

    def find(self, group: str, version: str, plural: str) -> ResourceType | None:
        for rt in self.types:
            if rt.group == group and rt.version == version and rt.plural == plural:
                return rt
        return None

    def get(self, qualified: str) -> ResourceType:
        """By ``plural`` (core) or ``plural.group``; the first version served."""
        for rt in self.types:
            if rt.qualified == qualified:
                return rt
        raise KeyError(qualified)

    def group_versions(self) -> Mapping[str, tuple[str, ...]]:
        """Group → versions (core group is ``""``), in registry order."""
        result: dict[str, tuple[str, ...]] = {}
        for rt in self.types:
            versions = result.get(rt.group, ())
            if rt.version not in versions:
                result[rt.group] = (*versions, rt.version)
        return result

    def in_group_version(self, group: str, version: str) -> tuple[ResourceType, ...]:
        return tuple(rt for rt in self.types if rt.group == group and rt.version == version)


REGISTRY = ResourceRegistry()

PODS = REGISTRY.get("pods")
NODES = REGISTRY.get("nodes")
NAMESPACES = REGISTRY.get("namespaces")
EVENTS = REGISTRY.get("events")
LEASES = REGISTRY.get("leases.coordination.k8s.io")
MUTATING_WEBHOOKS = REGISTRY.get("mutatingwebhookconfigurations.admissionregistration.k8s.io")
VALIDATING_WEBHOOKS = REGISTRY.get("validatingwebhookconfigurations.admissionregistration.k8s.io")
SERVICES = REGISTRY.get("services")
