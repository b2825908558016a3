"""From a pod (raw JSON as the API returns it) to a typed device request (spec §4.2, §4.3, §5.1).

This is the only reader of device resource names and of the placement annotations.

HAMi 2.8 behaviours reproduced, and the places where we deliberately differ:

* Each quantity is read from ``limits`` first, then ``requests``; one that is not an exact integer
  (``"500m"``, ``"1.5"``) is ignored as if absent, as ``Quantity.AsInt64`` fails for it. We record
  a warning for it so the caller can surface an Event.
* **Init containers are not requested in 2.8** (only ``spec.containers`` are scheduled and
  annotated); their device requests are ignored and listed in :attr:`PodRequest.ignored_init_containers`.
* HAMi converts with Go ``int32(...)``, silently wrapping e.g. ``gpumem: 4Gi`` (4294967296 MiB) to
  0. We raise :class:`InvalidRequest` naming the field instead: the value can only be a mistake.
* Structural problems (``spec.containers`` not a list, a quantity that is not a quantity, a
  negative quantity) raise :class:`InvalidRequest` naming the field; the API server never
  produces them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from hami.core import keys
from hami.core.deviceconfig import NvidiaConfig
from hami.core.errors import InvalidRequest
from hami.core.model import NVIDIA, PERCENTAGE_UNSET, ContainerDeviceRequest
from hami.core.quantity import INT32_MAX, QuantityError, exact_integer, parse_quantity

EXCLUSIVE_CORES: Final = 100

# --------------------------------------------------------------------------------------- raw access


def _mapping(value: object, where: str) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: object, where: str) -> Sequence[object]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise InvalidRequest(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _string_map(value: object, where: str) -> dict[str, str]:
    raw = _mapping(value, where)
    out: dict[str, str] = {}
    for key, item in raw.items():
        if not isinstance(item, str):
            raise InvalidRequest(f"{where}[{key!r}]: expected a string, got {type(item).__name__}")
        out[str(key)] = item
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerResources:
    """One container's ``resources`` with the field path used in error messages."""

    where: str  # e.g. "spec.containers[0]"
    name: str
    limits: Mapping[str, object]
    requests: Mapping[str, object]

    def has(self, resource: str) -> bool:
        return resource in self.limits or resource in self.requests

    def integer(self, resource: str, warnings: list[str]) -> int | None:
        """HAMi's read: limits first, then requests; None when absent or not an exact integer."""
        for section, values in (("limits", self.limits), ("requests", self.requests)):
            if resource not in values:
                continue
            raw = values[resource]
            # Fast path: a plain decimal string ("4000"), the usual form, needs no Fraction. Up to
            # 9 ASCII digits it is an exact non-negative integer below INT32_MAX; anything else
            # (signs, suffixes, Unicode digits, long strings) takes the full parser and checks.
            if type(raw) is str and 0 < len(raw) <= 9 and raw.isascii() and raw.isdigit():
                return int(raw)
            where = f"{self.where}.resources.{section}[{resource!r}]"
            if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                raise InvalidRequest(f"{where}: expected a quantity, got {type(raw).__name__}")
            try:
                quantity = parse_quantity(raw if isinstance(raw, str | int) else repr(raw))
            except QuantityError as e:
                raise InvalidRequest(f"{where}: {e}") from None
            value = exact_integer(quantity)
            if value is None:
                warnings.append(f"{where}: {raw!r} is not an integer quantity and is ignored")
                return None
            if value < 0:
                raise InvalidRequest(f"{where}: {raw!r} must not be negative")
            if value > INT32_MAX:
                raise InvalidRequest(f"{where}: {raw!r} does not fit a 32-bit integer")
            return value
        return None


def container_resources(container: object, where: str) -> ContainerResources:
    raw = _mapping(container, where)
    resources = _mapping(raw.get("resources"), f"{where}.resources")
    name = raw.get("name", "")
    return ContainerResources(
        where=where,
        name=name if isinstance(name, str) else "",
        limits=_mapping(resources.get("limits"), f"{where}.resources.limits"),
        requests=_mapping(resources.get("requests"), f"{where}.resources.requests"),
    )


# --------------------------------------------------------------------------------------- vendor readers


class RequestReader(Protocol):
    """How one vendor reads its requests (HAMi ``GenerateResourceRequests``); vendors plug in here."""

    @property
    def vendor(self) -> str: ...

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        """The request of one container, or None when it asks nothing of this vendor (Nums <= 0)."""
        ...

    def selectors(self, annotations: Mapping[str, str], warnings: list[str]) -> DeviceSelectors:
        """The pod's placement constraints for this vendor, from its annotations."""
        ...


@dataclass(frozen=True, slots=True)
class NvidiaRequestReader:
    """NVIDIA ``GenerateResourceRequests`` (spec §5.1)."""

    config: NvidiaConfig

    @property
    def vendor(self) -> str:
        return NVIDIA

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        cfg = self.config
        nums = container.integer(cfg.resource_count_name, warnings)
        if nums is None or nums <= 0:
            return None
        memreq = container.integer(cfg.resource_memory_name, warnings) or 0
        if cfg.memory_factor > 1:
            memreq *= cfg.memory_factor
            if memreq > INT32_MAX:
                raise InvalidRequest(
                    f"{container.where}: {cfg.resource_memory_name} × memoryFactor {cfg.memory_factor} "
                    "does not fit a 32-bit integer"
                )
        percentage = container.integer(cfg.resource_memory_percentage_name, warnings)
        mem_percentage = PERCENTAGE_UNSET if percentage is None else percentage
        if mem_percentage == PERCENTAGE_UNSET and memreq == 0:
            if cfg.default_memory != 0:
                memreq = cfg.default_memory
            else:
                mem_percentage = 100
        cores = container.integer(cfg.resource_core_name, warnings)
        return ContainerDeviceRequest(
            nums=nums,
            type=NVIDIA,
            memreq=memreq,
            mem_percentage_req=mem_percentage,
            coresreq=cfg.default_cores if cores is None else cores,
        )

    def selectors(self, annotations: Mapping[str, str], warnings: list[str]) -> DeviceSelectors:
        return nvidia_selectors(annotations, warnings)


def is_exclusive(request: ContainerDeviceRequest) -> bool:
    """The request wants whole cards' compute (Fit clamps cores above 100 to 100, spec §5.5 step 6, 11)."""
    return request.coresreq >= EXCLUSIVE_CORES


def webhook_sets_exclusive_cores(container: ContainerResources, config: NvidiaConfig) -> bool:
    """Whether HAMi's webhook would add ``gpucores: 100`` to this container (spec §3 NVIDIA step 4).

    True when the count resource is present (limits or requests), the core resource is absent from
    both, and memory is "exclusive": ``gpumem-percentage`` present and equal to 100, or absent and
    either the memory resource name is configured empty or ``gpumem`` is absent.
    """
    if not container.has(config.resource_count_name) or container.has(config.resource_core_name):
        return False
    if container.has(config.resource_memory_percentage_name):
        return container.integer(config.resource_memory_percentage_name, []) == 100
    return config.resource_memory_name == "" or not container.has(config.resource_memory_name)


# --------------------------------------------------------------------------------------- selectors


def _go_upper(text: str) -> str:
    # Go's strings.ToUpper maps rune by rune; Python's upper() can expand ("ß" -> "SS").
    return "".join(ch.upper() if len(ch.upper()) == 1 else ch for ch in text)


_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSelectors:
    """Per-pod placement constraints of one vendor (NVIDIA keys: spec §4.3, checks: §5.5).

    Lists are split on ``,`` exactly as HAMi does: entries are **not trimmed** (``"A10, T4"`` has
    the entry ``" T4"``) and an empty annotation value is the list ``("",)``.
    """

    use_types: tuple[str, ...] | None = None
    nouse_types: tuple[str, ...] | None = None
    use_uuids: tuple[str, ...] | None = None
    nouse_uuids: tuple[str, ...] | None = None
    numa_bind: bool = False
    vgpu_mode: str | None = None

    def type_allowed(self, device_type: str) -> bool:
        """``use-gputype`` must match (case-insensitive substring; ``""`` matches all) and
        ``nouse-gputype`` must not (``""`` excludes all)."""
        upper = _go_upper(device_type)
        if self.use_types is not None and not any(_go_upper(t) in upper for t in self.use_types):
            return False
        return not (self.nouse_types is not None and any(_go_upper(t) in upper for t in self.nouse_types))

    def uuid_allowed(self, device_id: str) -> bool:
        """Exact membership; ``use-gpuuuid`` present makes ``nouse-gpuuuid`` irrelevant."""
        if self.use_uuids is not None:
            return device_id in self.use_uuids
        if self.nouse_uuids is not None:
            return device_id not in self.nouse_uuids
        return True

    def mode_allowed(self, mode: str) -> bool:
        """With ``vgpu-mode`` set, the device mode must be a substring of it."""
        return self.vgpu_mode is None or mode in self.vgpu_mode


def nvidia_selectors(annotations: Mapping[str, str], warnings: list[str]) -> DeviceSelectors:
    def split(key: str) -> tuple[str, ...] | None:
        value = annotations.get(key)
        return None if value is None else tuple(value.split(","))

    numa_raw = annotations.get(keys.NUMA_BIND)
    numa_bind = numa_raw in _GO_TRUE
    if numa_raw is not None and numa_raw not in _GO_TRUE and numa_raw not in _GO_FALSE:
        warnings.append(
            f"metadata.annotations[{keys.NUMA_BIND!r}]: {numa_raw!r} is not a boolean, read as false"
        )
    return DeviceSelectors(
        use_types=split(keys.USE_GPUTYPE),
        nouse_types=split(keys.NOUSE_GPUTYPE),
        use_uuids=split(keys.USE_GPUUUID),
        nouse_uuids=split(keys.NOUSE_GPUUUID),
        numa_bind=numa_bind,
        vgpu_mode=annotations.get(keys.VGPU_MODE),
    )


# --------------------------------------------------------------------------------------- pod request


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerRequest:
    """One regular container: its position in ``spec.containers`` and its per-vendor requests."""

    index: int
    name: str
    devices: Mapping[str, ContainerDeviceRequest] = field(default_factory=dict)

    @property
    def total_devices(self) -> int:
        return sum(request.nums for request in self.devices.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRequest:
    """What a pod asks of the device vendors, plus its placement constraints.

    ``containers`` has one entry per regular container, in order, including containers that request
    nothing (positions are what the pod annotations encode). ``selectors`` is keyed by vendor
    common word, for NVIDIA and the vendors the containers request (:meth:`selectors_for` gives
    the unconstrained default for any other). ``gpu_policy``/``node_policy`` are the raw
    annotation values (None when absent); unknown values keep HAMi's fallbacks, decided by the
    scoring code.
    """

    uid: str = ""
    namespace: str = ""
    name: str = ""
    containers: tuple[ContainerRequest, ...] = ()
    selectors: Mapping[str, DeviceSelectors] = field(default_factory=dict)
    gpu_policy: str | None = None
    node_policy: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    ignored_init_containers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def total_devices(self) -> int:
        """HAMi's "total": the sum of Nums over every container and vendor (0 ⇒ not a HAMi pod)."""
        return sum(container.total_devices for container in self.containers)

    @property
    def is_empty(self) -> bool:
        return self.total_devices == 0

    @property
    def vendors(self) -> frozenset[str]:
        return frozenset(vendor for container in self.containers for vendor in container.devices)

    def selectors_for(self, vendor: str) -> DeviceSelectors:
        return self.selectors.get(vendor, DeviceSelectors())


def pod_request(
    pod: Mapping[str, object], config: NvidiaConfig, *, readers: Sequence[RequestReader] = ()
) -> PodRequest:
    """Extract the device request of ``pod`` (raw JSON) for NVIDIA and any extra vendor ``readers``."""
    if not isinstance(pod, Mapping):
        raise InvalidRequest(f"pod: expected an object, got {type(pod).__name__}")
    metadata = _mapping(pod.get("metadata"), "metadata")
    annotations = _string_map(metadata.get("annotations"), "metadata.annotations")
    spec = _mapping(pod.get("spec"), "spec")
    all_readers: list[RequestReader] = [NvidiaRequestReader(config), *readers]
    warnings: list[str] = []

    containers: list[ContainerRequest] = []
    for i, raw in enumerate(_list(spec.get("containers"), "spec.containers")):
        resources = container_resources(raw, f"spec.containers[{i}]")
        devices: dict[str, ContainerDeviceRequest] = {}
        for reader in all_readers:
            request = reader.container_request(resources, warnings)
            if request is not None and request.nums > 0:
                devices[reader.vendor] = request
        containers.append(ContainerRequest(index=i, name=resources.name, devices=devices))

    ignored: list[str] = []
    for i, raw in enumerate(_list(spec.get("initContainers"), "spec.initContainers")):
        resources = container_resources(raw, f"spec.initContainers[{i}]")
        scratch: list[str] = []
        if any(reader.container_request(resources, scratch) is not None for reader in all_readers):
            ignored.append(resources.name)

    def meta_str(key: str) -> str:
        value = metadata.get(key, "")
        if not isinstance(value, str):
            raise InvalidRequest(f"metadata.{key}: expected a string, got {type(value).__name__}")
        return value

    # Selectors are read only for the vendors a container requests (placement and admission ask
    # no other): reading every registered vendor's annotations was a third of a request's cost.
    # NVIDIA's are always read, for their warning on a malformed numa-bind value.
    requested = {vendor for container in containers for vendor in container.devices}
    requested.add(NVIDIA)
    return PodRequest(
        uid=meta_str("uid"),
        namespace=meta_str("namespace"),
        name=meta_str("name"),
        containers=tuple(containers),
        selectors={
            reader.vendor: reader.selectors(annotations, warnings)
            for reader in all_readers
            if reader.vendor in requested
        },
        gpu_policy=annotations.get(keys.GPU_SCHEDULER_POLICY),
        node_policy=annotations.get(keys.NODE_SCHEDULER_POLICY),
        annotations=annotations,
        ignored_init_containers=tuple(ignored),
        warnings=tuple(warnings),
    )
