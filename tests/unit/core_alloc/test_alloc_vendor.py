"""The Vendor plug-in interface: NVIDIA's node devices, annotations, requests; a second vendor plugs
in without touching the core; the watch path quarantines unreadable allocations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from alloc_builders import cd, gpu, ledger_with, pod, req

from hami.core import keys
from hami.core.errors import DecodeError
from hami.core.fit import ContainerFit, FitContext, nvidia_fit
from hami.core.ledger import Ledger
from hami.core.model import NVIDIA, ContainerDevice, ContainerDeviceRequest, DeviceInfo, PodSingleDevice
from hami.core.placement import Decision, schedule
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.policy import NodePolicy
from hami.core.requests import ContainerResources, DeviceSelectors, RequestReader
from hami.core.snapshot import DeviceUsage, NodeSnapshot, VendorSummary
from hami.core.vendor import NvidiaVendor, Vendor, VendorRegistry

REGISTER = (
    '[{"id":"GPU-8e1c","count":10,"devmem":23028,"devcore":100,"type":"NVIDIA A10","mode":"hami-core",'
    '"health":true,"devicepairscore":{}},'
    '{"id":"GPU-33f0","index":1,"count":10,"devmem":23028,"devcore":100,"type":"NVIDIA A10","numa":1,'
    '"mode":"hami-core","health":true,"devicepairscore":{}}]'
)


def test_nvidia_is_a_vendor() -> None:
    vendor: Vendor = NvidiaVendor()
    assert vendor.name == NVIDIA
    assert vendor.pod_keys.allocated == keys.VGPU_DEVICES_ALLOCATED
    assert keys.USE_GPUUUID in vendor.selection_keys and keys.NUMA_BIND in vendor.selection_keys
    assert not vendor.scores_nodes


def test_nvidia_node_devices_from_annotations() -> None:
    vendor = NvidiaVendor()
    score = '[{"uuid":"GPU-8e1c","score":{"GPU-33f0":200}}]'
    devices = vendor.node_devices({keys.NODE_NVIDIA_REGISTER: REGISTER, keys.NODE_NVIDIA_SCORE: score}, {})
    assert [(d.id, d.index, d.numa, d.devicevendor) for d in devices] == [
        ("GPU-8e1c", 0, 0, NVIDIA),
        ("GPU-33f0", 1, 1, NVIDIA),
    ]
    assert dict(devices[0].pair_scores) == {"GPU-33f0": 200}
    with pytest.raises(DecodeError, match="annos not found"):
        vendor.node_devices({}, {})


def test_nvidia_allocation_annotations_round_trip() -> None:
    vendor = NvidiaVendor()
    assigned: PodSingleDevice = ((cd("GPU-a", 3000, 30),), ())
    annotations = vendor.allocation_annotations(assigned)
    assert annotations == {
        keys.VGPU_DEVICES_TO_ALLOCATE: "GPU-a,NVIDIA,3000,30:;;",
        keys.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,3000,30:;;",
    }
    assert vendor.decode_allocation(annotations) == assigned
    assert vendor.decode_allocation({}) is None
    assert vendor.allocation_annotations(()) == {}


def test_request_reader_is_the_requests_module_one() -> None:
    reader = NvidiaVendor().request_reader
    container = ContainerResources(
        where="spec.containers[0]",
        name="c",
        limits={"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"},
        requests={},
    )
    assert reader.container_request(container, []) == ContainerDeviceRequest(nums=1, type=NVIDIA, memreq=3000)


def test_watch_path_commits_readable_and_quarantines_unreadable_allocations() -> None:
    registry = VendorRegistry([NvidiaVendor()])
    ledger = ledger_with({"n": [gpu("GPU-a")]})

    def on_pod_event(uid: str, node: str, annotations: Mapping[str, str]) -> None:
        try:
            ledger.commit(uid, node, registry.decode_allocations(annotations))
        except DecodeError as e:
            ledger.quarantine(node, uid, str(e))

    on_pod_event("good", "n", {keys.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,3000,30:;"})
    assert ledger.snapshot().nodes["n"].devices[0].usedmem == 3000
    on_pod_event("bad", "n", {keys.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,lots,30:;"})
    node = ledger.snapshot().nodes["n"]
    assert not node.schedulable
    assert "hami.io/vgpu-devices-allocated" in node.quarantined[0][1]
    assert ledger.pod("bad") is None  # never counted as zero: the node is blocked instead
    ledger.release("bad")
    assert ledger.snapshot().nodes["n"].schedulable


class FakeReader:
    vendor = "ACME"

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        return None

    def selectors(self, annotations: Mapping[str, str], warnings: list[str]) -> DeviceSelectors:
        return DeviceSelectors()


class AcmeVendor:
    """A second vendor written against the Protocol only: whole cards, node score = cards used."""

    name = "ACME"
    pod_keys = PodDeviceKeys(to_allocate=None, allocated="acme.example/allocated")
    selection_keys: tuple[str, ...] = ()
    request_reader: RequestReader = FakeReader()
    scores_nodes = True

    def node_devices(
        self, annotations: Mapping[str, str], allocatable: Mapping[str, str]
    ) -> tuple[DeviceInfo, ...]:
        return ()

    def prefilter(self, summary: VendorSummary | None, request: ContainerDeviceRequest) -> bool:
        return True

    def fit(
        self,
        devices: Sequence[DeviceUsage],
        request: ContainerDeviceRequest,
        ctx: FitContext,
        allocated: Sequence[ContainerDevice],
    ) -> ContainerFit:
        free = [d for d in devices if d.used == 0][: request.nums]
        if len(free) < request.nums:
            return ContainerFit(
                ok=False, reasons={"CardTimeSlicingExhausted": len(devices)}, considered=len(devices)
            )
        return ContainerFit(
            ok=True,
            devices=tuple(
                ContainerDevice(uuid=d.id, type=self.name, usedmem=d.totalmem, usedcores=100) for d in free
            ),
        )

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
        return float(sum(len(c) for c in assigned))

    def allocation_annotations(self, assigned: PodSingleDevice) -> dict[str, str]:
        return {}

    def decode_allocation(self, annotations: Mapping[str, str]) -> PodSingleDevice | None:
        return None


def acme(uuid: str) -> DeviceInfo:
    return DeviceInfo(
        id=uuid, count=1, devmem=1000, devcore=100, type="ACME-X1", health=True, devicevendor="ACME"
    )  # type: ignore[arg-type]


def test_a_second_vendor_plugs_in_and_scores_nodes() -> None:
    registry = VendorRegistry([NvidiaVendor(), AcmeVendor()])
    ledger = Ledger()
    ledger.set_node_devices("a", [acme("A1"), gpu("G1")])
    ledger.set_node_devices("b", [acme("B1"), acme("B2"), gpu("G2")])
    request = pod({"ACME": req(1, type="ACME")}, req(1, mem=100))
    decision = schedule(ledger.snapshot(), ["a", "b"], request, registry)
    assert isinstance(decision, Decision)
    assert decision.complete  # a vendor that scores nodes disables the early exit
    assert decision.node == "a"  # equal scores (0 + 1 card): smallest name
    assert decision.devices == {
        "ACME": ((ContainerDevice(uuid="A1", type="ACME", usedmem=1000, usedcores=100),), ()),
        NVIDIA: ((), (cd("G1", 100, 0),)),
    }
    assert all(f.score >= 1.0 for f in decision.fits)  # ACME's ScoreNode was added
    ledger.assume("pod-uid", decision.node, decision.devices)
    assert ledger.check_invariants() == []


def test_nvidia_fit_is_the_vendor_fit() -> None:
    devices = [DeviceUsage(id="G", count=1, totalmem=10, totalcore=100, type="NVIDIA", health=True)]  # type: ignore[arg-type]
    a = NvidiaVendor().fit(devices, req(1, mem=5), FitContext(vendor=NVIDIA), ())
    assert a == nvidia_fit(devices, req(1, mem=5), FitContext(vendor=NVIDIA))
