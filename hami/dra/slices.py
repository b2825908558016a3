"""The node's ResourceSlice: building it, checking its shape, and keeping exactly one published.

One slice per node (k8s-apis.md §3.4, §3.5): pool = node name, ``resourceSliceCount: 1``, one
device ``hami-gpu-<index>`` per GPU with ``allowMultipleAllocations: true`` and consumable
capacities ``memory`` (bytes, policy 1Mi..total step 1Mi, default total) and ``cores`` (percent,
0..100 step 1, default 100), the shape of HAMi's own DRA driver, plus ``tasks``: HAMi's
``deviceSplitCount`` (value N, every share takes exactly 1), so at most N claims share one GPU as
the device plugin's N virtual devices allow. Claims need not mention it: the policy's default
applies.

Attributes (driver domain): ``type`` (``hami-gpu``), ``uuid``, ``index``, ``minor``, ``model``
(HAMi's registered type, ``NVIDIA-`` prefixed when the NVML name lacks it), ``productName`` (the
NVML name, as HAMi-DRA's selectors use it), ``numa`` (0 when the platform reports none, HAMi's
meaning), ``cudaComputeCapability`` and ``driverVersion`` (versions), and the standard
``resource.kubernetes.io/pciBusID``.

:class:`SlicePublisher` names the slice ``<node>-<driver>`` and owns it through a controller
reference to the Node. Each pass lists the driver's slices for the node, deletes strays (other
names: a previous naming scheme, ``generateName`` leftovers), creates or updates the one slice,
and bumps ``pool.generation`` only when the devices change. A restart therefore converges to the
same single object.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, Final

from hami.core.quantity import QuantityError, parse_quantity
from hami.dra.devices import DraGpu
from hami.k8s.client import KubeApi
from hami.k8s.errors import ApiAlreadyExists, ApiConflict, ApiError, ApiNotFound
from hami.k8s.objects import NODES, RawObject, Resource

logger = logging.getLogger(__name__)

RESOURCE_SLICES: Final = Resource(
    group="resource.k8s.io", version="v1", plural="resourceslices", kind="ResourceSlice", namespaced=False
)
API_VERSION: Final = "resource.k8s.io/v1"
DEVICE_TYPE: Final = "hami-gpu"
MIB: Final = 2**20
MAX_DEVICES: Final = 128
MAX_ATTRS_AND_CAPACITY: Final = 32
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_C_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEMVER: Final = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)


# --------------------------------------------------------------------------------------- building


def binary_quantity(value: int) -> str:
    """``80Gi`` / ``4000Mi`` / plain bytes: the shortest exact form."""
    for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value and value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)


def semver_of(text: str) -> str | None:
    """``"8.0"`` → ``"8.0.0"``, ``"570.124.06"`` → ``"570.124.6"``; None when not numeric."""
    parts = text.strip().split(".")
    if not text.strip() or len(parts) > 3 or not all(p.isdigit() for p in parts):
        return None
    numbers = [str(int(p)) for p in parts] + ["0"] * (3 - len(parts))
    return ".".join(numbers)


def hami_model(nvml_name: str) -> str:
    """HAMi's registered device type (``NVIDIA-`` prefixed unless the name starts with NVIDIA)."""
    return nvml_name if nvml_name.startswith("NVIDIA") else f"NVIDIA-{nvml_name}"


DEFAULT_SPLIT_COUNT: Final = 10  # HAMi's deviceSplitCount default
CAPACITY_TASKS: Final = "tasks"


def device_entry(gpu: DraGpu, *, split_count: int = DEFAULT_SPLIT_COUNT) -> dict[str, Any]:
    """One ``Device`` of the slice (attributes in the driver's domain)."""
    attributes: dict[str, dict[str, Any]] = {
        "type": {"string": DEVICE_TYPE},
        "uuid": {"string": gpu.uuid},
        "index": {"int": gpu.index},
        "model": {"string": hami_model(gpu.name)[:64]},
        "productName": {"string": gpu.name[:64]},
        "numa": {"int": gpu.numa_node if gpu.numa_node is not None else 0},
    }
    if gpu.minor is not None:
        attributes["minor"] = {"int": gpu.minor}
    capability = semver_of(gpu.compute_capability)
    if capability is not None:
        attributes["cudaComputeCapability"] = {"version": capability}
    driver_version = semver_of(gpu.driver_version)
    if driver_version is not None:
        attributes["driverVersion"] = {"version": driver_version}
    if gpu.pci_bus_id:
        attributes["resource.kubernetes.io/pciBusID"] = {"string": gpu.pci_bus_id}
    memory = binary_quantity(gpu.memory_bytes)
    return {
        "name": gpu.device_name,
        "allowMultipleAllocations": True,
        "attributes": attributes,
        "capacity": {
            "cores": {
                "value": "100",
                "requestPolicy": {"default": "100", "validRange": {"min": "0", "max": "100", "step": "1"}},
            },
            "memory": {
                "value": memory,
                "requestPolicy": {
                    "default": memory,
                    "validRange": {"min": "1Mi", "max": memory, "step": "1Mi"},
                },
            },
            CAPACITY_TASKS: {
                "value": str(split_count),
                "requestPolicy": {"default": "1", "validValues": ["1"]},
            },
        },
    }


def slice_name(node_name: str, driver: str) -> str:
    """``<node>-<driver>``, cut to the 253-character name limit."""
    return f"{node_name}-{driver}"[:253].rstrip("-.")


def slice_spec(
    node_name: str,
    driver: str,
    gpus: Sequence[DraGpu],
    *,
    generation: int,
    split_count: int = DEFAULT_SPLIT_COUNT,
) -> dict[str, Any]:
    return {
        "driver": driver,
        "nodeName": node_name,
        "pool": {"name": node_name, "generation": generation, "resourceSliceCount": 1},
        "devices": [device_entry(g, split_count=split_count) for g in sorted(gpus, key=lambda g: g.index)],
    }


def resource_slice(
    node_name: str,
    driver: str,
    gpus: Sequence[DraGpu],
    *,
    generation: int = 1,
    node_uid: str | None = None,
    split_count: int = DEFAULT_SPLIT_COUNT,
) -> dict[str, Any]:
    """The complete object; an owner reference to the Node when its UID is known."""
    metadata: dict[str, Any] = {"name": slice_name(node_name, driver)}
    if node_uid:
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "controller": True}
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceSlice",
        "metadata": metadata,
        "spec": slice_spec(node_name, driver, gpus, generation=generation, split_count=split_count),
    }


# --------------------------------------------------------------------------------------- validation


def _qualified_name_problem(name: str) -> str | None:
    domain, sep, ident = name.rpartition("/")
    if sep and (len(domain) > 63 or not _DNS_SUBDOMAIN.fullmatch(domain)):
        return f"domain {domain!r} is not a DNS subdomain of at most 63 characters"
    if len(ident) > 32 or not _C_IDENTIFIER.fullmatch(ident):
        return f"{ident!r} is not a C identifier of at most 32 characters"
    return None


def _quantity(value: object) -> Fraction | None:
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    try:
        return parse_quantity(value)
    except QuantityError:
        return None


def _attribute_problems(where: str, attr: object) -> list[str]:
    if not isinstance(attr, Mapping):
        return [f"{where}: expected an object"]
    kinds = [k for k in ("int", "bool", "string", "version") if k in attr]
    problems = [
        f"{where}: unknown field {k!r}" for k in attr if k not in ("int", "bool", "string", "version")
    ]
    if len(kinds) != 1:
        return [*problems, f"{where}: exactly one of int, bool, string, version must be set"]
    kind = kinds[0]
    value = attr[kind]
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63):
        problems.append(f"{where}.int: expected a 64-bit integer, got {value!r}")
    elif kind == "bool" and not isinstance(value, bool):
        problems.append(f"{where}.bool: expected a boolean, got {value!r}")
    elif kind == "string" and (not isinstance(value, str) or len(value) > 64):
        problems.append(f"{where}.string: expected a string of at most 64 characters")
    elif kind == "version" and (
        not isinstance(value, str) or len(value) > 64 or not _SEMVER.fullmatch(value)
    ):
        problems.append(f"{where}.version: {value!r} is not a semantic version 2.0 of at most 64 characters")
    return problems


def _capacity_problems(where: str, cap: object, multi: bool) -> list[str]:
    if not isinstance(cap, Mapping):
        return [f"{where}: expected an object"]
    problems = [f"{where}: unknown field {k!r}" for k in cap if k not in ("value", "requestPolicy")]
    total = _quantity(cap.get("value"))
    if total is None:
        return [*problems, f"{where}.value: required quantity, got {cap.get('value')!r}"]
    policy = cap.get("requestPolicy")
    if policy is None:
        return problems
    if not multi:
        problems.append(f"{where}.requestPolicy: only allowed when allowMultipleAllocations is true")
    if not isinstance(policy, Mapping):
        return [*problems, f"{where}.requestPolicy: expected an object"]
    default = _quantity(policy["default"]) if "default" in policy else None
    if "default" in policy and default is None:
        problems.append(f"{where}.requestPolicy.default: not a quantity")
    if default is not None and default > total:
        problems.append(f"{where}.requestPolicy.default: exceeds the capacity value")
    if "validValues" in policy and "validRange" in policy:
        problems.append(f"{where}.requestPolicy: at most one of validValues, validRange")
    values = policy.get("validValues")
    if values is not None:
        parsed = [_quantity(v) for v in values] if isinstance(values, list) else [None]
        if any(v is None for v in parsed) or not 1 <= len(parsed) <= 10:
            problems.append(f"{where}.requestPolicy.validValues: 1 to 10 quantities required")
        elif parsed != sorted(set(parsed), key=lambda v: v or 0):
            problems.append(f"{where}.requestPolicy.validValues: must be ascending without duplicates")
        elif default is not None and default not in parsed:
            problems.append(f"{where}.requestPolicy.validValues: must contain the default")
    rng = policy.get("validRange")
    if rng is not None:
        if not isinstance(rng, Mapping) or _quantity(rng.get("min")) is None:
            problems.append(f"{where}.requestPolicy.validRange.min: required quantity")
        else:
            lo = _quantity(rng["min"])
            hi = _quantity(rng["max"]) if "max" in rng else None
            step = _quantity(rng["step"]) if "step" in rng else None
            if "max" in rng and hi is None:
                problems.append(f"{where}.requestPolicy.validRange.max: not a quantity")
            if "step" in rng and (step is None or step <= 0):
                problems.append(f"{where}.requestPolicy.validRange.step: must be a positive quantity")
            assert lo is not None
            if hi is not None and hi < lo:
                problems.append(f"{where}.requestPolicy.validRange: max is below min")
            if hi is not None and hi > total:
                problems.append(f"{where}.requestPolicy.validRange.max: exceeds the capacity value")
            if default is not None and (default < lo or (hi is not None and default > hi)):
                problems.append(f"{where}.requestPolicy.default: outside validRange")
    return problems


def _device_problems(where: str, device: object) -> list[str]:
    if not isinstance(device, Mapping):
        return [f"{where}: expected an object"]
    problems: list[str] = []
    name = device.get("name")
    if not isinstance(name, str) or len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        problems.append(f"{where}.name: {name!r} is not a DNS label")
    multi = device.get("allowMultipleAllocations", False)
    if not isinstance(multi, bool):
        problems.append(f"{where}.allowMultipleAllocations: expected a boolean")
        multi = False
    attributes = device.get("attributes") or {}
    capacity = device.get("capacity") or {}
    if not isinstance(attributes, Mapping) or not isinstance(capacity, Mapping):
        return [*problems, f"{where}: attributes and capacity must be objects"]
    if len(attributes) + len(capacity) > MAX_ATTRS_AND_CAPACITY:
        problems.append(f"{where}: more than {MAX_ATTRS_AND_CAPACITY} attributes and capacities together")
    for section, entries in (("attributes", attributes), ("capacity", capacity)):
        for key, entry in entries.items():
            key_problem = _qualified_name_problem(str(key))
            if key_problem is not None:
                problems.append(f"{where}.{section}[{key!r}]: {key_problem}")
            if section == "attributes":
                problems.extend(_attribute_problems(f"{where}.attributes[{key!r}]", entry))
            else:
                problems.extend(_capacity_problems(f"{where}.capacity[{key!r}]", entry, multi))
    return problems


def validate_resource_slice(obj: Mapping[str, Any]) -> list[str]:
    """Structural checks of a ``resource.k8s.io/v1`` ResourceSlice (k8s-apis.md §3.4, §3.5).

    Returns the problems found, each naming the field; an empty list means valid.
    """
    problems: list[str] = []
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != "ResourceSlice":
        problems.append(f"apiVersion/kind must be {API_VERSION}/ResourceSlice")
    meta = obj.get("metadata") or {}
    if not (meta.get("name") or meta.get("generateName")):
        problems.append("metadata.name or metadata.generateName is required")
    name = str(meta.get("name") or "")
    if name and (len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name)):
        problems.append(f"metadata.name {name!r} is not a DNS subdomain")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return [*problems, "spec: required object"]
    known = {
        "driver",
        "pool",
        "nodeName",
        "nodeSelector",
        "allNodes",
        "perDeviceNodeSelection",
        "devices",
        "sharedCounters",
    }
    problems.extend(f"spec: unknown field {k!r}" for k in spec if k not in known)
    driver = spec.get("driver")
    if not isinstance(driver, str) or len(driver) > 63 or not _DNS_SUBDOMAIN.fullmatch(driver):
        problems.append(f"spec.driver {driver!r} is not a DNS subdomain of at most 63 characters")
    pool = spec.get("pool")
    if not isinstance(pool, Mapping):
        problems.append("spec.pool: required object")
    else:
        pool_name = pool.get("name")
        if (
            not isinstance(pool_name, str)
            or not pool_name
            or len(pool_name) > 253
            or not all(_DNS_SUBDOMAIN.fullmatch(p) for p in pool_name.split("/"))
        ):
            problems.append(f"spec.pool.name {pool_name!r} is not DNS subdomains separated by '/'")
        generation = pool.get("generation")
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            problems.append(f"spec.pool.generation must be an integer >= 0, got {generation!r}")
        count = pool.get("resourceSliceCount")
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            problems.append(f"spec.pool.resourceSliceCount must be an integer > 0, got {count!r}")
    chosen = [
        k
        for k in ("nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection")
        if spec.get(k) not in (None, "", False)
    ]
    if len(chosen) != 1:
        problems.append(
            "spec: exactly one of nodeName, nodeSelector, allNodes, perDeviceNodeSelection must be set"
            f" (found {chosen or 'none'})"
        )
    devices = spec.get("devices") or []
    if not isinstance(devices, list):
        return [*problems, "spec.devices: expected a list"]
    if len(devices) > MAX_DEVICES:
        problems.append(f"spec.devices: at most {MAX_DEVICES} devices, got {len(devices)}")
    seen: set[str] = set()
    for i, device in enumerate(devices):
        problems.extend(_device_problems(f"spec.devices[{i}]", device))
        device_name = device.get("name") if isinstance(device, Mapping) else None
        if isinstance(device_name, str):
            if device_name in seen:
                problems.append(f"spec.devices[{i}].name {device_name!r} is duplicated")
            seen.add(device_name)
    return problems


# --------------------------------------------------------------------------------------- publishing


def _same_content(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    cur_meta = current.get("metadata") or {}
    return current.get("spec") == wanted["spec"] and (cur_meta.get("ownerReferences") or None) == (
        wanted["metadata"].get("ownerReferences") or None
    )


class SlicePublisher:
    """Keeps the node's single ResourceSlice in place (see the module docstring)."""

    def __init__(
        self,
        api: KubeApi,
        node_name: str,
        driver: str,
        gpus: Sequence[DraGpu],
        *,
        split_count: int = DEFAULT_SPLIT_COUNT,
    ) -> None:
        self._api = api
        self.node_name = node_name
        self.driver = driver
        self.gpus = tuple(gpus)
        self.split_count = split_count
        self.name = slice_name(node_name, driver)
        self.published = asyncio.Event()

    async def _node_uid(self) -> str | None:
        try:
            node = await self._api.get(NODES, self.node_name)
        except ApiNotFound:
            logger.warning("node %s not found: ResourceSlice published without an owner", self.node_name)
            return None
        return (node.get("metadata") or {}).get("uid") or None

    async def publish(self) -> RawObject:
        """One reconcile pass; returns the slice as stored. Raises ``ApiError`` on failure."""
        listed = await self._api.list_all(
            RESOURCE_SLICES, field_selector=f"spec.driver={self.driver},spec.nodeName={self.node_name}"
        )
        ours: RawObject | None = None
        top_generation = 0
        for item in listed["items"]:
            meta = item.get("metadata") or {}
            pool = (item.get("spec") or {}).get("pool") or {}
            top_generation = max(top_generation, int(pool.get("generation") or 0))
            if meta.get("name") == self.name:
                ours = item
                continue
            logger.info("deleting stray ResourceSlice %s of node %s", meta.get("name"), self.node_name)
            try:
                await self._api.delete(RESOURCE_SLICES, str(meta.get("name")), uid=meta.get("uid"))
            except (ApiNotFound, ApiConflict):
                pass
        node_uid = await self._node_uid()
        wanted = resource_slice(
            self.node_name,
            self.driver,
            self.gpus,
            generation=1,
            node_uid=node_uid,
            split_count=self.split_count,
        )
        if ours is not None:
            current_spec = ours.get("spec") or {}
            current_generation = int((current_spec.get("pool") or {}).get("generation") or 0)
            newest = current_generation == top_generation
            same_devices = newest and current_spec.get("devices") == wanted["spec"]["devices"]
            generation = current_generation if same_devices else top_generation + 1
            wanted["spec"]["pool"]["generation"] = max(generation, 1)
            if _same_content(ours, wanted):
                self.published.set()
                return ours
            wanted["metadata"]["resourceVersion"] = (ours.get("metadata") or {}).get("resourceVersion", "")
            stored = await self._api.replace(RESOURCE_SLICES, self.name, wanted)
            logger.info("updated ResourceSlice %s (pool generation %d)", self.name, generation)
        else:
            wanted["spec"]["pool"]["generation"] = top_generation + 1
            try:
                stored = await self._api.create(RESOURCE_SLICES, wanted)
            except ApiAlreadyExists:
                # Created between our list and now (another instance): the next pass reconciles it.
                stored = await self._api.get(RESOURCE_SLICES, self.name)
            logger.info("published ResourceSlice %s with %d devices", self.name, len(self.gpus))
        self.published.set()
        return stored

    async def run(self, *, interval_s: float = 30.0, retry_s: float = 2.0) -> None:
        """Publish, then re-check every ``interval_s`` (a deleted or edited slice is restored)."""
        while True:
            try:
                await self.publish()
            except ApiError as e:
                logger.warning("publishing ResourceSlice %s failed: %s; retrying", self.name, e)
                await asyncio.sleep(retry_s)
                continue
            await asyncio.sleep(interval_s)
