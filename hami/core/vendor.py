"""The vendor plug-in interface of the pure core, and NVIDIA's implementation (spec §4.1, §11).

HAMi's ``Devices`` interface mixes pure strategy (Fit, ScoreNode, request extraction) with API
effects (LockNode, CheckHealth patches, NodeCleanUp). Following the style guide (§1.6) only the
pure half lives here, as the :class:`Vendor` Protocol; node locks, handshakes and health patches
are the scheduler role's business. A vendor is registered in a :class:`VendorRegistry` built by the
composition root (no module-level registry), so another vendor plugs in without touching the core:
it supplies its request reader, node-device decoder, Fit, usage rule, node score and annotation
keys, and :func:`hami.core.placement.schedule` drives it exactly as it drives NVIDIA.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Final, Protocol

from hami.core import keys
from hami.core.deviceconfig import NvidiaConfig
from hami.core.errors import ConfigError
from hami.core.fit import ContainerFit, FitContext, nvidia_fit
from hami.core.mig import MigAllocationError, mig_allocate
from hami.core.model import (
    MODE_MIG,
    NVIDIA,
    ContainerDevice,
    ContainerDeviceRequest,
    DeviceInfo,
    PodSingleDevice,
)
from hami.core.node_annotations import nvidia_node_devices
from hami.core.pod_annotations import (
    NVIDIA_POD_KEYS,
    PodDeviceKeys,
    decode_pod_single_device,
    encode_pod_devices,
)
from hami.core.policy import NodePolicy
from hami.core.requests import NvidiaRequestReader, RequestReader
from hami.core.snapshot import DeviceUsage, NodeSnapshot, VendorSummary

MAX_CORES: Final = 100


class Vendor(Protocol):
    """The pure strategy of one device vendor, keyed by its common word (HAMi ``CommonWord``)."""

    @property
    def name(self) -> str:
        """Common word, e.g. ``NVIDIA``: the request type, ``ContainerDevice.type`` and the key of
        the vendor's entry in PodDevices. Fit receives the node's devices whose model string
        contains it (HAMi's rule)."""
        ...

    @property
    def pod_keys(self) -> PodDeviceKeys:
        """Pod annotation keys of an allocation (HAMi ``InRequestDevices`` / ``SupportDevices``)."""
        ...

    @property
    def selection_keys(self) -> tuple[str, ...]:
        """Pod annotations that constrain this vendor's device choice (use/nouse type and UUID...)."""
        ...

    @property
    def request_reader(self) -> RequestReader:
        """Request extraction (HAMi ``GenerateResourceRequests``) and the pod's selectors."""
        ...

    @property
    def scores_nodes(self) -> bool:
        """Whether :meth:`score_node` can return non-zero. When False (NVIDIA) a node's score is
        known before its fit, and the scheduler may stop at the first node that fits."""
        ...

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        """The node's devices of this vendor (HAMi ``GetNodeDevices``); DecodeError if none/unreadable.

        ``node`` (the node name) and ``labels`` are optional for compatibility: capacity-based
        vendors derive device IDs from the node name (``<node>-cambricon-mlu-0``) and AWS Neuron
        reads the ``node.kubernetes.io/instance-type`` label."""
        ...

    def prefilter(self, summary: VendorSummary | None, request: ContainerDeviceRequest) -> bool:
        """False only if :meth:`fit` certainly fails on a node with this summary (a cheap bound)."""
        ...

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        """Choose devices for one container (HAMi ``Fit``); ``devices`` are in Go's sorted order."""
        ...

    def add_resource_usage(
        self, device: DeviceUsage, assigned: ContainerDevice
    ) -> tuple[DeviceUsage, ContainerDevice]:
        """Apply one tentative assignment to a device (HAMi ``AddResourceUsage``); may rewrite the
        assignment (MIG). Raises a HamiError when it cannot be applied."""
        ...

    def score_node(
        self,
        node: NodeSnapshot,
        assigned: PodSingleDevice,
        previous: Sequence[DeviceUsage],
        policy: NodePolicy,
    ) -> float:
        """Extra node score for a fitting node (HAMi ``ScoreNode``), added to the default score."""
        ...

    def allocation_annotations(
        self,
        assigned: PodSingleDevice,
        *,
        pod: Mapping[str, object] | None = None,
        node: str = "",
        now: datetime | None = None,
    ) -> dict[str, str]:
        """Pod annotations recording a decision (HAMi ``PatchAnnotations``).

        The optional ``pod`` (raw JSON), ``node`` (chosen node) and ``now`` (decision time) feed
        vendor keys such as ``mthreads.com/predicate-node`` or Ascend's ``predicate-time``."""
        ...

    def decode_allocation(self, annotations: Mapping[str, str]) -> PodSingleDevice | None:
        """The pod's accounted allocation (``*-allocated`` key), None if absent; DecodeError if bad."""
        ...


class VendorRegistry:
    """The vendors a process handles, by common word; built once in ``hami.cli`` and passed down."""

    __slots__ = ("_vendors",)

    def __init__(self, vendors: Iterable[Vendor] = ()) -> None:
        self._vendors: dict[str, Vendor] = {}
        for vendor in vendors:
            self.register(vendor)

    def register(self, vendor: Vendor) -> None:
        if vendor.name in self._vendors:
            raise ConfigError(f"vendors.{vendor.name}", "registered twice")
        self._vendors[vendor.name] = vendor

    def get(self, name: str) -> Vendor | None:
        return self._vendors.get(name)

    def __getitem__(self, name: str) -> Vendor:
        return self._vendors[name]

    def __contains__(self, name: object) -> bool:
        return name in self._vendors

    def __iter__(self) -> Iterator[Vendor]:
        return iter(self._vendors.values())

    def __len__(self) -> int:
        return len(self._vendors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._vendors)

    def pod_device_keys(self) -> dict[str, PodDeviceKeys]:
        """For :func:`hami.core.pod_annotations.decode_pod_devices` / ``encode_pod_devices``."""
        return {v.name: v.pod_keys for v in self._vendors.values()}

    def decode_allocations(self, annotations: Mapping[str, str]) -> dict[str, PodSingleDevice]:
        """Every vendor's accounted allocation in a pod's annotations (for ``Ledger.commit``).

        Raises DecodeError for an unreadable value: the caller quarantines the node
        (``Ledger.quarantine``) rather than counting the pod as using nothing.
        """
        out: dict[str, PodSingleDevice] = {}
        for vendor in self._vendors.values():
            decoded = vendor.decode_allocation(annotations)
            if decoded is not None:
                out[vendor.name] = decoded
        return out

    def request_readers(self) -> tuple[RequestReader, ...]:
        """Readers of every vendor but NVIDIA (``requests.pod_request`` always reads NVIDIA)."""
        return tuple(v.request_reader for v in self._vendors.values() if v.name != NVIDIA)


class NvidiaVendor:
    """NVIDIA (spec §4.2-§4.5, §5.5, §5.6). ``template_index_suffix`` reproduces v2.8.0's MIG
    suffix quirk (spec §14 item 7; see :mod:`hami.core.mig`)."""

    __slots__ = ("_reader", "config", "template_index_suffix")

    def __init__(self, config: NvidiaConfig | None = None, *, template_index_suffix: bool = False) -> None:
        self.config = config if config is not None else NvidiaConfig()
        self.template_index_suffix = template_index_suffix
        self._reader = NvidiaRequestReader(self.config)

    @property
    def name(self) -> str:
        return NVIDIA

    @property
    def pod_keys(self) -> PodDeviceKeys:
        return NVIDIA_POD_KEYS

    @property
    def selection_keys(self) -> tuple[str, ...]:
        return (
            keys.USE_GPUTYPE,
            keys.NOUSE_GPUTYPE,
            keys.USE_GPUUUID,
            keys.NOUSE_GPUUUID,
            keys.NUMA_BIND,
            keys.VGPU_MODE,
        )

    @property
    def request_reader(self) -> RequestReader:
        return self._reader

    @property
    def scores_nodes(self) -> bool:
        return False

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        return nvidia_node_devices(annotations, known_mig_geometries=self.config.known_mig_geometries)

    def prefilter(self, summary: VendorSummary | None, request: ContainerDeviceRequest) -> bool:
        if summary is None:
            return True
        cores = min(request.coresreq, MAX_CORES)
        if summary.available == 0 or cores > summary.max_free_cores:
            return False
        if request.memreq > 0 and request.memreq > summary.max_free_mem:
            return False
        if summary.mig:
            return True  # one MIG GPU can take several devices of the request
        if request.nums > summary.available:
            return False
        return not (cores == MAX_CORES and request.nums > summary.exclusive)

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        return nvidia_fit(devices, request, ctx, allocated)

    def add_resource_usage(
        self, device: DeviceUsage, assigned: ContainerDevice
    ) -> tuple[DeviceUsage, ContainerDevice]:
        mig = device.mig
        if device.mode == MODE_MIG:
            mig, assigned = mig_allocate(
                device.mig, device.mig_geometries, assigned, template_index_suffix=self.template_index_suffix
            )
            # The instance's cores and memory replace the request's, which is what fit checked; a
            # GPU whose recorded usage is off (an allocation written outside this scheduler) may not
            # hold them, and the ledger would refuse the reservation: reject the node here instead.
            if (
                device.usedcores + assigned.usedcores > device.totalcore
                or device.usedmem + assigned.usedmem > device.totalmem
            ):
                raise MigAllocationError(
                    f"MIG instance {assigned.uuid} ({assigned.usedmem} MiB, {assigned.usedcores} % cores) "
                    f"exceeds what {device.id} has left ({device.totalmem - device.usedmem} MiB, "
                    f"{device.totalcore - device.usedcores} % cores)"
                )
        updated = device.with_usage(
            used=device.used + 1,
            usedmem=device.usedmem + assigned.usedmem,
            usedcores=device.usedcores + assigned.usedcores,
            mig=mig,
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

    def allocation_annotations(
        self,
        assigned: PodSingleDevice,
        *,
        pod: Mapping[str, object] | None = None,
        node: str = "",
        now: datetime | None = None,
    ) -> dict[str, str]:
        return encode_pod_devices({NVIDIA: assigned}, device_keys={NVIDIA: NVIDIA_POD_KEYS})

    def decode_allocation(self, annotations: Mapping[str, str]) -> PodSingleDevice | None:
        key = NVIDIA_POD_KEYS.allocated
        value = annotations.get(key)
        return None if value is None else decode_pod_single_device(value, key=key)


def default_registry(config: NvidiaConfig | None = None) -> VendorRegistry:
    """A registry with NVIDIA only (other vendors are added by their own task)."""
    return VendorRegistry([NvidiaVendor(config)])
