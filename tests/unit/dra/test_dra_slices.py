"""The node's ResourceSlice against the resource.k8s.io/v1 shape (k8s-apis.md §3.4, §3.5)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hami.core.dra_translate import DRIVER_NAME
from hami.dra.devices import DraGpu, mock_gpus
from hami.dra.slices import binary_quantity, resource_slice, semver_of, slice_name, validate_resource_slice
from hami.simulator.dra_allocator import CelSelectors, cel_device

CLASS_SELECTOR = (
    'device.driver == "hami-core-gpu.project-hami.io" && '
    'device.attributes["hami-core-gpu.project-hami.io"].type == "hami-gpu"'
)


def h100(index: int = 0) -> DraGpu:
    return DraGpu(
        uuid=f"GPU-c7a18d9c-18fd-13e6-447c-983f490b649{index}",
        index=index,
        name="NVIDIA H100 80GB HBM3",
        memory_bytes=85520809984,
        minor=index,
        numa_node=None,
        compute_capability="9.0",
        pci_bus_id="0000:00:06.0",
        driver_version="570.124.06",
    )


def test_slice_golden_shape_and_validates() -> None:
    obj = resource_slice("node-a", DRIVER_NAME, [h100()], node_uid="uid-a")
    assert validate_resource_slice(obj) == []
    assert obj["metadata"] == {
        "name": "node-a-hami-core-gpu.project-hami.io",
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "uid-a", "controller": True}
        ],
    }
    spec = obj["spec"]
    assert spec["driver"] == DRIVER_NAME and spec["nodeName"] == "node-a"
    assert spec["pool"] == {"name": "node-a", "generation": 1, "resourceSliceCount": 1}
    (device,) = spec["devices"]
    assert device["name"] == "hami-gpu-0" and device["allowMultipleAllocations"] is True
    assert device["attributes"] == {
        "type": {"string": "hami-gpu"},
        "uuid": {"string": "GPU-c7a18d9c-18fd-13e6-447c-983f490b6490"},
        "index": {"int": 0},
        "model": {"string": "NVIDIA H100 80GB HBM3"},
        "productName": {"string": "NVIDIA H100 80GB HBM3"},
        "numa": {"int": 0},
        "minor": {"int": 0},
        "cudaComputeCapability": {"version": "9.0.0"},
        "driverVersion": {"version": "570.124.6"},
        "resource.kubernetes.io/pciBusID": {"string": "0000:00:06.0"},
    }
    assert device["capacity"] == {
        "cores": {
            "value": "100",
            "requestPolicy": {"default": "100", "validRange": {"min": "0", "max": "100", "step": "1"}},
        },
        "memory": {
            "value": "81559Mi",
            "requestPolicy": {
                "default": "81559Mi",
                "validRange": {"min": "1Mi", "max": "81559Mi", "step": "1Mi"},
            },
        },
        # deviceSplitCount: every share takes one of the GPU's ten task slots.
        "tasks": {"value": "10", "requestPolicy": {"default": "1", "validValues": ["1"]}},
    }


def test_many_mock_gpus_validate_and_the_device_class_selects_them() -> None:
    obj = resource_slice("node-1", DRIVER_NAME, mock_gpus("node-1", 8))
    assert validate_resource_slice(obj) == []
    assert "ownerReferences" not in obj["metadata"]
    cel = CelSelectors()
    assert all(cel.matches(CLASS_SELECTOR, cel_device(DRIVER_NAME, d)) for d in obj["spec"]["devices"])
    assert not cel.matches(CLASS_SELECTOR, cel_device("gpu.nvidia.com", obj["spec"]["devices"][0]))


def _broken(edit: Any) -> list[str]:
    obj = resource_slice("node-1", DRIVER_NAME, mock_gpus("node-1", 2))
    edit(obj)
    return validate_resource_slice(obj)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda o: o["spec"].update(allNodes=True), "exactly one of nodeName"),
        (lambda o: o["spec"].pop("nodeName"), "exactly one of nodeName"),
        (lambda o: o["spec"].update(driver="Bad_Driver"), "spec.driver"),
        (lambda o: o["spec"]["pool"].update(resourceSliceCount=0), "resourceSliceCount"),
        (lambda o: o["spec"]["pool"].update(name=""), "spec.pool.name"),
        (lambda o: o["spec"]["devices"][1].update(name="hami-gpu-0"), "duplicated"),
        (lambda o: o["spec"]["devices"][0].update(name="GPU_0"), "not a DNS label"),
        (
            lambda o: o["spec"]["devices"][0]["attributes"].update(x={"int": 1, "string": "a"}),
            "exactly one of",
        ),
        (lambda o: o["spec"]["devices"][0]["attributes"].update(x={"string": "a" * 65}), "at most 64"),
        (lambda o: o["spec"]["devices"][0]["attributes"].update(x={"version": "8.0"}), "semantic version"),
        (lambda o: o["spec"]["devices"][0]["attributes"].update({"bad name": {"int": 1}}), "C identifier"),
        (lambda o: o["spec"]["devices"][0].update(allowMultipleAllocations=False), "only allowed when"),
        (lambda o: o["spec"]["devices"][0]["capacity"]["memory"].update(value="lots"), "required quantity"),
        (
            lambda o: o["spec"]["devices"][0]["capacity"]["cores"]["requestPolicy"].update(
                validValues=["10"]
            ),
            "at most one of validValues",
        ),
        (
            lambda o: o["spec"]["devices"][0]["capacity"]["cores"]["requestPolicy"]["validRange"].update(
                max="200"
            ),
            "exceeds the capacity value",
        ),
        (
            lambda o: o["spec"]["devices"][0]["attributes"].update({f"a{i}": {"int": i} for i in range(30)}),
            "more than 32",
        ),
        (
            lambda o: o["spec"].update(devices=[copy.deepcopy(o["spec"]["devices"][0]) for _ in range(129)]),
            "at most 128",
        ),
        (lambda o: o.update(apiVersion="resource.k8s.io/v1beta1"), "apiVersion/kind"),
    ],
)
def test_validator_names_what_is_wrong(edit: Any, message: str) -> None:
    problems = _broken(edit)
    assert any(message in p for p in problems), problems


def test_valid_values_policy_rules() -> None:
    def policy(values: list[str], default: str) -> list[str]:
        def edit(o: dict[str, Any]) -> None:
            o["spec"]["devices"][0]["capacity"]["cores"]["requestPolicy"] = {
                "default": default,
                "validValues": values,
            }

        return _broken(edit)

    assert policy(["10", "50", "100"], "50") == []
    assert any("ascending" in p for p in policy(["50", "10"], "50"))
    assert any("contain the default" in p for p in policy(["10", "20"], "50"))


def test_helpers() -> None:
    assert binary_quantity(80 * 2**30) == "80Gi"
    assert binary_quantity(4000 * 2**20) == "4000Mi"
    assert binary_quantity(1000) == "1000"
    assert semver_of("8.0") == "8.0.0" and semver_of("570.124.06") == "570.124.6" and semver_of("abc") is None
    assert slice_name("n" * 300, DRIVER_NAME) == "n" * 253


@pytest.mark.parametrize("version", ["1.34.0", "1.36.0"])
def test_slice_and_claim_template_pass_the_upstream_openapi_schema(version: str) -> None:
    import kubernetes_validate

    from hami.core.dra_translate import translate_pod

    obj = resource_slice("node-a", DRIVER_NAME, [h100(), *mock_gpus("node-a", 3)[1:]], node_uid="uid-a")
    kubernetes_validate.validate(obj, version, strict=True)
    pod = {
        "metadata": {
            "namespace": "demo",
            "annotations": {"nvidia.com/use-gputype": "A100", "nvidia.com/numa-bind": "1"},
        },
        "spec": {
            "containers": [
                {"name": "app", "resources": {"limits": {"nvidia.com/gpu": "2", "nvidia.com/gpumem": "4000"}}}
            ]
        },
    }
    (template,) = translate_pod(pod).templates
    kubernetes_validate.validate(template, version, strict=True)
    bad = copy.deepcopy(obj)
    bad["spec"]["devices"][0]["attributes"]["uuid"] = {"text": "x"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)
