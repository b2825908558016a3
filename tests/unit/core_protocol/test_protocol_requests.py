from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.core import keys
from hami.core.deviceconfig import NvidiaConfig
from hami.core.errors import InvalidRequest
from hami.core.model import ContainerDeviceRequest
from hami.core.requests import (
    ContainerResources,
    DeviceSelectors,
    container_resources,
    is_exclusive,
    pod_request,
    webhook_sets_exclusive_cores,
)

CFG = NvidiaConfig()


def pod(*containers, annotations=None, init=None, **meta):
    metadata = {"name": "p", "namespace": "ns", "uid": "u-1", **meta}
    if annotations is not None:
        metadata["annotations"] = annotations
    spec = {"containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(containers)]}
    if init is not None:
        spec["initContainers"] = [{"name": f"i{i}", "resources": r} for i, r in enumerate(init)]
    return {"metadata": metadata, "spec": spec}


def limits(**values):
    return {"limits": {f"nvidia.com/{k.replace('_', '-')}": v for k, v in values.items()}}


def nvidia(request, index=0):
    return request.containers[index].devices.get("NVIDIA")


def req(nums, memreq=0, pct=101, cores=0):
    return ContainerDeviceRequest(
        nums=nums, type="NVIDIA", memreq=memreq, mem_percentage_req=pct, coresreq=cores
    )


# ---------------------------------------------------------------- spec §5.1


@pytest.mark.parametrize(
    ("resources", "config", "expected"),
    [
        (limits(gpu="1"), CFG, req(1, pct=100)),  # nothing else: 100 % of the card, default cores 0
        (limits(gpu="1", gpumem="3000", gpucores="30"), CFG, req(1, 3000, 101, 30)),
        (limits(gpu="2", gpumem_percentage="50"), CFG, req(2, 0, 50, 0)),
        (limits(gpu="1", gpumem="3000", gpumem_percentage="50"), CFG, req(1, 3000, 50, 0)),
        (limits(gpu="1"), NvidiaConfig(default_memory=2048, default_cores=20), req(1, 2048, 101, 20)),
        (limits(gpu="1", gpumem_percentage="101"), NvidiaConfig(default_memory=2048), req(1, 2048, 101, 0)),
        (limits(gpu="1", gpumem="3000"), NvidiaConfig(memory_factor=2), req(1, 6000, 101, 0)),
        (limits(gpu="1", gpumem="1k"), CFG, req(1, 1000)),
        (limits(gpu="1", gpucores="120"), CFG, req(1, 0, 100, 120)),  # clamped later, at fit time
        (limits(gpu=1, gpumem=2000), CFG, req(1, 2000)),  # JSON numbers accepted
        (limits(gpu="1", gpumem="0"), CFG, req(1, 0, 100, 0)),
    ],
)
def test_nvidia_request_extraction(resources, config, expected):
    assert nvidia(pod_request(pod(resources), config)) == expected


def test_limits_first_then_requests():
    both = {
        "limits": {"nvidia.com/gpu": "2"},
        "requests": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "500"},
    }
    assert nvidia(pod_request(pod(both), CFG)) == req(2, 500)
    only_requests = {"requests": {"nvidia.com/gpu": "1", "nvidia.com/gpucores": "10"}}
    assert nvidia(pod_request(pod(only_requests), CFG)) == req(1, 0, 100, 10)


def test_non_integer_quantities_are_ignored_with_a_warning():
    result = pod_request(pod(limits(gpu="500m"), limits(gpu="1", gpumem="1.5")), CFG)
    assert nvidia(result, 0) is None  # not requested at all
    assert nvidia(result, 1) == req(1, 0, 100, 0)  # gpumem ignored -> default 100 %
    assert len(result.warnings) == 2
    assert "spec.containers[0].resources.limits['nvidia.com/gpu']" in result.warnings[0]


def test_zero_count_is_not_a_request_and_negative_is_invalid():
    assert pod_request(pod(limits(gpu="0", gpumem="100")), CFG).is_empty
    with pytest.raises(InvalidRequest, match="must not be negative"):
        pod_request(pod(limits(gpu="-1")), CFG)
    with pytest.raises(InvalidRequest, match="must not be negative"):
        pod_request(pod(limits(gpu="1", gpucores="-1")), CFG)


def test_custom_resource_names():
    config = NvidiaConfig(
        resource_count_name="volcano.sh/vgpu-number", resource_memory_name="volcano.sh/vgpu-memory"
    )
    result = pod_request(
        pod({"limits": {"volcano.sh/vgpu-number": "1", "volcano.sh/vgpu-memory": "64"}}), config
    )
    assert nvidia(result) == req(1, 64)
    assert pod_request(pod(limits(gpu="1")), config).is_empty


def test_pod_totals_and_positions():
    result = pod_request(
        pod({}, limits(gpu="2", gpumem="100"), {"limits": {"cpu": "1"}}, limits(gpu="1")), CFG
    )
    assert [c.index for c in result.containers] == [0, 1, 2, 3]
    assert [c.name for c in result.containers] == ["c0", "c1", "c2", "c3"]
    assert [c.total_devices for c in result.containers] == [0, 2, 0, 1]
    assert result.total_devices == 3 and not result.is_empty
    assert result.vendors == frozenset({"NVIDIA"})
    assert (result.uid, result.namespace, result.name) == ("u-1", "ns", "p")
    assert pod_request(pod({}), CFG).is_empty
    assert pod_request({"metadata": {}, "spec": {}}, CFG).containers == ()


def test_init_containers_are_ignored_as_in_hami_28():
    result = pod_request(pod(limits(gpu="1"), init=[limits(gpu="1"), {}]), CFG)
    assert len(result.containers) == 1 and result.total_devices == 1
    assert result.ignored_init_containers == ("i0",)


def test_exclusive_rule():
    assert is_exclusive(req(1, cores=100)) and is_exclusive(req(1, cores=120))
    assert not is_exclusive(req(1, cores=99))

    def c(**values):
        return container_resources({"resources": limits(**values)}, "c")

    assert webhook_sets_exclusive_cores(c(gpu="1"), CFG)  # bare gpu -> whole card
    assert webhook_sets_exclusive_cores(c(gpu="1", gpumem_percentage="100"), CFG)
    assert not webhook_sets_exclusive_cores(c(gpu="1", gpumem_percentage="50"), CFG)
    assert not webhook_sets_exclusive_cores(c(gpu="1", gpumem="1000"), CFG)
    assert webhook_sets_exclusive_cores(c(gpu="1", gpumem="1000"), NvidiaConfig(resource_memory_name=""))
    assert not webhook_sets_exclusive_cores(c(gpu="1", gpucores="30"), CFG)
    assert not webhook_sets_exclusive_cores(c(gpumem="1000"), CFG)


# ---------------------------------------------------------------- malformed pods


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"spec": {"containers": {}}}, "spec.containers"),
        ({"spec": []}, "spec"),
        ({"spec": {"containers": ["x"]}}, "spec.containers[0]"),
        ({"spec": {"containers": [{"resources": []}]}}, "spec.containers[0].resources"),
        ({"spec": {"containers": [{"resources": {"limits": 1}}]}}, "spec.containers[0].resources.limits"),
        (
            {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": {}}}}]}},
            "spec.containers[0].resources.limits['nvidia.com/gpu']",
        ),
        (
            {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "lots"}}}]}},
            "spec.containers[0].resources.limits['nvidia.com/gpu']",
        ),
        (
            {
                "spec": {
                    "containers": [
                        {"resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4Gi"}}}
                    ]
                }
            },
            "spec.containers[0].resources.limits['nvidia.com/gpumem']",
        ),
        ({"metadata": {"annotations": {"a": 1}}}, "metadata.annotations['a']"),
        ({"metadata": {"uid": 5}}, "metadata.uid"),
        ({"spec": {"initContainers": 3}}, "spec.initContainers"),
    ],
)
def test_malformed_pods_name_the_field(raw, where):
    with pytest.raises(InvalidRequest) as info:
        pod_request(raw, CFG)
    assert str(info.value).startswith(where + ":")


def test_memory_factor_overflow_is_invalid():
    with pytest.raises(InvalidRequest, match="memoryFactor"):
        pod_request(pod(limits(gpu="1", gpumem="2000000000")), NvidiaConfig(memory_factor=2))


def test_not_a_mapping():
    with pytest.raises(InvalidRequest):
        pod_request([], CFG)  # type: ignore[arg-type]


# ---------------------------------------------------------------- annotations (spec §4.3, §5.5)


def selectors(**annotations):
    return pod_request(pod(limits(gpu="1"), annotations=annotations), CFG).selectors_for("NVIDIA")


def test_gputype_untrimmed_case_insensitive():
    s = selectors(**{keys.USE_GPUTYPE: "a10, T4"})
    assert s.use_types == ("a10", " T4")
    assert s.type_allowed("NVIDIA A10")
    assert s.type_allowed("NVIDIA T4")  # " T4" occurs, space included
    assert not s.type_allowed("NVIDIA-T4")  # the untrimmed " T4" does not
    assert selectors(**{keys.USE_GPUTYPE: ""}).type_allowed("anything")
    assert not selectors(**{keys.NOUSE_GPUTYPE: ""}).type_allowed("anything")
    no = selectors(**{keys.NOUSE_GPUTYPE: "v100,A100"})
    assert not no.type_allowed("NVIDIA A100-PCIE-40GB") and not no.type_allowed("Tesla V100")
    assert no.type_allowed("NVIDIA A10")
    assert DeviceSelectors().type_allowed("x")


def test_gpu_uuid_lists():
    use = selectors(**{keys.USE_GPUUUID: "GPU-a,GPU-b", keys.NOUSE_GPUUUID: "GPU-a"})
    assert use.uuid_allowed("GPU-a") and not use.uuid_allowed("GPU-c")  # use wins, nouse ignored
    nouse = selectors(**{keys.NOUSE_GPUUUID: "GPU-a"})
    assert not nouse.uuid_allowed("GPU-a") and nouse.uuid_allowed("GPU-b")
    assert not selectors(**{keys.USE_GPUUUID: "GPU-a, GPU-b"}).uuid_allowed("GPU-b")  # exact, untrimmed


@pytest.mark.parametrize(
    ("value", "expected", "warns"),
    [
        ("true", True, False),
        ("1", True, False),
        ("t", True, False),
        ("TRUE", True, False),
        ("True", True, False),
        ("T", True, False),
        ("false", False, False),
        ("0", False, False),
        ("tRUE", False, True),
        ("yes", False, True),
        ("", False, True),
    ],
)
def test_numa_bind_is_go_parse_bool(value, expected, warns):
    result = pod_request(pod(limits(gpu="1"), annotations={keys.NUMA_BIND: value}), CFG)
    assert result.selectors_for("NVIDIA").numa_bind is expected
    assert bool(result.warnings) is warns


def test_vgpu_mode_and_policies():
    result = pod_request(
        pod(
            limits(gpu="1"),
            annotations={
                keys.VGPU_MODE: "hami-core,mig",
                keys.GPU_SCHEDULER_POLICY: "topology-aware",
                keys.NODE_SCHEDULER_POLICY: "spread",
            },
        ),
        CFG,
    )
    s = result.selectors_for("NVIDIA")
    assert s.mode_allowed("mig") and s.mode_allowed("hami-core") and not s.mode_allowed("mps")
    assert (result.gpu_policy, result.node_policy) == ("topology-aware", "spread")
    plain = pod_request(pod(limits(gpu="1")), CFG)
    assert plain.gpu_policy is None and plain.node_policy is None
    assert plain.selectors_for("NVIDIA") == DeviceSelectors()


# ---------------------------------------------------------------- another vendor plugs in


@dataclass(frozen=True)
class FakeReader:
    vendor: str = "MLU"

    def container_request(self, container: ContainerResources, warnings: list[str]):
        nums = container.integer("cambricon.com/vmlu", warnings)
        return None if not nums else ContainerDeviceRequest(nums=nums, type="MLU", memreq=0)

    def selectors(self, annotations, warnings):
        return DeviceSelectors(use_uuids=tuple(annotations.get("cambricon.com/use-gpuuuid", "").split(",")))


def test_vendor_readers_plug_in():
    result = pod_request(
        pod({"limits": {"cambricon.com/vmlu": "2", "nvidia.com/gpu": "1"}}), CFG, readers=[FakeReader()]
    )
    assert set(result.containers[0].devices) == {"NVIDIA", "MLU"}
    assert result.total_devices == 3
    assert set(result.selectors) == {"NVIDIA", "MLU"}


# ---------------------------------------------------------------- robustness

quantities = st.one_of(
    st.integers(-5, 2**40), st.text(max_size=8), st.sampled_from(["1", "1.5", "500m", "2Gi", "1e3"])
)
resources = st.dictionaries(
    st.sampled_from(["limits", "requests"]),
    st.dictionaries(
        st.sampled_from(
            ["nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpucores", "nvidia.com/gpumem-percentage"]
        ),
        quantities,
        max_size=4,
    ),
    max_size=2,
)


@given(st.lists(resources, max_size=3))
def test_extraction_raises_only_invalid_request(containers):
    try:
        result = pod_request(pod(*containers), CFG)
    except InvalidRequest:
        return
    for container in result.containers:
        for request in container.devices.values():
            assert request.nums > 0
            assert request.memreq > 0 or request.mem_percentage_req != 101
