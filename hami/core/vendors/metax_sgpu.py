"""MetaX shared sGPUs (common word ``Metax-SGPU``; spec §3, §11, HAMi ``pkg/device/metax``
``sdevice.go``, ``protocol.go``).

**Metax-SGPU** — ``metax-tech.com/sgpu`` (count), ``metax-tech.com/vcore`` (percent, default 100),
``metax-tech.com/vmemory`` (GiB when unitless, else bytes → MiB), all read from ``limits`` only.
Devices from ``metax-tech.com/node-gpu-devices`` (JSON ``[{"uuid","totalDevCount","totalCompute",
"totalVRam","numa","healthy","qosPolicy","linkZone",...}]``). Pod annotations: the device keys,
``metax-tech.com/gpu-devices-allocated`` (JSON per container ``[{"uuid","compute","vRam"}]``) and
``metax-tech.com/predicate-time`` (Unix ns). Selection: ``metax-tech.com/use|nouse-gpuuuid``,
``sgpu-qos-policy`` (``best-effort|fixed-share|burst-share``), ``sgpu-app-class``
(``online|offline``), ``sgpu-topology-aware``. Lock: ``hami.io/mutex.lock``. Its Fit collects every
fitting device (reasons ``CardUnhealthy``, ``CardAppClassMismatch``, ``CardQosPolicyMismatch`` are
Metax's own), then prefers, for exclusive (100-core) requests, devices sharing a MetaLink zone;
ScoreNode ``±10000 × (10 × linked pairs picked − links lost)`` when topology-aware.

Not reproduced (the ledger keeps no per-device pod annotations): the online/offline co-location
rules of app-class pods. Here an app-class pod only takes an idle device (HAMi also lets an
offline pod join offline pods and an online pod join any app-class pod), which never over-commits;
the per-pod ``sgpu-topology-aware`` override of the config default is not read at scoring time,
and the jittery QoS cache is not kept (a device's QoS is the one its plugin reports).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from hami.core import gojson, keys
from hami.core.deviceconfig import MetaxConfig
from hami.core.errors import DecodeError
from hami.core.fit import ContainerFit, FitContext
from hami.core.gojson import GoJsonError
from hami.core.ids import DeviceID
from hami.core.model import ContainerDevice, ContainerDeviceRequest, DeviceInfo, PodSingleDevice
from hami.core.policy import NodePolicy
from hami.core.requests import ContainerResources, DeviceSelectors
from hami.core.snapshot import DeviceUsage, NodeSnapshot
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorAdmissionError,
    VendorTraits,
    share_request,
    split_list,
    unix_nanos,
)
from hami.core.vendors.fitloop import (
    CORE,
    EXCL,
    MEM,
    SHORT,
    SLICES,
    TYPE,
    UNITS,
    UUID,
    Rejections,
    go_div,
    no_devices,
)
from hami.core.vendors.metax import (
    APP_CLASS,
    CARD_APP_CLASS_MISMATCH,
    CARD_QOS_MISMATCH,
    CARD_UNHEALTHY,
    DIRECT_LINK_SCORE,
    METAX_SGPU,
    NOUSE_UUID,
    OFFLINE,
    ONLINE,
    PREDICATE_TIME,
    QOS_POLICIES,
    QOS_POLICY,
    SDEVICES,
    SDEVICES_ALLOCATED,
    SGPU_MEMORY_MIB,
    SGPU_POD_KEYS,
    SGPU_SPLIT,
    TOPOLOGY_AWARE,
    USE_UUID,
)
from hami.core.vendors.podspec import (
    JsonObject,
    has_unit,
    limits_of,
    pod_annotations,
    quantity_int,
    quantity_value,
)

_INT32: Final = (-(2**31), 2**31 - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetaxSelectors(DeviceSelectors):
    """UUID lists plus the sGPU policy annotations."""

    qos_policy: str = ""
    app_class: str | None = None
    topology_aware: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SDevice:
    """One ``MetaxSDeviceInfo`` of ``metax-tech.com/node-gpu-devices``."""

    uuid: str
    bdf: str = ""
    model: str = ""
    total_dev_count: int = 0
    total_compute: int = 0
    total_vram: int = 0
    numa: int = 0
    healthy: bool = False
    qos_policy: str = ""
    link_zone: int = 0


_SDEVICE_INTS: Final = (
    "totalDevCount",
    "totalCompute",
    "totalVRam",
    "availableDevCount",
    "availableCompute",
    "availableVRam",
    "numa",
    "linkZone",
)


def decode_sdevices(value: str, *, key: str = SDEVICES) -> tuple[SDevice, ...]:
    """``json.Unmarshal`` into ``[]*MetaxSDeviceInfo`` (int32 fields; a null entry is refused)."""
    try:
        parsed = gojson.loads(value)
        if parsed is None:
            return ()
        out: list[SDevice] = []
        for i, raw in enumerate(gojson.go_array(parsed, "sdevices")):
            where = f"sdevices[{i}]"
            if raw is None:
                raise GoJsonError(f"{where}: null entry")
            obj = gojson.go_object(raw, where)
            ints: dict[str, int] = {}
            for name in _SDEVICE_INTS:
                _, number = gojson.optional(
                    obj, name, lambda v, w: gojson.go_int(v, w, *_INT32, "int32"), where
                )
                ints[name] = number if isinstance(number, int) else 0
            texts: dict[str, str] = {}
            for name in ("uuid", "bdf", "model", "qosPolicy"):
                _, text = gojson.optional(obj, name, gojson.go_str, where)
                texts[name] = text if isinstance(text, str) else ""
            _, healthy = gojson.optional(obj, "healthy", gojson.go_bool, where)
            out.append(
                SDevice(
                    uuid=texts["uuid"],
                    bdf=texts["bdf"],
                    model=texts["model"],
                    total_dev_count=ints["totalDevCount"],
                    total_compute=ints["totalCompute"],
                    total_vram=ints["totalVRam"],
                    numa=ints["numa"],
                    healthy=healthy is True,
                    qos_policy=texts["qosPolicy"],
                    link_zone=ints["linkZone"],
                )
            )
        return tuple(out)
    except GoJsonError as e:
        raise DecodeError(key, value, str(e)) from None


def encode_sdevices(devices: Sequence[SDevice]) -> str:
    """The annotation as the Metax plugin marshals it (``omitempty`` on everything but ``uuid``)."""
    out: list[str] = []
    for d in devices:
        parts = [f'"uuid":{gojson.go_string(d.uuid)}']
        for name, text in (("bdf", d.bdf), ("model", d.model)):
            if text:
                parts.append(f'"{name}":{gojson.go_string(text)}')
        for name, number in (
            ("totalDevCount", d.total_dev_count),
            ("totalCompute", d.total_compute),
            ("totalVRam", d.total_vram),
            ("availableDevCount", d.total_dev_count),
            ("availableCompute", d.total_compute),
            ("availableVRam", d.total_vram),
            ("numa", d.numa),
        ):
            if number:
                parts.append(f'"{name}":{number}')
        if d.healthy:
            parts.append('"healthy":true')
        if d.qos_policy:
            parts.append(f'"qosPolicy":{gojson.go_string(d.qos_policy)}')
        if d.link_zone:
            parts.append(f'"linkZone":{d.link_zone}')
        out.append("{" + ",".join(parts) + "}")
    return "[" + ",".join(out) + "]"


def _link_zone(custom: Mapping[str, object]) -> int:
    zone = custom.get("LinkZone", 0)
    return zone if isinstance(zone, int) and not isinstance(zone, bool) else 0


def link_score(zones: Sequence[tuple[str, int]]) -> int:
    """``LinkDevices.Score``: 10 per pair of distinct devices in the same non-zero MetaLink zone."""
    score = 0
    for i, (uuid_a, zone_a) in enumerate(zones):
        for uuid_b, zone_b in zones[i + 1 :]:
            if uuid_a != uuid_b and zone_a != 0 and zone_a == zone_b:
                score += DIRECT_LINK_SCORE
    return score


class MetaxSgpuVendor(BaseVendor):
    __slots__ = ("config",)

    use_uuid_key = USE_UUID
    nouse_uuid_key = NOUSE_UUID

    def __init__(self, config: MetaxConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else MetaxConfig()
        super().__init__(
            name=METAX_SGPU,
            names=ResourceNames(
                count=self.config.resource_vcount_name,
                memory=self.config.resource_vmemory_name,
                cores=self.config.resource_vcore_name,
            ),
            pod_keys=SGPU_POD_KEYS,
            traits=VendorTraits(health=Health.DEVICES, lock_key=keys.NODE_LOCK, register_key=SDEVICES),
            clock=clock,
        )

    @property
    def selection_keys(self) -> tuple[str, ...]:
        return (USE_UUID, NOUSE_UUID, QOS_POLICY, TOPOLOGY_AWARE, APP_CLASS)

    @property
    def scores_nodes(self) -> bool:
        return True

    # ---- requests / webhook ----------------------------------------------------------------

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        cfg = self.config
        raw_count = container.limits.get(cfg.resource_vcount_name)
        count = quantity_int(raw_count) if raw_count is not None else None
        if count is None or count <= 0:
            return None
        cores = quantity_int(container.limits.get(cfg.resource_vcore_name))
        raw_mem = container.limits.get(cfg.resource_vmemory_name)
        mem = 0
        value = quantity_int(raw_mem)
        if value is not None:
            mem = value // 1024 // 1024 if has_unit(raw_mem) else value * 1024  # unitless means GiB
        return share_request(METAX_SGPU, count, memory=mem, cores=100 if cores is None else cores)

    def selectors(self, annotations: Mapping[str, str], warnings: list[str]) -> DeviceSelectors:
        return MetaxSelectors(
            use_uuids=split_list(annotations, USE_UUID),
            nouse_uuids=split_list(annotations, NOUSE_UUID),
            qos_policy=annotations.get(QOS_POLICY, ""),
            app_class=annotations.get(APP_CLASS),
            topology_aware=annotations.get(TOPOLOGY_AWARE),
        )

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        limits = limits_of(container)
        name = self.config.resource_vcount_name
        if name not in limits:
            return False
        annotations = pod_annotations(pod, create=False) or {}
        app_class = annotations.get(APP_CLASS)
        if app_class is not None:
            if app_class not in (ONLINE, OFFLINE):
                raise VendorAdmissionError(f"{APP_CLASS} must be set one of [{ONLINE}, {OFFLINE}]")
            if quantity_value(limits[name], f"limits[{name!r}]") != 1:
                raise VendorAdmissionError("app-class pod must request single device")
        if app_class != ONLINE:
            qos = annotations.get(QOS_POLICY)
            if qos is None:
                writable_annotations = pod_annotations(pod, create=True)
                assert writable_annotations is not None
                writable_annotations[QOS_POLICY] = QOS_POLICIES[0]
            elif qos not in QOS_POLICIES:
                raise VendorAdmissionError(f"{QOS_POLICY} must be set one of [{', '.join(QOS_POLICIES)}]")
        return True

    # ---- node ------------------------------------------------------------------------------

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        value = annotations.get(SDEVICES)
        if value is None:
            raise DecodeError(SDEVICES, "", f"annos not found {SDEVICES}")
        sdevices = decode_sdevices(value)
        if not sdevices:
            raise DecodeError(SDEVICES, value, "no sdevice found on node")
        return tuple(
            DeviceInfo(
                id=DeviceID(d.uuid),
                index=i,
                count=d.total_dev_count,
                devmem=d.total_vram,
                devcore=d.total_compute,
                type=METAX_SGPU,
                numa=d.numa,
                health=d.healthy,
                devicevendor=METAX_SGPU,
                custominfo={"QosPolicy": d.qos_policy, "Model": d.model, "LinkZone": d.link_zone},
            )
            for i, d in enumerate(sdevices)
        )

    # ---- fit -------------------------------------------------------------------------------

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        if not devices:
            return no_devices(ctx.vendor, request)
        sel = ctx.selectors
        app_class = sel.app_class if isinstance(sel, MetaxSelectors) else None
        qos = sel.qos_policy if isinstance(sel, MetaxSelectors) else ""
        online = app_class == ONLINE
        out = Rejections()
        candidates: list[tuple[DeviceUsage, int]] = []
        for i in range(len(devices) - 1, -1, -1):
            d = devices[i]
            if request.type != ctx.vendor:
                out.add(d.id, TYPE, note=f"{d.type!r}")
                continue
            if not d.health:
                out.add(d.id, CARD_UNHEALTHY)
                continue
            if app_class is not None and d.used > 0:
                out.add(
                    d.id,
                    CARD_APP_CLASS_MISMATCH,
                    d.used,
                    note=f"{APP_CLASS}={app_class} needs an idle device",
                )
                continue
            if not online and d.used > 0 and request.coresreq != 100:
                dev_qos = d.custominfo.get("QosPolicy", "")
                if dev_qos not in ("", qos):
                    out.add(d.id, CARD_QOS_MISMATCH, note=f"device runs {dev_qos!r}, pod asks {qos!r}")
                    continue
            if ctx.check_uuid and not sel.uuid_allowed(d.id):
                out.add(d.id, UUID)
                continue
            if d.count <= d.used:
                out.add(d.id, SLICES, d.used, d.count)
                continue
            memreq = (
                request.memreq if request.memreq > 0 else go_div(d.totalmem * request.mem_percentage_req, 100)
            )
            if d.totalmem - d.usedmem < memreq:
                out.add(d.id, MEM, d.totalmem - d.usedmem, memreq)
                continue
            if not online:
                cores = request.coresreq
                if d.totalcore - d.usedcores < cores:
                    out.add(d.id, CORE, d.totalcore - d.usedcores, cores)
                    continue
                if d.totalcore == 100 and cores == 100 and d.used > 0:
                    out.add(d.id, EXCL, d.used)
                    continue
                if d.totalcore != 0 and d.usedcores == d.totalcore and cores == 0:
                    out.add(d.id, UNITS, d.totalcore)
                    continue
            candidates.append((d, memreq))
        if len(candidates) < request.nums:
            if candidates:
                out.reasons[SHORT] = len(candidates)
                out.raw.append(
                    (",".join(d.id for d, _ in candidates), SHORT, len(candidates), request.nums, "")
                )
            return out.failed(len(devices))
        best = candidates[: request.nums]
        if len(candidates) > request.nums and app_class is None and request.coresreq == 100:
            best = _prefer_linked(candidates, request.nums)
        cores = 0 if online else request.coresreq
        chosen = tuple(
            ContainerDevice(uuid=d.id, type=METAX_SGPU, usedmem=mem, usedcores=cores, idx=d.index)
            for d, mem in best
        )
        return ContainerFit(ok=True, devices=chosen, considered=len(devices))

    def prefilter(self, summary: object, request: ContainerDeviceRequest) -> bool:
        return True  # the candidate collection is cheap; its app-class rules do not bound simply

    # ---- score -----------------------------------------------------------------------------

    def score_node(
        self,
        node: NodeSnapshot,
        assigned: PodSingleDevice,
        previous: Sequence[DeviceUsage],
        policy: NodePolicy,
    ) -> float:
        exclusive = [cd for container in assigned for cd in container if cd.usedcores == 100]
        if not exclusive or not self.config.sgpu_topology_aware:
            return 0.0
        weight = -10000 if policy is NodePolicy.SPREAD else 10000
        zones = {d.id: _link_zone(d.custominfo) for d in previous}
        picked = [(cd.uuid, zones.get(DeviceID(cd.uuid), 0)) for cd in exclusive]
        picked_ids = {u for u, _ in picked}
        available = [(d.id, zones[d.id]) for d in previous if d.used == 0]
        rest = [(u, z) for u, z in available if u not in picked_ids]
        allocated_score = link_score(picked)
        loss = link_score(available) - allocated_score - link_score(rest)
        return float(weight * (10 * allocated_score - loss))

    # ---- annotations -----------------------------------------------------------------------

    def extra_annotations(
        self, assigned: PodSingleDevice, *, pod: Mapping[str, object] | None, node: str, now: datetime
    ) -> dict[str, str]:
        containers: list[str] = []
        for container in assigned:
            entries: list[str] = []
            for cd in container:
                parts = [f'"uuid":{gojson.go_string(cd.uuid)}']
                if cd.usedcores:
                    parts.append(f'"compute":{cd.usedcores}')
                if cd.usedmem:
                    parts.append(f'"vRam":{cd.usedmem}')
                entries.append("{" + ",".join(parts) + "}")
            containers.append("[" + ",".join(entries) + "]")
        return {SDEVICES_ALLOCATED: "[" + ",".join(containers) + "]", PREDICATE_TIME: unix_nanos(now)}

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """metax sgpu-device-plugin: the device list (MetaLink zones of 4) and the sGPU count."""
        memory = memory_mib if memory_mib is not None else SGPU_MEMORY_MIB
        sdevices = [
            SDevice(
                uuid=f"MXC-{node}-{i}",
                bdf=f"0000:{0x20 + i:02x}:00.0",
                model="MXC500",
                total_dev_count=SGPU_SPLIT,
                total_compute=100,
                total_vram=memory,
                numa=0 if i < (devices + 1) // 2 else 1,
                healthy=True,
                link_zone=i // 4 + 1,
            )
            for i in range(devices)
        ]
        return NodePublication(
            annotations={SDEVICES: encode_sdevices(sdevices)} if devices else {},
            capacity={self.config.resource_vcount_name: str(devices * SGPU_SPLIT)},
        )


def _prefer_linked(
    candidates: Sequence[tuple[DeviceUsage, int]], require: int
) -> list[tuple[DeviceUsage, int]]:
    """``prioritizeExclusiveDevices``: a whole MetaLink zone that holds the request (smallest zone
    first), else zones in size order, then unlinked devices."""
    zones: dict[int, list[tuple[DeviceUsage, int]]] = {}
    for entry in candidates:
        zones.setdefault(_link_zone(entry[0].custominfo), []).append(entry)
    linked = sorted((group for zone, group in zones.items() if zone > 0), key=len)
    others = [e for zone, group in zones.items() if zone <= 0 for e in group]
    for group in linked:
        if len(group) >= require:
            return group[:require]
    picked = [e for group in linked for e in group] + others
    return picked[:require] if len(picked) >= require else list(candidates[:require])
