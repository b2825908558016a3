"""AWS Neuron (common word ``AWSNeuron``; spec §3, §11, HAMi ``pkg/device/awsneuron``).

* Requests: ``aws.amazon.com/neuron`` (whole devices) or, without it, ``aws.amazon.com/neuroncore``
  (cores: 1 → one core, n ≥ 2 → n/2 devices of 2 cores, HAMi's two-core geometry).
* Devices from node **capacity**: ``neuron`` devices with ``neuroncore / neuron`` cores each; a
  device's ``devcore`` is its core **bit mask** (2 cores → 3), ``count`` its core count, no memory;
  IDs ``<node>-AWSNeuron-<i>``; ``custominfo`` keeps the instance type (label
  ``node.kubernetes.io/instance-type``) and the cores per device.
* Fit: several devices need a contiguous free run (Inferentia ``inf*`` instances: any start on
  the ring; others: 1, 4, 8 or 16 devices at multiples of the count), else ``1/1 NumaNotFit``;
  one device needs enough free cores and gets the lowest contiguous free core bits as its
  ``usedcores`` mask. Usage accumulates masks (bitwise or).
* Pod annotations: ``hami.io/aws-neuron-devices-allocated`` only, plus ``AWS_NEURON_IDS`` (device
  indices for device requests, core indices ``cores × idx + bit`` for core requests, accumulated
  over containers), ``NEURON_RESOURCE_TYPE`` (the core resource name, core requests only),
  ``NEURON_ALLOC_TIME`` (Unix ns), ``NEURON_ALLOCATED: "false"``, ``aws.amazon.com/predicate-node``.
* Selection: ``aws.amazon.com/use|nouse-neuron-uuid``. No lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from hami.core.deviceconfig import AWSNeuronConfig
from hami.core.fit import ContainerFit, FitContext
from hami.core.model import ContainerDevice, ContainerDeviceRequest, DeviceInfo, PodSingleDevice
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.requests import ContainerResources
from hami.core.snapshot import DeviceUsage, VendorSummary
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorTraits,
    capacity_devices,
    requested_count,
    unix_nanos,
)
from hami.core.vendors.fitloop import CORE, HEALTH, NUMA, SLICES, TYPE, UUID, Rejections, no_devices
from hami.core.vendors.podspec import (
    JsonObject,
    capacity,
    device_count,
    limits_of,
    pod_containers,
    quantity_int,
    required_capacity,
)

AWS_NEURON: Final = "AWSNeuron"
POD_KEYS: Final = PodDeviceKeys(to_allocate=None, allocated="hami.io/aws-neuron-devices-allocated")
USE_UUID: Final = "aws.amazon.com/use-neuron-uuid"
NOUSE_UUID: Final = "aws.amazon.com/nouse-neuron-uuid"
ASSIGNED_IDS: Final = "AWS_NEURON_IDS"
ALLOC_TIME: Final = "NEURON_ALLOC_TIME"
RESOURCE_TYPE: Final = "NEURON_RESOURCE_TYPE"
ALLOCATED: Final = "NEURON_ALLOCATED"
PREDICATE_NODE: Final = "aws.amazon.com/predicate-node"
NODE_TYPE: Final = "AWSNodeType"
CORES_PER_DEVICE: Final = "AWSCoresPerNeuronDevice"
INSTANCE_TYPE_LABEL: Final = "node.kubernetes.io/instance-type"
DEFAULT_CORES: Final = 2  # Inferentia2 / Trainium
MAX_CORES_PER_DEVICE: Final = 4
POWER_OF_TWO_RUNS: Final = (1, 4, 8, 16)


def popcount(mask: int) -> int:
    return bin(mask).count("1") if mask > 0 else 0


def core_mask(used: int, available: int, required: int) -> int | None:
    """The lowest run of ``required`` contiguous cores free in ``available`` and not in ``used``."""
    if required <= 0 or required > MAX_CORES_PER_DEVICE:
        return None
    for start in range(MAX_CORES_PER_DEVICE - required + 1):
        mask = ((1 << required) - 1) << start
        if available & mask == mask and used & mask == 0:
            return mask
    return None


def _contiguous(devices: Sequence[DeviceUsage], start: int, count: int) -> list[DeviceUsage]:
    if len(devices) < start + count:
        return []
    run = devices[start : start + count]
    return list(run) if all(d.used == 0 and d.health for d in run) else []


def graph_select(devices: Sequence[DeviceUsage], count: int) -> list[DeviceUsage]:
    """``graphSelect`` on the devices in index order (the Fit's list is score-sorted)."""
    ordered = sorted(devices, key=lambda d: d.index)
    if not ordered:
        return []
    node_type = ordered[0].custominfo.get(NODE_TYPE, "")
    step = 1 if isinstance(node_type, str) and ("inf" in node_type or "Inf" in node_type) else count
    if step != 1 and count not in POWER_OF_TWO_RUNS:
        return []
    for start in range(0, len(ordered), step):
        run = _contiguous(ordered, start, count)
        if run:
            return run
    return []


class AwsNeuronVendor(BaseVendor):
    __slots__ = ("_cores", "config")

    use_uuid_key = USE_UUID
    nouse_uuid_key = NOUSE_UUID

    def __init__(self, config: AWSNeuronConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else AWSNeuronConfig()
        self._cores = DEFAULT_CORES
        super().__init__(
            name=AWS_NEURON,
            names=ResourceNames(count=self.config.resource_count_name, cores=self.config.resource_core_name),
            pod_keys=POD_KEYS,
            traits=VendorTraits(health=Health.ALWAYS),
            clock=clock,
        )

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        cfg = self.config
        if container.has(cfg.resource_count_name):
            nums = requested_count(container, cfg.resource_count_name, warnings)
            if nums is None:
                return None
            return ContainerDeviceRequest(
                nums=nums, type=AWS_NEURON, memreq=0, mem_percentage_req=0, coresreq=0
            )
        cores = container.integer(cfg.resource_core_name, warnings)
        if cores is None or cores <= 0:
            return None
        return ContainerDeviceRequest(
            nums=max(cores // 2, 1),
            type=AWS_NEURON,
            memreq=0,
            mem_percentage_req=0,
            coresreq=2 if cores >= 2 else 1,
        )

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        counts = required_capacity(allocatable, self.config.resource_count_name)
        cores_total = capacity(allocatable, self.config.resource_core_name) or 0
        per_device = max(cores_total // counts, 0)
        self._cores = per_device or DEFAULT_CORES
        mask = (1 << min(per_device, MAX_CORES_PER_DEVICE)) - 1
        custom = {NODE_TYPE: (labels or {}).get(INSTANCE_TYPE_LABEL, ""), CORES_PER_DEVICE: per_device}
        count = device_count(counts, self.config.resource_count_name)
        return capacity_devices(
            node,
            AWS_NEURON,
            count,
            vendor=AWS_NEURON,
            split=per_device,
            devmem=0,
            devcore=mask,
            custominfo=custom,
        )

    def prefilter(self, summary: VendorSummary | None, request: ContainerDeviceRequest) -> bool:
        return summary is None or request.nums <= summary.devices

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        if not devices:
            return no_devices(ctx.vendor, request)
        if request.nums > 1:
            run = graph_select(devices, request.nums)
            if not run:
                note = f"no contiguous run of {request.nums} free devices"
                raw = ((",".join(d.id for d in devices), NUMA, 0, request.nums, note),)
                return ContainerFit(ok=False, reasons={NUMA: 1}, raw_rejections=raw, considered=1)
            picks = tuple(
                ContainerDevice(
                    uuid=d.id, type=AWS_NEURON, usedmem=d.totalmem, usedcores=d.totalcore, idx=d.index
                )
                for d in run
            )
            return ContainerFit(ok=True, devices=picks, considered=len(devices))
        out = Rejections()
        for i in range(len(devices) - 1, -1, -1):
            d = devices[i]
            if not d.health:
                out.add(d.id, HEALTH)
                continue
            if request.type != ctx.vendor or AWS_NEURON not in d.type:
                out.add(d.id, TYPE, note=f"{d.type!r}")
                continue
            if ctx.check_uuid and not ctx.selectors.uuid_allowed(d.id):
                out.add(d.id, UUID)
                continue
            if d.count <= d.used:
                out.add(d.id, SLICES, d.used, d.count)
                continue
            need = request.coresreq if request.coresreq > 0 else popcount(d.totalcore)
            free = popcount(d.totalcore) - popcount(d.usedcores)
            mask = core_mask(d.usedcores, d.totalcore, need) if free >= need else None
            if mask is None:
                out.add(d.id, CORE, free, need)
                continue
            pick = ContainerDevice(uuid=d.id, type=AWS_NEURON, usedmem=0, usedcores=mask, idx=d.index)
            return ContainerFit(ok=True, devices=(pick,), considered=len(devices))
        return out.failed(len(devices))

    def add_resource_usage(
        self, device: DeviceUsage, assigned: ContainerDevice
    ) -> tuple[DeviceUsage, ContainerDevice]:
        updated = device.with_usage(
            used=device.used + 1,
            usedmem=device.usedmem + assigned.usedmem,
            usedcores=device.usedcores | assigned.usedcores,
            mig=device.mig,
        )
        return updated, assigned

    def extra_annotations(
        self, assigned: PodSingleDevice, *, pod: Mapping[str, object] | None, node: str, now: datetime
    ) -> dict[str, str]:
        containers = pod_containers(pod)
        out: dict[str, str] = {}
        ids: list[str] = []
        for position, devices in enumerate(assigned):
            if not devices:
                continue
            container = containers[position] if position < len(containers) else None
            whole = (
                container is not None
                and (quantity_int(_limit(container, self.config.resource_count_name)) or 0) > 0
            )
            if container is None:  # no pod spec: a full core mask means a whole-device request
                whole = all(popcount(cd.usedcores) >= self._cores for cd in devices)
            for cd in devices:
                if whole:
                    ids.append(str(cd.idx))
                    continue
                for bit in range(min(self._cores, MAX_CORES_PER_DEVICE)):
                    if cd.usedcores & (1 << bit):
                        ids.append(str(self._cores * cd.idx + bit))
                        out[RESOURCE_TYPE] = self.config.resource_core_name
            if ids:
                out.update(
                    {
                        ASSIGNED_IDS: ",".join(ids),
                        ALLOC_TIME: unix_nanos(now),
                        ALLOCATED: "false",
                    }
                )
                if node:  # HAMi copies hami.io/vgpu-node, which the caller passes as ``node``
                    out[PREDICATE_NODE] = node
        return out

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        limits = limits_of(container)
        return self.config.resource_count_name in limits or self.config.resource_core_name in limits

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """neuron-device-plugin: devices and NeuronCores (2 per device)."""
        cfg = self.config
        return NodePublication(
            annotations={},
            capacity={
                cfg.resource_count_name: str(devices),
                cfg.resource_core_name: str(devices * DEFAULT_CORES),
            },
        )


def _limit(container: Mapping[str, object], name: str) -> object:
    resources = container.get("resources")
    limits = resources.get("limits") if isinstance(resources, Mapping) else None
    return limits.get(name) if isinstance(limits, Mapping) else None
