"""Builders for the objects the embedded cluster, its tests and the demo create: nodes and GPU pods.

Plain JSON dicts, as the API server takes them. GPU pods use HAMi's resource names
(``nvidia.com/gpu``, ``gpumem``, ``gpumem-percentage``, ``gpucores``) in ``limits``, which is how
HAMi users write them; requests default from limits on the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from hami.core import keys
from hami.core.errors import ConfigError
from hami.core.vendors import MOCK_VENDOR_NAMES, NodePublication, mock_vendor
from hami.simulator.kubelet import RUN_SECONDS_ANNOTATION

JsonObj = dict[str, Any]

GPU_NODE_LABEL: Final = "gpu"
GPU_NODE_LABEL_VALUE: Final = "on"
"""HAMi's device plugin DaemonSet selects nodes labelled ``gpu=on``."""
DEFAULT_GPU_MODEL: Final = "NVIDIA H100 80GB HBM3"
DEFAULT_GPU_MEMORY_MIB: Final = 81559
"""The H100 fixture's NVML total memory (85520809984 bytes) in MiB."""
DEFAULT_IMAGE: Final = "registry.k8s.io/pause:3.10"
# NVIDIA GPU feature discovery labels: what a real GPU node advertises about its cards.
LABEL_GPU_PRODUCT: Final = "nvidia.com/gpu.product"
LABEL_GPU_COUNT: Final = "nvidia.com/gpu.count"
LABEL_GPU_MEMORY: Final = "nvidia.com/gpu.memory"
NVIDIA_VENDOR: Final = "nvidia"
LABEL_VENDOR: Final = "hami.io/simulated-vendor"
"""Label of simulated nodes whose devices impersonate another vendor's node agent."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """One simulated node: allocatable CPU/memory/pods and the mock GPUs a device plugin will serve."""

    name: str
    cpu: str = "32"
    memory: str = "256Gi"
    pods: int = 110
    ephemeral_storage: str = "500Gi"
    gpus: int = 4
    gpu_model: str = DEFAULT_GPU_MODEL
    gpu_memory_mib: int = DEFAULT_GPU_MEMORY_MIB
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, str], ...] = ()
    unschedulable: bool = False
    vendor: str = NVIDIA_VENDOR
    """Whose devices the node has: ``nvidia`` (served by a mock device-plugin process) or a
    :data:`~hami.core.vendors.MOCK_VENDOR_NAMES` vendor, whose registration annotations and
    capacity are written into the Node at creation, as that vendor's plugin would publish them
    (``gpus`` devices of the vendor's default card)."""

    @property
    def nvidia(self) -> bool:
        return self.vendor == NVIDIA_VENDOR

    def vendor_publication(self, now: datetime | None = None) -> NodePublication | None:
        """What the impersonated vendor's plugin publishes for this node (None for NVIDIA)."""
        if self.nvidia:
            return None
        return mock_vendor(self.vendor).impersonate(
            self.name, self.gpus, memory_mib=None, now=now if now is not None else datetime.now(UTC)
        )

    def mock_gpu_document(self) -> JsonObj:
        """The mock device-plugin backend's GPU file (``{"count", "model", "memory"}``)."""
        return {"count": self.gpus, "model": self.gpu_model, "memory": self.gpu_memory_mib}


def gpu_label_value(model: str) -> str:
    """A GPU model as a label value (GFD style: spaces become dashes, at most 63 characters)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in model).strip("-_.")
    return cleaned[:63].rstrip("-_.")


def node_manifest(spec: NodeSpec) -> JsonObj:
    """A Node as its kubelet registers it (capacity = allocatable; devices come from plugins)."""
    nvidia_gpus = spec.gpus > 0 and spec.nvidia
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **({GPU_NODE_LABEL: GPU_NODE_LABEL_VALUE} if nvidia_gpus else {}),
        **(
            {
                LABEL_GPU_PRODUCT: gpu_label_value(spec.gpu_model),
                LABEL_GPU_COUNT: str(spec.gpus),
                LABEL_GPU_MEMORY: str(spec.gpu_memory_mib),
            }
            if nvidia_gpus
            else {}
        ),
        **({} if spec.nvidia else {LABEL_VENDOR: spec.vendor}),
        **spec.labels,
    }
    resources = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "pods": str(spec.pods),
        "ephemeral-storage": spec.ephemeral_storage,
    }
    metadata: JsonObj = {"name": spec.name, "labels": labels}
    publication = spec.vendor_publication()
    if publication is not None:
        resources.update(publication.capacity)
        if publication.annotations:
            metadata["annotations"] = dict(publication.annotations)
    node_spec: JsonObj = {}
    if spec.taints:
        node_spec["taints"] = [dict(t) for t in spec.taints]
    if spec.unschedulable:
        node_spec["unschedulable"] = True
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": node_spec,
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def container(
    name: str,
    *,
    image: str = DEFAULT_IMAGE,
    requests: Mapping[str, str | int] | None = None,
    limits: Mapping[str, str | int] | None = None,
    command: Sequence[str] = (),
) -> JsonObj:
    resources: JsonObj = {}
    if requests:
        resources["requests"] = {k: str(v) for k, v in requests.items()}
    if limits:
        resources["limits"] = {k: str(v) for k, v in limits.items()}
    built: JsonObj = {"name": name, "image": image, "resources": resources}
    if command:
        built["command"] = list(command)
    return built


def gpu_limits(
    *,
    gpus: int = 1,
    gpumem: int | None = None,
    gpumem_percentage: int | None = None,
    gpucores: int | None = None,
) -> dict[str, str]:
    """HAMi resource limits: ``nvidia.com/gpu`` and the optional memory (MiB), percentage and cores."""
    limits = {keys.RESOURCE_GPU: str(gpus)}
    if gpumem is not None:
        limits[keys.RESOURCE_GPUMEM] = str(gpumem)
    if gpumem_percentage is not None:
        limits[keys.RESOURCE_GPUMEM_PERCENTAGE] = str(gpumem_percentage)
    if gpucores is not None:
        limits[keys.RESOURCE_GPUCORES] = str(gpucores)
    return limits


def pod_manifest(
    name: str,
    *,
    namespace: str = "default",
    containers: Sequence[JsonObj],
    init_containers: Sequence[JsonObj] = (),
    scheduler_name: str | None = None,
    node_name: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
    priority: int | None = None,
    run_seconds: float | None = None,
) -> JsonObj:
    """A Pod; ``run_seconds`` makes the fake kubelet finish it (``Succeeded``) after that long."""
    meta: JsonObj = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = dict(labels)
    notes = dict(annotations or {})
    if run_seconds is not None:
        notes[RUN_SECONDS_ANNOTATION] = f"{run_seconds:g}"
    if notes:
        meta["annotations"] = notes
    spec: JsonObj = {"containers": [dict(c) for c in containers]}
    if init_containers:
        spec["initContainers"] = [dict(c) for c in init_containers]
    if scheduler_name:
        spec["schedulerName"] = scheduler_name
    if node_name:
        spec["nodeName"] = node_name
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    if priority is not None:
        spec["priority"] = priority
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def gpu_pod(
    name: str,
    *,
    namespace: str = "default",
    gpus: int = 1,
    gpumem: int | None = None,
    gpumem_percentage: int | None = None,
    gpucores: int | None = None,
    scheduler_name: str | None = keys.DEFAULT_SCHEDULER_NAME,
    image: str = DEFAULT_IMAGE,
    cpu: str | None = None,
    memory: str | None = None,
    annotations: Mapping[str, str] | None = None,
    run_seconds: float | None = None,
    node_name: str | None = None,
) -> JsonObj:
    """A one-container pod asking HAMi for ``gpus`` shares of a GPU (the usual vGPU pod)."""
    limits: dict[str, str | int] = dict(
        gpu_limits(gpus=gpus, gpumem=gpumem, gpumem_percentage=gpumem_percentage, gpucores=gpucores)
    )
    if cpu is not None:
        limits["cpu"] = cpu
    if memory is not None:
        limits["memory"] = memory
    return pod_manifest(
        name,
        namespace=namespace,
        containers=[container("main", image=image, limits=limits)],
        scheduler_name=scheduler_name,
        annotations=annotations,
        run_seconds=run_seconds,
        node_name=node_name,
    )


def parse_vendor_mix(text: str) -> tuple[tuple[str, int], ...]:
    """``nvidia:2,cambricon:1,hygon:1`` → ((vendor, nodes), ...); ConfigError naming the bad item."""
    mix: list[tuple[str, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        vendor, sep, count = item.partition(":")
        vendor = vendor.strip().lower()
        if vendor not in MOCK_VENDOR_NAMES:
            raise ConfigError(
                "--vendor-mix", f"unknown vendor {vendor!r}; known: {', '.join(MOCK_VENDOR_NAMES)}"
            )
        try:
            nodes = int(count) if sep else 1
        except ValueError:
            raise ConfigError("--vendor-mix", f"{item!r}: the node count must be an integer") from None
        if nodes < 0:
            raise ConfigError("--vendor-mix", f"{item!r}: the node count must be >= 0")
        mix.append((vendor, nodes))
    if not mix:
        raise ConfigError("--vendor-mix", "expected vendor:count items, e.g. nvidia:2,cambricon:1")
    return tuple(mix)


def vendor_node_specs(
    mix: Sequence[tuple[str, int]],
    *,
    gpus_per_node: int,
    gpu_model: str = DEFAULT_GPU_MODEL,
    gpu_memory_mib: int = DEFAULT_GPU_MEMORY_MIB,
) -> tuple[NodeSpec, ...]:
    """Nodes for a vendor mix: NVIDIA nodes ``node-1``, ``node-2``...; the others ``<vendor>-1``...,
    each with ``gpus_per_node`` devices (NVIDIA: of ``gpu_model``; others: the vendor's card)."""
    specs: list[NodeSpec] = []
    seen: dict[str, int] = {}
    for vendor, nodes in mix:
        for _ in range(nodes):
            seen[vendor] = seen.get(vendor, 0) + 1
            prefix = "node" if vendor == NVIDIA_VENDOR else vendor
            specs.append(
                NodeSpec(
                    name=f"{prefix}-{seen[vendor]}",
                    gpus=gpus_per_node,
                    gpu_model=gpu_model,
                    gpu_memory_mib=gpu_memory_mib,
                    vendor=vendor,
                )
            )
    return tuple(specs)
