"""Rejecting requests no registered device can ever hold (issue 4), and the vendor hook seam."""

from __future__ import annotations

import pytest
from webhook_builders import applied, capacity, container, gpu, pod, request

from hami.core.admission import AdmissionOptions, NvidiaAdmission, Outcome, PodAdmission
from hami.core.cluster_capacity import ClusterCapacity, capacity_of
from hami.core.deviceconfig import NvidiaConfig
from hami.core.errors import HamiError, InvalidRequest
from hami.core.model import MigTemplate
from hami.core.snapshot import EMPTY_SNAPSHOT

GPU, MEM, PCT, CORES = (
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpumem-percentage",
    "nvidia.com/gpucores",
)

# 3 nodes × 4 A10 (24 GiB), plus one node with 2 H100 (80 GiB)
CLUSTER = capacity(
    {
        **{f"a10-{i}": [gpu(f"a10-{i}-{j}") for j in range(4)] for i in range(3)},
        "h100": [gpu(f"h100-{j}", mem=81920, type="NVIDIA-H100") for j in range(2)],
    }
)


def decide(body, cap: ClusterCapacity | None = CLUSTER, config=None, **options):
    return PodAdmission(config, AdmissionOptions(**options)).review_request(request(body), capacity=cap)


def denied_with(decision, *fragments: str) -> None:
    assert (decision.outcome, decision.code) == (Outcome.DENIED, 403), decision
    for fragment in fragments:
        assert fragment in decision.message, decision.message


def test_capacity_collapses_alike_nodes():
    assert len(CLUSTER.shapes) == 2
    assert capacity_of(EMPTY_SNAPSHOT).empty


def test_memory_above_every_card_is_denied():
    denied_with(
        decide(pod(container(limits={GPU: "1", MEM: "90000"}))),
        "container 'c0' asks for 90000 MiB per NVIDIA device",
        "largest registered device has 81920 MiB",
    )
    assert decide(pod(container(limits={GPU: "1", MEM: "81920"}))).allowed


def test_memory_factor_applies_before_the_check():
    config = NvidiaConfig(memory_factor=1024)
    denied_with(decide(pod(container(limits={GPU: "1", MEM: "81"})), config=config), "82944 MiB")
    assert decide(pod(container(limits={GPU: "1", MEM: "80"})), config=config).allowed


def test_more_devices_than_any_node_is_denied():
    denied_with(
        decide(pod(container(limits={GPU: "5"}))), "asks for 5 NVIDIA devices but no node has more than 4"
    )
    assert decide(pod(container(limits={GPU: "4"}))).allowed


def test_count_and_memory_together():
    # 3 devices of 30 GiB: only H100s are that big, and no node has 3 of them.
    denied_with(
        decide(pod(container(limits={GPU: "3", MEM: "30000"}))),
        "asks for 3 NVIDIA devices of at least 30000 MiB but no node has more than 2",
    )
    assert decide(pod(container(limits={GPU: "2", MEM: "30000"}))).allowed
    assert decide(pod(container(limits={GPU: "3", MEM: "20000"}))).allowed


def test_type_annotations_restrict_the_cards_considered():
    a10_only = {"nvidia.com/use-gputype": "A10"}
    denied_with(
        decide(pod(container(limits={GPU: "1", MEM: "30000"}), annotations=a10_only)),
        "largest registered device has 24576 MiB",
    )
    h100_only = {"nvidia.com/use-gputype": "H100"}
    denied_with(decide(pod(container(limits={GPU: "3"}), annotations=h100_only)), "no node has more than 2")
    nothing = {"nvidia.com/use-gputype": "B200"}
    denied_with(
        decide(pod(container(limits={GPU: "1"}), annotations=nothing)),
        "no registered NVIDIA device matches the pod's type/mode annotations",
        "NVIDIA-A10 (hami-core)",
        "NVIDIA-H100 (hami-core)",
    )
    excluded = {"nvidia.com/nouse-gputype": "A10"}
    denied_with(decide(pod(container(limits={GPU: "4"}), annotations=excluded)), "no node has more than 2")
    mig_mode = {"nvidia.com/vgpu-mode": "mig"}
    denied_with(
        decide(pod(container(limits={GPU: "1"}), annotations=mig_mode)), "no registered NVIDIA device"
    )


def test_percentage_above_100_is_denied_even_without_capacity():
    denied_with(decide(pod(container(limits={GPU: "1", PCT: "150"})), cap=None), "150% of each NVIDIA device")
    assert decide(pod(container(limits={GPU: "1", PCT: "100"})), cap=None).allowed


def test_cores_above_every_card_are_denied_but_over_100_is_clamped():
    scaled = capacity({"n": [gpu("g0", cores=50), gpu("g1", cores=50)]})
    denied_with(decide(pod(container(limits={GPU: "1", CORES: "80"})), cap=scaled), "asks for 80 cores")
    assert decide(pod(container(limits={GPU: "1", CORES: "150"}))).allowed  # clamped to 100


@pytest.mark.parametrize(
    "cap",
    [
        None,  # cache not synced
        ClusterCapacity(),  # nothing registered yet
        capacity({"n": [gpu("x", vendor="ACME", type="ACME-1")]}),  # only another vendor registered
    ],
)
def test_no_rejection_without_capacity_for_the_vendor(cap):
    assert decide(pod(container(limits={GPU: "64", MEM: "900000"})), cap=cap).allowed


def test_rejection_can_be_switched_off():
    assert decide(pod(container(limits={GPU: "64"})), reject_impossible=False).allowed


def test_privileged_containers_are_not_checked():
    body = pod(
        container(limits={GPU: "64"}, securityContext={"privileged": True}),
        container("c1", limits={GPU: "1"}),
    )
    assert decide(body).allowed


def test_defaulted_count_is_checked():
    # gpumem only: the webhook adds nvidia.com/gpu=defaultGPUNum, then the request is checked.
    denied_with(
        decide(pod(container(limits={MEM: "1000"})), config=NvidiaConfig(default_gpu_num=5)),
        "asks for 5 NVIDIA devices",
    )


def test_mig_gpus_count_their_instances():
    a100 = (
        (MigTemplate(name="1g.5gb", memory=5120, core=14, count=7),),
        (MigTemplate(name="3g.20gb", memory=20480, core=42, count=2),),
    )
    cap = capacity({"m": [gpu("mig0", mem=40960, type="NVIDIA-A100-SXM4-40GB", mode="mig", mig=a100)]})
    assert decide(pod(container(limits={GPU: "3", MEM: "5000"})), cap=cap).allowed
    denied_with(decide(pod(container(limits={GPU: "8"})), cap=cap), "no node has more than 7")
    denied_with(decide(pod(container(limits={GPU: "1", MEM: "30000"})), cap=cap), "has 20480 MiB")


def test_impossible_request_is_reported_after_node_assignment_rule():
    decision = decide(pod(container(limits={GPU: "64"}), nodeName="n"))
    assert decision.message == "pod has node assigned"


# ------------------------------------------------------------------------------- vendor hook seam


class AcmeAdmission:
    """A second vendor: marks its pods with an annotation; 'bad' quantities are errors."""

    name = "ACME"

    def mutate_container(self, container: dict, pod: dict) -> bool:
        limits = (container.get("resources") or {}).get("limits") or {}
        if "acme.com/npu" not in limits:
            return False
        if limits["acme.com/npu"] == "bad":
            raise InvalidRequest("acme.com/npu: bad count")
        if limits["acme.com/npu"] == "boom":
            raise HamiError("acme backend unavailable")
        pod.setdefault("metadata", {}).setdefault("annotations", {})["acme.com/checked"] = "true"
        return True


def test_vendor_hook_marks_the_pod_as_hami():
    admission = PodAdmission(vendors=[NvidiaAdmission(NvidiaConfig()), AcmeAdmission()])
    body = pod(container(limits={"acme.com/npu": "1"}))
    decision = admission.review_request(request(body))
    result = applied(body, decision)
    assert result["metadata"]["annotations"] == {"acme.com/checked": "true"}
    assert result["spec"]["schedulerName"] == "hami-scheduler"
    assert {
        "op": "add",
        "path": "/metadata/annotations",
        "value": {"acme.com/checked": "true"},
    } in decision.patch


@pytest.mark.parametrize(("value", "code"), [("bad", 400), ("boom", 500)])
def test_vendor_hook_errors(value, code):
    admission = PodAdmission(vendors=[AcmeAdmission()])
    decision = admission.review_request(request(pod(container(limits={"acme.com/npu": value}))))
    assert (decision.outcome, decision.code) == (Outcome.ERRORED, code)


def test_only_the_given_vendors_run():
    admission = PodAdmission(vendors=[AcmeAdmission()])
    decision = admission.review_request(request(pod(container(limits={GPU: "1"}))))
    assert decision.allowed and decision.patch == ()
