"""Small builders shared by the allocation-core tests (imported by basename: the test directory is
on sys.path under pytest's default import mode)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hami.core.ids import DeviceID
from hami.core.ledger import Ledger
from hami.core.model import NVIDIA, ContainerDevice, ContainerDeviceRequest, DeviceInfo, MigTemplate
from hami.core.requests import ContainerRequest, DeviceSelectors, PodRequest, nvidia_selectors
from hami.core.snapshot import DeviceUsage


def gpu(
    uuid: str,
    *,
    index: int = 0,
    count: int = 10,
    mem: int = 8000,
    cores: int = 100,
    type: str = "NVIDIA-Tesla V100",
    numa: int = 0,
    mode: str = "hami-core",
    health: bool = True,
    pairs: Mapping[str, int] | None = None,
    mig: tuple[tuple[MigTemplate, ...], ...] = (),
) -> DeviceInfo:
    return DeviceInfo(
        id=DeviceID(uuid),
        index=index,
        count=count,
        devmem=mem,
        devcore=cores,
        type=type,
        numa=numa,
        mode=mode,
        health=health,
        devicevendor=NVIDIA,
        migtemplate=mig,
        pair_scores=dict(pairs or {}),
    )


def usage(
    uuid: str,
    *,
    index: int = 0,
    count: int = 10,
    used: int = 0,
    mem: int = 8000,
    usedmem: int = 0,
    cores: int = 100,
    usedcores: int = 0,
    type: str = "NVIDIA-Tesla V100",
    numa: int = 0,
    mode: str = "hami-core",
    health: bool = True,
    pairs: Mapping[str, int] | None = None,
    mig: tuple[tuple[MigTemplate, ...], ...] = (),
) -> DeviceUsage:
    return DeviceUsage(
        id=DeviceID(uuid),
        index=index,
        vendor=NVIDIA,
        type=type,
        numa=numa,
        mode=mode,
        health=health,
        count=count,
        used=used,
        totalmem=mem,
        usedmem=usedmem,
        totalcore=cores,
        usedcores=usedcores,
        mig_geometries=mig,
        pair_scores=dict(pairs or {}),
    )


def req(
    nums: int = 1, mem: int = 0, pct: int = 101, cores: int = 0, type: str = NVIDIA
) -> ContainerDeviceRequest:
    return ContainerDeviceRequest(nums=nums, type=type, memreq=mem, mem_percentage_req=pct, coresreq=cores)


def cd(uuid: str, mem: int, cores: int, idx: int = 0) -> ContainerDevice:
    return ContainerDevice(uuid=uuid, type=NVIDIA, usedmem=mem, usedcores=cores, idx=idx)


def pod(
    *containers: ContainerDeviceRequest | Mapping[str, ContainerDeviceRequest] | None,
    uid: str = "pod-uid",
    namespace: str = "default",
    annotations: Mapping[str, str] | None = None,
    gpu_policy: str | None = None,
    node_policy: str | None = None,
) -> PodRequest:
    """A PodRequest; each container is a request (NVIDIA), a vendor->request map, or None."""
    built: list[ContainerRequest] = []
    for i, c in enumerate(containers):
        if c is None:
            devices: Mapping[str, ContainerDeviceRequest] = {}
        elif isinstance(c, ContainerDeviceRequest):
            devices = {c.type: c}
        else:
            devices = dict(c)
        built.append(ContainerRequest(index=i, name=f"c{i}", devices=devices))
    annos = dict(annotations or {})
    selectors: dict[str, DeviceSelectors] = {NVIDIA: nvidia_selectors(annos, [])}
    return PodRequest(
        uid=uid,
        namespace=namespace,
        name=uid,
        containers=tuple(built),
        selectors=selectors,
        gpu_policy=gpu_policy,
        node_policy=node_policy,
        annotations=annos,
    )


def ledger_with(
    nodes: Mapping[str, Iterable[DeviceInfo]],
    pods: Iterable[tuple[str, str, Iterable[ContainerDevice]]] = (),
) -> Ledger:
    """A ledger with registered nodes and committed one-container pods ``(uid, node, devices)``."""
    ledger = Ledger()
    for name, devices in nodes.items():
        ledger.set_node_devices(name, list(devices))
    for uid, node, devices in pods:
        ledger.commit(uid, node, {NVIDIA: (tuple(devices),)})
    return ledger
