"""The embedded cluster's DRA allocator: capacity sharing (KEP-5075), CEL selectors, modes, constraints."""

from __future__ import annotations

import copy
import itertools
from fractions import Fraction
from typing import Any

import pytest

from hami.core.dra_translate import DRIVER_NAME, translate_pod
from hami.dra.devices import mock_gpus
from hami.dra.slices import resource_slice
from hami.simulator.dra_allocator import (
    CelSelectors,
    SliceDevice,
    Unallocatable,
    Usage,
    allocate_claim,
    allocation_node,
    consumed_amount,
    node_devices,
    pod_claim_names,
    usage_of,
)

CLASS = {
    DRIVER_NAME: {
        "metadata": {"name": DRIVER_NAME},
        "spec": {
            "selectors": [
                {
                    "cel": {
                        "expression": f'device.driver == "{DRIVER_NAME}" && '
                        f'device.attributes["{DRIVER_NAME}"].type == "hami-gpu"'
                    }
                }
            ]
        },
    }
}


def template_claim(limits: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    pod = {
        "metadata": {"generateName": "web-", "namespace": "demo", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "resources": {"limits": limits}}]},
    }
    template = translate_pod(pod).templates[0]
    return {"metadata": {"name": "c", "namespace": "demo"}, "spec": template["spec"]["spec"]}


@pytest.fixture
def share_ids() -> Any:
    counter = itertools.count()
    return lambda: f"share-{next(counter)}"


def allocate(
    claim: dict[str, Any],
    devices: list[SliceDevice],
    usage: Usage,
    share_ids: Any,
    cel: CelSelectors | None = None,
):
    return allocate_claim(
        claim, "node-1", devices, usage, CLASS, cel or CelSelectors(), new_share_id=share_ids
    )


def test_three_claims_of_one_gpu_and_4000_mib_share_gpus_by_capacity_and_deleting_frees(
    share_ids: Any,
) -> None:
    devices = node_devices(
        [resource_slice("node-1", DRIVER_NAME, mock_gpus("node-1", 2, memory_mib=10000))], "node-1"
    )
    claim = template_claim({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4000"})
    cel = CelSelectors()
    allocations = []
    for _ in range(3):
        allocation = allocate(claim, devices, usage_of(allocations), share_ids, cel)
        allocations.append(allocation)
    results = [a["devices"]["results"][0] for a in allocations]
    # 10000 MiB per GPU: two 4000 MiB shares fit on the first, the third goes to the second.
    assert [r["device"] for r in results] == ["hami-gpu-0", "hami-gpu-0", "hami-gpu-1"]
    assert [r["shareID"] for r in results] == ["share-0", "share-1", "share-2"]
    assert all(r["consumedCapacity"] == {"cores": "0", "memory": "4000Mi", "tasks": "1"} for r in results)
    assert all(
        r["driver"] == DRIVER_NAME and r["pool"] == "node-1" and r["request"] == "gpu" for r in results
    )
    assert allocation_node(allocations[0]) == "node-1"
    usage = usage_of(allocations)
    assert usage.consumed[devices[0].ref]["memory"] == 8000 * 2**20
    # The fourth fits only on hami-gpu-1; a fifth nowhere.
    fourth = allocate(claim, devices, usage, share_ids)
    assert fourth["devices"]["results"][0]["device"] == "hami-gpu-1"
    with pytest.raises(Unallocatable, match="0 of 1 devices available"):
        allocate(claim, devices, usage_of([*allocations, fourth]), share_ids)
    # Deleting a claim (its allocation gone) frees its share.
    again = allocate(claim, devices, usage_of([allocations[1], allocations[2], fourth]), share_ids)
    assert again["devices"]["results"][0]["device"] == "hami-gpu-0"


def test_device_split_count_caps_the_shares_of_one_gpu(share_ids: Any) -> None:
    # Small shares fit by memory and cores many times over; the split count stops the third.
    devices = node_devices(
        [resource_slice("node-1", DRIVER_NAME, mock_gpus("node-1", 1, memory_mib=10000), split_count=2)],
        "node-1",
    )
    claim = template_claim({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "100", "nvidia.com/gpucores": "1"})
    allocations = [allocate(claim, devices, usage_of([]), share_ids)]
    allocations.append(allocate(claim, devices, usage_of(allocations), share_ids))
    assert usage_of(allocations).consumed[devices[0].ref]["tasks"] == 2
    with pytest.raises(Unallocatable):
        allocate(claim, devices, usage_of(allocations), share_ids)
    # A claim asking the capacity outright cannot take more than one slot either.
    greedy = copy.deepcopy(claim)
    greedy["spec"]["devices"]["requests"][0]["exactly"]["capacity"]["requests"]["tasks"] = "2"
    with pytest.raises(Unallocatable):
        allocate(greedy, devices, usage_of([]), share_ids)


def test_cores_are_consumable_too_and_exclusive_requests_take_everything(share_ids: Any) -> None:
    devices = node_devices([resource_slice("node-1", DRIVER_NAME, mock_gpus("node-1", 1))], "node-1")
    half = template_claim({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "100", "nvidia.com/gpucores": "60"})
    first = allocate(half, devices, Usage(), share_ids)
    with pytest.raises(Unallocatable):
        allocate(half, devices, usage_of([first]), share_ids)
    whole = template_claim({"nvidia.com/gpu": "1"})  # HAMi: exclusive cores, whole memory
    (result,) = allocate(whole, devices, Usage(), share_ids)["devices"]["results"]
    assert result["consumedCapacity"] == {"cores": "100", "memory": "40Gi", "tasks": "1"}
    with pytest.raises(Unallocatable):
        allocate(half, devices, usage_of([{"devices": {"results": [result]}}]), share_ids)


def test_count_two_uses_two_distinct_devices(share_ids: Any) -> None:
    devices = node_devices([resource_slice("node-1", DRIVER_NAME, mock_gpus("node-1", 2))], "node-1")
    claim = template_claim({"nvidia.com/gpu": "2", "nvidia.com/gpumem": "1000"})
    results = allocate(claim, devices, Usage(), share_ids)["devices"]["results"]
    assert [r["device"] for r in results] == ["hami-gpu-0", "hami-gpu-1"]
    three = template_claim({"nvidia.com/gpu": "3", "nvidia.com/gpumem": "1000"})
    with pytest.raises(Unallocatable, match="2 of 3"):
        allocate(three, devices, Usage(), share_ids)


def test_selectors_from_annotations_choose_the_device(share_ids: Any) -> None:
    gpus = mock_gpus("node-1", 3)
    devices = node_devices([resource_slice("node-1", DRIVER_NAME, gpus)], "node-1")
    claim = template_claim({"nvidia.com/gpu": "1"}, {"nvidia.com/use-gpuuuid": gpus[2].uuid})
    (result,) = allocate(claim, devices, Usage(), share_ids)["devices"]["results"]
    assert result["device"] == "hami-gpu-2"
    nope = template_claim({"nvidia.com/gpu": "1"}, {"nvidia.com/use-gputype": "H100"})
    with pytest.raises(Unallocatable):
        allocate(nope, devices, Usage(), share_ids)


def _device(capacity: dict[str, Any], multi: bool = True) -> SliceDevice:
    raw = {"name": "d", "allowMultipleAllocations": multi, "capacity": capacity}
    return node_devices(
        [
            {
                "metadata": {"name": "s"},
                "spec": {
                    "driver": "x.io",
                    "nodeName": "n",
                    "pool": {"name": "n", "generation": 1},
                    "devices": [raw],
                },
            }
        ],
        "n",
    )[0]


def test_request_policy_rounding() -> None:
    ranged = _device(
        {
            "mem": {
                "value": "10Gi",
                "requestPolicy": {
                    "default": "1Gi",
                    "validRange": {"min": "1Gi", "max": "8Gi", "step": "1Gi"},
                },
            }
        }
    )
    gi = 2**30
    assert consumed_amount(ranged, "mem", None) == gi
    assert consumed_amount(ranged, "mem", Fraction(gi // 2)) == gi  # raised to min
    assert consumed_amount(ranged, "mem", Fraction(gi + 1)) == 2 * gi  # rounded up to a step
    assert consumed_amount(ranged, "mem", Fraction(9 * gi)) is None  # above max
    listed = _device(
        {"c": {"value": "100", "requestPolicy": {"default": "50", "validValues": ["25", "50", "100"]}}}
    )
    assert consumed_amount(listed, "c", Fraction(30)) == 50
    assert consumed_amount(listed, "c", None) == 50
    assert consumed_amount(listed, "c", Fraction(101)) is None
    free = _device({"c": {"value": "7"}})
    assert consumed_amount(free, "c", None) == 7 and consumed_amount(free, "c", Fraction(3)) == 3


def _claim(requests: list[dict[str, Any]], constraints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    devices: dict[str, Any] = {"requests": requests}
    if constraints:
        devices["constraints"] = constraints
    return {"metadata": {"name": "c"}, "spec": {"devices": devices}}


def test_exclusive_devices_all_mode_first_available_and_match_attribute(share_ids: Any) -> None:
    slice_ = {
        "metadata": {"name": "s"},
        "spec": {
            "driver": "x.io",
            "nodeName": "node-1",
            "pool": {"name": "node-1", "generation": 2},
            "devices": [
                {
                    "name": f"d{i}",
                    "attributes": {"numa": {"int": i // 2}, "kind": {"string": "fast" if i else "slow"}},
                }
                for i in range(4)
            ],
        },
    }
    old = {
        "metadata": {"name": "old"},
        "spec": {**slice_["spec"], "pool": {"name": "node-1", "generation": 1}},
    }
    devices = node_devices([slice_, old], "node-1")
    assert len(devices) == 4  # only the newest generation of the pool counts
    classes = {"plain": {"spec": {}}}
    cel = CelSelectors()

    def run(claim: dict[str, Any], usage: Usage | None = None) -> list[str]:
        allocation = allocate_claim(
            claim, "node-1", devices, usage or Usage(), classes, cel, new_share_id=share_ids
        )
        return [r["device"] for r in allocation["devices"]["results"]]

    everything = _claim([{"name": "all", "exactly": {"deviceClassName": "plain", "allocationMode": "All"}}])
    assert run(everything) == ["d0", "d1", "d2", "d3"]
    taken = usage_of([{"devices": {"results": [{"driver": "x.io", "pool": "node-1", "device": "d0"}]}}])
    one = _claim([{"name": "g", "exactly": {"deviceClassName": "plain"}}])
    assert run(one, taken) == ["d1"]  # d0 is exclusively held
    fallback = _claim(
        [
            {
                "name": "g",
                "firstAvailable": [
                    {"name": "big", "deviceClassName": "plain", "count": 5},
                    {
                        "name": "small",
                        "deviceClassName": "plain",
                        "count": 1,
                        "selectors": [{"cel": {"expression": 'device.attributes["x.io"].kind == "fast"'}}],
                    },
                ],
            }
        ]
    )
    allocation = allocate_claim(fallback, "node-1", devices, Usage(), classes, cel)
    assert [(r["request"], r["device"]) for r in allocation["devices"]["results"]] == [("g/small", "d1")]
    pair = _claim(
        [{"name": "g", "exactly": {"deviceClassName": "plain", "count": 2}}],
        [{"requests": ["g"], "matchAttribute": "x.io/numa"}],
    )
    assert run(pair, taken) == ["d2", "d3"]  # d1 alone is left on NUMA 0
    with pytest.raises(Unallocatable, match="device class 'missing' not found"):
        run(_claim([{"name": "g", "exactly": {"deviceClassName": "missing"}}]))
    broken = _claim(
        [
            {
                "name": "g",
                "exactly": {
                    "deviceClassName": "plain",
                    "selectors": [{"cel": {"expression": "device.attributes["}}],
                },
            }
        ]
    )
    with pytest.raises(Unallocatable, match="invalid CEL expression"):
        run(broken)


def test_cel_library_functions() -> None:
    devices = node_devices([resource_slice("node-1", DRIVER_NAME, mock_gpus("node-1", 1))], "node-1")
    from hami.simulator.dra_allocator import cel_device

    device = cel_device(DRIVER_NAME, devices[0].raw)
    cel = CelSelectors()
    d = f'device.capacity["{DRIVER_NAME}"]'
    a = f'device.attributes["{DRIVER_NAME}"]'
    assert cel.matches(f'{d}.memory.compareTo(quantity("40Gi")) >= 0', device)
    assert not cel.matches(f'{d}.memory.compareTo(quantity("41Gi")) >= 0', device)
    assert cel.matches(f'{a}.cudaComputeCapability.isGreaterThan(semver("7.5.0"))', device)
    assert cel.matches(f'{a}.cudaComputeCapability.isLessThan(semver("10.0.0"))', device)
    assert cel.matches('!("x" in device.attributes["other.io"]) && device.allowMultipleAllocations', device)
    assert cel.matches(f'"productName" in {a} && {a}.productName.startsWith("NVIDIA A100")', device)
    with pytest.raises(ValueError, match="failed"):
        cel.matches(f"{a}.nosuch == 1", device)
    with pytest.raises(ValueError, match="not a bool"):
        cel.matches(f"{a}.index", device)


def test_pod_claim_names() -> None:
    pod = {
        "spec": {
            "resourceClaims": [
                {"name": "a", "resourceClaimName": "shared"},
                {"name": "b", "resourceClaimTemplateName": "t"},
                {"name": "c", "resourceClaimTemplateName": "t"},
                {"name": "d", "resourceClaimTemplateName": "t"},
            ]
        },
        "status": {"resourceClaimStatuses": [{"name": "b", "resourceClaimName": "pod-b-x1"}, {"name": "d"}]},
    }
    assert pod_claim_names(pod) == [("a", "shared"), ("b", "pod-b-x1"), ("c", None)]
