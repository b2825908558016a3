"""Kunlunxin: whole XPUs (common word ``kunlun``) and vXPUs (common word ``XPU``); spec §3, §11,
HAMi ``pkg/device/kunlun`` (``device.go``, ``vdevice.go``, ``topo.go``).

Both place on an 8-XPU board of two 4-XPU halves, with HAMi's graph selection: 1, 2 or 4 devices
from the half whose free count fits best (odd requests prefer a half with 1, then 3, 2, 4 free),
else an interconnected set (2: the cross-half pairs 0-4, 1-5, 2-6, 3-7; 4: one of six
4-device rings), 8 only when every device fits. "Halves" are **positions** in the device list
the Fit is given (HAMi's quirk; its list is NUMA-sorted, so they are the NUMA halves); a node
with fewer than 8 devices simply offers fewer. No fitting set → ``1/1 NumaNotFit`` (HAMi divides
by the number of reasons, not devices).

**kunlun** — ``kunlunxin.com/xpu``; devices from node capacity (98304 MiB, NUMA 1 for the upper
half, IDs ``<node>-kunlun-<i>``); a device fits when unused; a pick holds the whole card but only
``Used`` grows (HAMi's AddResourceUsage). Pod annotations ``hami.io/kunlun-allocated`` and
``BAIDU_COM_DEVICE_IDX`` (indices of the last container holding XPUs). Selection
``baidu.com/use|nouse-gpuuuid`` is declared but unused by HAMi's Fit. ScoreNode: 3000/2000/1000/0
as the pod's XPUs break fewer/equal/more board halves than the ones in use (``calcscore``).

**XPU** (vXPU) — ``kunlunxin.com/vxpu`` (count), ``kunlunxin.com/vxpu-memory`` rounded up to 24576,
49152 or 98304 MiB (cores = memory share of 98304, whole card when no memory); devices from
``hami.io/node-register-xpu`` (JSON) with the ``hami.io/node-handshake-xpu`` handshake; a device
fits when the memory is free and every vXPU on it has the same size. Pod annotations
``hami.io/xpu-devices-to-allocate`` / ``-allocated``; selection ``hami.io/use|no-use-xpu-uuid``
(declared, unused by HAMi's Fit); lock ``hami.io/mutex.lock``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Final

from hami.core import keys
from hami.core.deviceconfig import KunlunConfig
from hami.core.fit import ContainerFit, FitContext
from hami.core.ids import DeviceID
from hami.core.model import (
    MODE_HAMI_CORE,
    ContainerDevice,
    ContainerDeviceRequest,
    DeviceInfo,
    PodSingleDevice,
)
from hami.core.node_annotations import decode_node_devices_json, encode_node_devices
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.policy import NodePolicy
from hami.core.requests import ContainerResources
from hami.core.snapshot import DeviceUsage, NodeSnapshot, VendorSummary
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorTraits,
    last_indices,
    registered_devices,
    reported,
    requested_count,
)
from hami.core.vendors.fitloop import NUMA, no_devices
from hami.core.vendors.podspec import (
    JsonObject,
    device_count,
    limits_of,
    quantity_value,
    required_capacity,
    writable,
)

KUNLUN: Final = "kunlun"
XPU: Final = "XPU"
KUNLUN_POD_KEYS: Final = PodDeviceKeys(to_allocate=None, allocated="hami.io/kunlun-allocated")
XPU_POD_KEYS: Final = PodDeviceKeys(
    to_allocate="hami.io/xpu-devices-to-allocate", allocated="hami.io/xpu-devices-allocated"
)
DEVICE_INDEX: Final = "BAIDU_COM_DEVICE_IDX"
KUNLUN_USE_UUID: Final = "baidu.com/use-gpuuuid"
KUNLUN_NOUSE_UUID: Final = "baidu.com/nouse-gpuuuid"
XPU_REGISTER: Final = "hami.io/node-register-xpu"
XPU_HANDSHAKE: Final = "hami.io/node-handshake-xpu"
XPU_USE_UUID: Final = "hami.io/use-xpu-uuid"
XPU_NOUSE_UUID: Final = "hami.io/no-use-xpu-uuid"
MAX_MEMORY: Final = 98304
VXPU_SIZES: Final = (24576, 49152)
CROSS_PAIRS: Final = ((0, 4), (1, 5), (2, 6), (3, 7))
RINGS: Final = ((0, 1, 4, 5), (2, 3, 6, 7), (0, 2, 4, 6), (1, 3, 5, 7), (0, 3, 4, 7), (1, 2, 5, 6))
IN_GROUP_PAIRS: Final = (
    (0, 1),
    (0, 2),
    (0, 3),
    (1, 2),
    (1, 3),
    (2, 3),
    (4, 5),
    (4, 6),
    (4, 7),
    (5, 6),
    (5, 7),
    (6, 7),
)
_ODD_ORDER: Final = (1, 3, 2, 4)
VXPU_SPLIT: Final = 4

FitFn = Callable[[DeviceUsage, ContainerDeviceRequest], bool]


# --------------------------------------------------------------------------------------- topology


def _free_indices(devices: Sequence[DeviceUsage], request: ContainerDeviceRequest, fits: FitFn) -> list[int]:
    return [d.index for d in devices if fits(d, request)]


def _pick(
    devices: Sequence[DeviceUsage], start: int, count: int, request: ContainerDeviceRequest, fits: FitFn
) -> list[int]:
    res: list[int] = []
    for t in range(start, min(8, len(devices))):  # HAMi indexes 8 positions and would panic on fewer
        if fits(devices[t], request):
            res.append(devices[t].index)
            if len(res) == count:
                break
    return res


def _interconnect(devices: Sequence[DeviceUsage], request: ContainerDeviceRequest, fits: FitFn) -> list[int]:
    count = request.nums
    if count == 2:
        for a in devices:
            if not fits(a, request):
                continue
            for b in devices:
                if not fits(b, request) or a.index == b.index:
                    continue
                if any({a.index, b.index} == {lw, rw} for lw, rw in CROSS_PAIRS):
                    return [a.index, b.index]
    if count == 4:
        free = _free_indices(devices, request, fits)
        if len(free) in (4, 5):
            for ring in RINGS:
                if set(ring) <= set(free):
                    return list(ring)
        if len(free) == 6:
            chosen: list[int] = []
            for ring in RINGS:
                if set(ring) <= set(free):
                    chosen = list(ring)
                    rest = set(free) - set(ring)
                    if any(set(pair) <= rest for pair in (*CROSS_PAIRS, *IN_GROUP_PAIRS)):
                        return chosen
            return chosen
    return []


def graph_select(devices: Sequence[DeviceUsage], request: ContainerDeviceRequest, fits: FitFn) -> list[int]:
    """HAMi ``graghSelect``: device indices for the request, or [] (module docstring)."""
    count = request.nums
    left = sum(1 for pos, d in enumerate(devices) if pos < 4 and fits(d, request))
    right = sum(1 for pos, d in enumerate(devices) if pos >= 4 and fits(d, request))
    if count == 8:
        return [0, 1, 2, 3, 4, 5, 6, 7] if left + right == count else []
    if count in (1, 2, 4):
        if left >= count or right >= count:
            for slots in range(count, 5):
                num = _ODD_ORDER[slots - 1] if count % 2 == 1 else slots
                if left == num:
                    return _pick(devices, 0, count, request, fits)
                if right == num:
                    return _pick(devices, 4, count, request, fits)
        return _interconnect(devices, request, fits)
    return []


def _bubbles(indices: Sequence[int]) -> int:
    left = sum(1 for i in indices if i < 4)
    right = len(indices) - left
    if left == 0 and right == 0:
        return 1

    def value(t: int) -> int:
        return 0 if t == 4 else 2 if t == 1 else 1

    return value(left) + value(right)


def topology_score(previous: Sequence[int], current: Sequence[int]) -> float:
    """HAMi ``calcscore``: how the pod's XPUs change the board's fragmentation."""
    return {-1: 3000.0, 0: 2000.0, 1: 1000.0, 2: 0.0}.get(_bubbles(current) - _bubbles(previous), 1000.0)


def _selected(
    devices: Sequence[DeviceUsage],
    request: ContainerDeviceRequest,
    fits: FitFn,
    usage: Callable[[DeviceUsage], tuple[int, int]],
) -> ContainerFit:
    if not devices:
        return no_devices(request.type, request)
    chosen = graph_select(devices, request, fits)
    if not chosen:
        note = f"no {request.nums}-device set of the board's halves/rings is free"
        raw = (
            (
                ",".join(d.id for d in devices),
                NUMA,
                len(_free_indices(devices, request, fits)),
                request.nums,
                note,
            ),
        )
        return ContainerFit(ok=False, reasons={NUMA: 1}, raw_rejections=raw, considered=1)
    picks: list[ContainerDevice] = []
    for index in chosen:
        for d in devices:
            if d.index == index:
                mem, cores = usage(d)
                picks.append(
                    ContainerDevice(uuid=d.id, type=request.type, usedmem=mem, usedcores=cores, idx=d.index)
                )
                break
    return ContainerFit(ok=True, devices=tuple(picks), considered=len(devices))


def _board_devices(node: str, word: str, count: int, *, split: int, memory: int) -> tuple[DeviceInfo, ...]:
    return tuple(
        DeviceInfo(
            id=DeviceID(f"{node}-{word}-{i}"),
            index=i,
            count=split,
            devmem=memory,
            devcore=100,
            type=word,
            numa=1 if i >= count // 2 else 0,
            mode=MODE_HAMI_CORE,
            health=True,
            devicevendor=word,
        )
        for i in range(count)
    )


# --------------------------------------------------------------------------------------- kunlun


class KunlunVendor(BaseVendor):
    __slots__ = ("config",)

    use_uuid_key = KUNLUN_USE_UUID
    nouse_uuid_key = KUNLUN_NOUSE_UUID

    def __init__(self, config: KunlunConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else KunlunConfig()
        super().__init__(
            name=KUNLUN,
            names=ResourceNames(count=self.config.resource_count_name),
            pod_keys=KUNLUN_POD_KEYS,
            traits=VendorTraits(health=Health.ALWAYS),
            clock=clock,
        )

    @property
    def scores_nodes(self) -> bool:
        return True

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        nums = requested_count(container, self.config.resource_count_name, warnings)
        if nums is None:
            return None
        return ContainerDeviceRequest(nums=nums, type=KUNLUN, memreq=0, mem_percentage_req=100, coresreq=0)

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        cards = device_count(
            required_capacity(allocatable, self.config.resource_count_name), self.config.resource_count_name
        )
        return _board_devices(node, KUNLUN, cards, split=100, memory=MAX_MEMORY)

    def prefilter(self, summary: VendorSummary | None, request: ContainerDeviceRequest) -> bool:
        return summary is None or request.nums <= summary.available

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        return _selected(devices, request, _fits_whole, lambda d: (d.totalmem, d.totalcore))

    def add_resource_usage(
        self, device: DeviceUsage, assigned: ContainerDevice
    ) -> tuple[DeviceUsage, ContainerDevice]:
        updated = device.with_usage(
            used=device.used + 1, usedmem=device.usedmem, usedcores=device.usedcores, mig=device.mig
        )
        return updated, assigned

    def score_node(
        self,
        node: NodeSnapshot,
        assigned: PodSingleDevice,
        previous: Sequence[DeviceUsage],
        policy: NodePolicy,
    ) -> float:
        prev: list[int] = []
        for d in previous:
            if KUNLUN not in d.type:
                return 0.0  # HAMi returns 0 on a node with any other device
            if d.used > 0 and d.index not in prev:
                prev.append(d.index)
        current: list[int] = []
        for container in assigned:
            for cd in container:
                if cd.idx not in current:
                    current.append(cd.idx)
        return topology_score(prev, current)

    def extra_annotations(
        self, assigned: PodSingleDevice, *, pod: Mapping[str, object] | None, node: str, now: datetime
    ) -> dict[str, str]:
        index = last_indices(assigned)
        return {} if index is None else {DEVICE_INDEX: index}

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """kunlunxin xpu-device-plugin: the whole-XPU count."""
        return NodePublication(annotations={}, capacity={self.config.resource_count_name: str(devices)})


def _fits_whole(device: DeviceUsage, request: ContainerDeviceRequest) -> bool:
    return device.health and device.used == 0


# --------------------------------------------------------------------------------------- vXPU


def trim_vxpu_memory(memory: int) -> int:
    for size in VXPU_SIZES:
        if memory <= size:
            return size
    return MAX_MEMORY


def _fits_vxpu(device: DeviceUsage, request: ContainerDeviceRequest) -> bool:
    if not device.health or request.memreq + device.usedmem > device.totalmem:
        return False
    if device.used == 0:
        return True
    return device.usedmem // device.used == request.memreq  # vXPUs of one card all have one size


class VxpuVendor(BaseVendor):
    __slots__ = ("config",)

    use_uuid_key = XPU_USE_UUID
    nouse_uuid_key = XPU_NOUSE_UUID

    def __init__(self, config: KunlunConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else KunlunConfig()
        super().__init__(
            name=XPU,
            names=ResourceNames(
                count=self.config.resource_vcount_name, memory=self.config.resource_vmemory_name
            ),
            pod_keys=XPU_POD_KEYS,
            traits=VendorTraits(
                health=Health.HANDSHAKE,
                lock_key=keys.NODE_LOCK,
                handshake_key=XPU_HANDSHAKE,
                register_key=XPU_REGISTER,
            ),
            clock=clock,
        )

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        cfg = self.config
        nums = requested_count(container, cfg.resource_vcount_name, warnings)
        if nums is None:
            return None
        raw = container.integer(cfg.resource_vmemory_name, warnings)
        memory = trim_vxpu_memory(raw) if raw is not None else 0
        if memory == 0:
            return ContainerDeviceRequest(
                nums=nums, type=XPU, memreq=MAX_MEMORY, mem_percentage_req=100, coresreq=100
            )
        return ContainerDeviceRequest(
            nums=nums, type=XPU, memreq=memory, mem_percentage_req=0, coresreq=memory * 100 // MAX_MEMORY
        )

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        return registered_devices(annotations, XPU_REGISTER, XPU, decode=decode_node_devices_json)

    def prefilter(self, summary: VendorSummary | None, request: ContainerDeviceRequest) -> bool:
        return summary is None or request.nums <= summary.devices

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        return _selected(devices, request, _fits_vxpu, lambda d: (request.memreq, request.coresreq))

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        cfg = self.config
        limits = limits_of(container)
        if cfg.resource_vcount_name not in limits:
            return False
        if cfg.resource_vmemory_name in limits:
            memory = quantity_value(
                limits[cfg.resource_vmemory_name], f"limits[{cfg.resource_vmemory_name!r}]"
            )
            trimmed = str(trim_vxpu_memory(memory))
            writable(container, "limits")[cfg.resource_vmemory_name] = trimmed
            writable(container, "requests")[cfg.resource_vmemory_name] = trimmed
        return True

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """kunlunxin vxpu-device-plugin: JSON register + ``Reported`` handshake, vXPU count."""
        memory = memory_mib if memory_mib is not None else MAX_MEMORY
        register = encode_node_devices(_board_devices(node, XPU, devices, split=VXPU_SPLIT, memory=memory))
        return NodePublication(
            annotations={XPU_REGISTER: register, XPU_HANDSHAKE: reported(now)} if devices else {},
            capacity={self.config.resource_vcount_name: str(devices * VXPU_SPLIT)},
        )
