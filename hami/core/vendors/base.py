"""What every non-NVIDIA vendor of :mod:`hami.core.vendors` shares (spec §4.1, §6.1, §7.4, §11).

:class:`BaseVendor` implements the :class:`~hami.core.vendor.Vendor` Protocol (the pure strategy),
the :class:`~hami.core.requests.RequestReader` Protocol (it is its own request reader) and the
webhook hook Protocol :class:`~hami.core.admission.AdmissionVendor` (``mutate_container``). A vendor
module subclasses it and supplies its request extraction, node-device source and, where HAMi does,
its own Fit, ScoreNode, usage rule and extra pod annotations.

The effects HAMi mixes into the same interface (node locks, handshake patches, health) are the
roles' business; each vendor describes them as data in :class:`VendorTraits` (lock annotation and
expiry, handshake annotation, health rule), with :func:`handshake_health` as the pure half of the
handshake rule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from hami.core import keys
from hami.core.errors import DecodeError, HamiError
from hami.core.fit import ContainerFit, FitContext
from hami.core.ids import DeviceID
from hami.core.model import ContainerDevice, ContainerDeviceRequest, DeviceInfo, PodSingleDevice
from hami.core.node_annotations import decode_handshake
from hami.core.pod_annotations import PodDeviceKeys, decode_pod_single_device, encode_pod_devices
from hami.core.policy import NodePolicy
from hami.core.requests import ContainerResources, DeviceSelectors
from hami.core.snapshot import DeviceUsage, NodeSnapshot, VendorSummary
from hami.core.vendors.fitloop import MAX_CORES, FitRules, generic_fit
from hami.core.vendors.podspec import JsonObject, capacity, limits_of

Clock = Callable[[], datetime]
HANDSHAKE_WINDOW: Final = timedelta(seconds=60)
NODE_LOCK: Final = keys.NODE_LOCK
NO_DEVICE_ERROR: Final = "no device found on node"


def utc_now() -> datetime:
    return datetime.now(UTC)


class VendorAdmissionError(HamiError):
    """A vendor webhook rejected a container (HAMi answers Errored 500, which rejects the pod)."""


# --------------------------------------------------------------------------------------- traits


class Health(StrEnum):
    """HAMi's ``CheckHealth`` families (spec §7.4)."""

    ALWAYS = "always"  # AMD, AWS Neuron, Cambricon, Mthreads, Kunlun XPU, Enflame VGCU
    CAPACITY = "capacity"  # Enflame GCU, Metax GPU: healthy iff the count capacity is > 0
    HANDSHAKE = "handshake"  # Hygon, Iluvatar, Ascend, Kunlun vXPU: Requesting/Reported/Deleted
    DEVICES = "devices"  # Metax sGPU: healthy iff its node annotation yields devices


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceNames:
    """HAMi ``GetResourceNames`` plus the other resource names the vendor reads."""

    count: str
    memory: str = ""
    cores: str = ""
    other: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        """Every name, e.g. for the extender's ``managedResources`` (``ignoredByScheduler: true``)."""
        return tuple(n for n in (self.count, self.memory, self.cores, *self.other) if n)


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorTraits:
    """The effectful half of HAMi's vendor interface, as data for the roles."""

    health: Health
    lock_key: str | None = None
    """Node annotation taken at bind (``hami.io/mutex.lock``; Cambricon ``cambricon.com/dsmlu.lock``)."""
    lock_expiry: timedelta | None = None
    """A lock older than this is taken over (Cambricon: 2 minutes; None: the node-lock timeout)."""
    handshake_key: str | None = None
    register_key: str | None = None
    """Node annotation holding the registration; None when devices come from node capacity."""
    handshake_device_plugin_keyword: bool = True
    """Whether HAMi's device-plugin process registers the common word (spec node §4.6)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePublication:
    """What a vendor's real node agent publishes for its devices: node annotations (registration,
    handshake, topology) and extended resources for ``status.capacity``/``allocatable``."""

    annotations: Mapping[str, str]
    capacity: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeVerdict:
    healthy: bool
    refresh: bool  # re-read the registration (HAMi's needUpdate)
    write: str | None = None  # the value the scheduler should patch in, if any


def handshake_health(value: str | None, now: datetime) -> HandshakeVerdict:
    """HAMi's generic handshake rule (spec §7.4) as a pure function of the annotation value.

    ``Requesting_<t>`` → healthy while ``now < t + 60 s``, no refresh (an unreadable time counts as
    expired); ``Deleted…`` → healthy, no refresh; anything else (``Reported …``, missing) → write
    ``Requesting_<now>``, healthy, refresh.
    """
    if value is not None:
        try:
            state = decode_handshake(value)
        except DecodeError:
            return HandshakeVerdict(healthy=False, refresh=False)
        if state.state == "requesting":
            assert state.time is not None
            return HandshakeVerdict(healthy=now < state.time + HANDSHAKE_WINDOW, refresh=False)
        if state.state == "deleted":
            return HandshakeVerdict(healthy=True, refresh=False)
    stamp = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return HandshakeVerdict(healthy=True, refresh=True, write=f"Requesting_{stamp}")


# --------------------------------------------------------------------------------------- selectors


def split_list(annotations: Mapping[str, str], key: str) -> tuple[str, ...] | None:
    """HAMi's comma list: not trimmed, ``""`` is the list ``("",)``; None when absent."""
    value = annotations.get(key)
    return None if value is None else tuple(value.split(","))


# --------------------------------------------------------------------------------------- base vendor


class BaseVendor(ABC):
    """Shared Protocol implementation; subclasses set the class attributes and the abstract hooks.

    Class attributes: ``pod_keys`` (HAMi ``InRequestDevices``/``SupportDevices``), ``use_uuid_key``
    / ``nouse_uuid_key``, ``use_type_key`` / ``nouse_type_key`` (read into the selectors),
    ``fit_rules`` (the shared Fit's switches) and ``traits``.
    """

    __slots__ = ("_name", "clock", "names", "pod_keys", "traits")

    use_uuid_key: str = ""
    nouse_uuid_key: str = ""
    use_type_key: str = ""
    nouse_type_key: str = ""
    fit_rules: FitRules = FitRules()

    def __init__(
        self,
        *,
        name: str,
        names: ResourceNames,
        pod_keys: PodDeviceKeys,
        traits: VendorTraits,
        clock: Clock | None = None,
    ) -> None:
        self._name = name
        self.names = names
        self.pod_keys = pod_keys
        self.traits = traits
        self.clock: Clock = clock if clock is not None else utc_now

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r})"

    # ---- identity ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def vendor(self) -> str:  # RequestReader
        return self._name

    @property
    def request_reader(self) -> BaseVendor:
        return self

    def uuid_keys(self) -> tuple[str, str]:
        """(use, nouse) UUID annotation keys ("" when the vendor has none)."""
        return self.use_uuid_key, self.nouse_uuid_key

    def type_keys(self) -> tuple[str, str]:
        """(use, nouse) type annotation keys the Fit applies ("" when none)."""
        return self.use_type_key, self.nouse_type_key

    @property
    def selection_keys(self) -> tuple[str, ...]:
        return tuple(k for k in (*self.type_keys(), *self.uuid_keys()) if k)

    @property
    def scores_nodes(self) -> bool:
        return False

    # ---- requests ------------------------------------------------------------------------

    @abstractmethod
    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        """HAMi ``GenerateResourceRequests`` (None when the container asks nothing of us)."""

    def selectors(self, annotations: Mapping[str, str], warnings: list[str]) -> DeviceSelectors:
        use_type, nouse_type = self.type_keys()
        use_uuid, nouse_uuid = self.uuid_keys()
        return DeviceSelectors(
            use_types=split_list(annotations, use_type) if use_type else None,
            nouse_types=split_list(annotations, nouse_type) if nouse_type else None,
            use_uuids=split_list(annotations, use_uuid) if use_uuid else None,
            nouse_uuids=split_list(annotations, nouse_uuid) if nouse_uuid else None,
        )

    # ---- node ----------------------------------------------------------------------------

    @abstractmethod
    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        """HAMi ``GetNodeDevices``: the node's devices (``devicevendor`` set), DecodeError if none."""

    def check_health(
        self, annotations: Mapping[str, str], allocatable: Mapping[str, str], now: datetime
    ) -> HandshakeVerdict:
        """HAMi ``CheckHealth`` for this vendor on a node (spec §7.4), pure."""
        match self.traits.health:
            case Health.HANDSHAKE:
                key = self.traits.handshake_key
                return handshake_health(annotations.get(key) if key else None, now)
            case Health.CAPACITY:
                return HandshakeVerdict(
                    healthy=(capacity(allocatable, self.names.count) or 0) > 0, refresh=True
                )
            case Health.DEVICES:
                try:
                    return HandshakeVerdict(
                        healthy=bool(self.node_devices(annotations, allocatable)), refresh=True
                    )
                except DecodeError:
                    return HandshakeVerdict(healthy=False, refresh=True)
        return HandshakeVerdict(healthy=True, refresh=True)

    @abstractmethod
    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """What this vendor's device plugin publishes for ``devices`` devices of ``memory_mib`` MiB
        on ``node`` (mock node agents and the simulator write exactly this)."""

    # ---- fit -----------------------------------------------------------------------------

    def prefilter(self, summary: VendorSummary | None, request: ContainerDeviceRequest) -> bool:
        """Bounds valid for the shared Fit: enough available (healthy, below split count) devices,
        and one with enough free memory/cores for a fixed-size request."""
        if summary is None:
            return True
        if summary.available == 0 or request.nums > summary.available:
            return False
        if request.memreq > 0 and request.memreq > summary.max_free_mem:
            return False
        return min(request.coresreq, MAX_CORES) <= summary.max_free_cores

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        return generic_fit(devices, request, ctx, allocated, self.fit_rules)

    def add_resource_usage(
        self, device: DeviceUsage, assigned: ContainerDevice
    ) -> tuple[DeviceUsage, ContainerDevice]:
        updated = device.with_usage(
            used=device.used + 1,
            usedmem=device.usedmem + assigned.usedmem,
            usedcores=device.usedcores + assigned.usedcores,
            mig=device.mig,
        )
        return updated, assigned

    def score_node(
        self,
        node: NodeSnapshot,
        assigned: PodSingleDevice,
        previous: Sequence[DeviceUsage],
        policy: NodePolicy,
    ) -> float:
        return 0.0

    # ---- annotations ---------------------------------------------------------------------

    def allocation_annotations(
        self,
        assigned: PodSingleDevice,
        *,
        pod: Mapping[str, object] | None = None,
        node: str = "",
        now: datetime | None = None,
    ) -> dict[str, str]:
        """HAMi ``PatchAnnotations``: the device keys (only when some container holds a device, as
        every vendor checks ``len(devlist) > 0``), then the vendor's own keys."""
        if not any(assigned):
            return {}
        out = encode_pod_devices({self._name: assigned}, device_keys={self._name: self.pod_keys})
        out.update(self.extra_annotations(assigned, pod=pod, node=node, now=now or self.clock()))
        return out

    def extra_annotations(
        self,
        assigned: PodSingleDevice,
        *,
        pod: Mapping[str, object] | None,
        node: str,
        now: datetime,
    ) -> dict[str, str]:
        """Vendor keys beside the device keys (none by default)."""
        return {}

    def decode_allocation(self, annotations: Mapping[str, str]) -> PodSingleDevice | None:
        key = self.pod_keys.allocated
        value = annotations.get(key)
        return None if value is None else decode_pod_single_device(value, key=key)

    # ---- webhook -------------------------------------------------------------------------

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        """HAMi ``MutateAdmission``; by default only "is the count resource in ``limits``"."""
        return self.names.count in limits_of(container)


def first_device(assigned: PodSingleDevice) -> ContainerDevice | None:
    for container in assigned:
        if container:
            return container[0]
    return None


def indices(devices: Sequence[ContainerDevice]) -> str:
    """``0,1,3``: the devices' indices as HAMi's ``fmt.Sprint(idx) + ","`` then TrimRight."""
    return ",".join(str(cd.idx) for cd in devices)


def last_indices(assigned: PodSingleDevice) -> str | None:
    """HAMi's loop that overwrites one key per non-empty container: the last one wins."""
    value: str | None = None
    for container in assigned:
        if container:
            value = indices(container)
    return value


def unix_nanos(when: datetime) -> str:
    """Go ``time.Now().UnixNano()`` as a decimal string."""
    if when.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return str((delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000)


def unix_seconds(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    return str(int(when.timestamp() // 1))


def vendor_info(
    device: DeviceInfo, vendor: str, custominfo: Mapping[str, object] | None = None
) -> DeviceInfo:
    """``device`` with ``devicevendor`` (and optionally ``custominfo``) set, as GetNodeDevices does."""
    return DeviceInfo(
        id=device.id,
        index=device.index,
        count=device.count,
        devmem=device.devmem,
        devcore=device.devcore,
        type=device.type,
        numa=device.numa,
        mode=device.mode,
        health=device.health,
        devicevendor=vendor,
        migtemplate=device.migtemplate,
        custominfo=device.custominfo if custominfo is None else custominfo,
        pair_scores=device.pair_scores,
    )


def capacity_devices(
    node: str,
    infix: str,
    count: int,
    *,
    vendor: str,
    split: int,
    devmem: int,
    devcore: int = 100,
    custominfo: Mapping[str, object] | None = None,
) -> tuple[DeviceInfo, ...]:
    """The ``count`` healthy devices a capacity-based ``GetNodeDevices`` makes, IDs
    ``<node>-<infix>-<i>`` (``count`` already bounded by :func:`~.podspec.device_count`)."""
    return tuple(
        DeviceInfo(
            id=DeviceID(f"{node}-{infix}-{i}"),
            index=i,
            count=split,
            devmem=devmem,
            devcore=devcore,
            type=vendor,
            health=True,
            devicevendor=vendor,
            custominfo={} if custominfo is None else custominfo,
        )
        for i in range(count)
    )


def registered_devices(
    annotations: Mapping[str, str],
    key: str,
    vendor: str,
    *,
    decode: Callable[..., tuple[DeviceInfo, ...]],
    empty_error: str = NO_DEVICE_ERROR,
) -> tuple[DeviceInfo, ...]:
    """The devices of a register annotation, as the annotation-based ``GetNodeDevices`` read it:
    missing → ``annos not found <key>``, no device → ``empty_error``; ``decode(value, key=key)``
    reads the format (JSON or legacy)."""
    value = annotations.get(key)
    if value is None:
        raise DecodeError(key, "", f"annos not found {key}")
    devices = decode(value, key=key)
    if not devices:
        raise DecodeError(key, value, empty_error)
    return tuple(vendor_info(d, vendor) for d in devices)


def share_request(vendor: str, nums: int, *, memory: int, cores: int) -> ContainerDeviceRequest:
    """A request for a share of each of ``nums`` devices: ``memory`` MiB (0: all of it, 100 %)."""
    return ContainerDeviceRequest(
        nums=nums, type=vendor, memreq=memory, mem_percentage_req=100 if memory == 0 else 0, coresreq=cores
    )


def requested_count(container: ContainerResources, name: str, warnings: list[str]) -> int | None:
    """The count a container asks of ``name``; None when absent, unreadable or not positive (the
    container asks nothing of the vendor, HAMi's empty ``GenerateResourceRequests``)."""
    nums = container.integer(name, warnings)
    return None if nums is None or nums <= 0 else nums


def reported(now: datetime) -> str:
    """A device plugin's handshake answer, ``Reported <Go time.Time.String()>``."""
    utc = now.astimezone(UTC)
    return f"Reported {utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond * 1000:09d} +0000 UTC"
