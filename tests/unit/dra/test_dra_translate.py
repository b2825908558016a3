"""Claim translation for the webhook's DRA mode (hami.core.dra_translate): golden patches and templates."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hami.core.deviceconfig import NvidiaConfig
from hami.core.dra_translate import DRIVER_NAME, ClaimShape, TranslateOptions, translate_pod
from hami.core.errors import InvalidRequest
from hami.dra.devices import DraGpu, mock_gpus
from hami.dra.slices import device_entry
from hami.simulator.dra_allocator import CelSelectors, cel_device
from hami.simulator.patching import json_patch

TYPE_SELECTOR = 'device.attributes["hami-core-gpu.project-hami.io"].type == "hami-gpu"'


def deployment_pod(limits: dict[str, str], **meta: Any) -> dict[str, Any]:
    """A pod as admission sees it for a Deployment replica: generateName, no name yet."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-7d9f8c-", "namespace": "demo", **meta},
        "spec": {"containers": [{"name": "app", "image": "cuda", "resources": {"limits": dict(limits)}}]},
    }


def test_golden_patch_and_template_for_a_generated_name_pod() -> None:
    pod = deployment_pod({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4000", "nvidia.com/gpucores": "30"})
    result = translate_pod(pod)
    assert list(result.patch) == [
        {"op": "remove", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpu"},
        {"op": "remove", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpumem"},
        {"op": "remove", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpucores"},
        {"op": "add", "path": "/spec/containers/0/resources/claims", "value": [{"name": "hami-gpu-app"}]},
        {
            "op": "add",
            "path": "/spec/resourceClaims",
            "value": [{"name": "hami-gpu-app", "resourceClaimTemplateName": "hami-gpu-1x4000mi-30c"}],
        },
        {"op": "add", "path": "/metadata/labels", "value": {"hami.io/dra": "true"}},
    ]
    assert list(result.templates) == [
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {
                "name": "hami-gpu-1x4000mi-30c",
                "namespace": "demo",
                "labels": {"app.kubernetes.io/managed-by": "hami", "hami.io/dra": "true"},
            },
            "spec": {
                "metadata": {"labels": {"app.kubernetes.io/managed-by": "hami", "hami.io/dra": "true"}},
                "spec": {
                    "devices": {
                        "requests": [
                            {
                                "name": "gpu",
                                "exactly": {
                                    "deviceClassName": DRIVER_NAME,
                                    "allocationMode": "ExactCount",
                                    "count": 1,
                                    "selectors": [{"cel": {"expression": TYPE_SELECTOR}}],
                                    "capacity": {"requests": {"cores": "30", "memory": str(4000 * 2**20)}},
                                },
                            }
                        ]
                    }
                },
            },
        }
    ]
    patched = json_patch(pod, list(result.patch))
    container = patched["spec"]["containers"][0]
    assert container["resources"] == {"limits": {}, "claims": [{"name": "hami-gpu-app"}]}
    assert patched["metadata"]["labels"] == {"hami.io/dra": "true"}
    assert result.changed and not result.warnings


def test_every_replica_gets_the_same_template_and_nothing_named_after_the_pod() -> None:
    limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4000"}
    first = translate_pod(deployment_pod(limits))
    second = translate_pod(deployment_pod(limits))
    assert first.templates == second.templates
    assert first.patch == second.patch
    # HAMi's defaults: no gpucores → defaultCores (0, share freely); the name says so.
    assert first.templates[0]["metadata"]["name"] == "hami-gpu-1x4000mi-0c"
    assert "web-" not in str(first.patch) and "web-" not in str(first.templates)


def test_requests_section_existing_claims_and_labels_are_appended_to() -> None:
    pod = deployment_pod({}, labels={"app": "web"})
    c = pod["spec"]["containers"][0]
    c["resources"] = {
        "requests": {"nvidia.com/gpu": "2", "cpu": "1"},
        "claims": [{"name": "other"}],
    }
    pod["spec"]["containers"].insert(0, {"name": "sidecar", "image": "x"})
    pod["spec"]["resourceClaims"] = [{"name": "other", "resourceClaimName": "shared"}]
    result = translate_pod(pod)
    patched = json_patch(pod, list(result.patch))
    app = patched["spec"]["containers"][1]
    assert app["resources"] == {
        "requests": {"cpu": "1"},
        "claims": [{"name": "other"}, {"name": "hami-gpu-app"}],
    }
    assert patched["spec"]["resourceClaims"] == [
        {"name": "other", "resourceClaimName": "shared"},
        {"name": "hami-gpu-app", "resourceClaimTemplateName": "hami-gpu-2xfull-100c"},
    ]
    assert patched["metadata"]["labels"] == {"app": "web", "hami.io/dra": "true"}
    assert patched["spec"]["containers"][0] == {"name": "sidecar", "image": "x"}
    # No gpumem and no gpucores: HAMi's webhook makes it exclusive (cores 100), whole memory.
    request = result.templates[0]["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    assert request["count"] == 2
    assert request["capacity"] == {"requests": {"cores": "100"}}


def test_two_containers_share_one_template_when_they_ask_alike() -> None:
    pod = deployment_pod({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024", "nvidia.com/gpucores": "10"})
    pod["spec"]["containers"].append(copy.deepcopy(pod["spec"]["containers"][0]) | {"name": "worker"})
    result = translate_pod(pod)
    assert [c.pod_claim_name for c in result.claims] == ["hami-gpu-app", "hami-gpu-worker"]
    assert [t["metadata"]["name"] for t in result.templates] == ["hami-gpu-1x1024mi-10c"]
    patched = json_patch(pod, list(result.patch))
    assert [c["name"] for c in patched["spec"]["resourceClaims"]] == ["hami-gpu-app", "hami-gpu-worker"]


def test_config_names_memory_factor_and_defaults_are_honoured() -> None:
    config = NvidiaConfig(
        resource_count_name="example.com/vgpu",
        resource_memory_name="example.com/vmem",
        memory_factor=2,
        default_cores=20,
    )
    pod = deployment_pod({"example.com/vgpu": "1", "example.com/vmem": "1000"})
    result = translate_pod(pod, TranslateOptions(config=config))
    assert result.templates[0]["metadata"]["name"] == "hami-gpu-1x2000mi-20c"
    assert {op["path"] for op in result.patch if op["op"] == "remove"} == {
        "/spec/containers/0/resources/limits/example.com~1vgpu",
        "/spec/containers/0/resources/limits/example.com~1vmem",
    }


def test_pods_without_gpus_and_init_containers_are_left_alone() -> None:
    assert not translate_pod(deployment_pod({"cpu": "1"})).changed
    pod = deployment_pod({"cpu": "1"})
    pod["spec"]["initContainers"] = [{"name": "init", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
    result = translate_pod(pod)
    assert not result.changed
    assert result.warnings == ()  # HAMi 2.8 does not even read init containers when nothing else asks


def test_percentage_other_than_100_is_refused_with_the_field_named() -> None:
    pod = deployment_pod({"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "50"})
    with pytest.raises(InvalidRequest, match=r"spec.containers\[0\].*gpumem-percentage=50"):
        translate_pod(pod)
    full = translate_pod(deployment_pod({"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "100"}))
    assert "/spec/containers/0/resources/limits/nvidia.com~1gpumem-percentage" in {
        op["path"] for op in full.patch
    }


def test_bad_quantity_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match=r"nvidia\.com/gpumem"):
        translate_pod(deployment_pod({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "lots"}))


def _device(gpu: DraGpu) -> Any:
    return cel_device(DRIVER_NAME, device_entry(gpu))


def _selects(expressions: list[str], gpu: DraGpu) -> bool:
    cel = CelSelectors()
    return all(cel.matches(e, _device(gpu)) for e in expressions)


def test_annotation_selectors_become_cel_that_selects_the_right_devices() -> None:
    a100, h100 = mock_gpus("n", 2)
    h100 = DraGpu(uuid="GPU-h", index=1, name="NVIDIA H100 80GB HBM3", memory_bytes=80 * 2**30, minor=1)
    pod = deployment_pod(
        {"nvidia.com/gpu": "1"},
        annotations={"nvidia.com/use-gputype": "h100,B200", "nvidia.com/nouse-gpuuuid": a100.uuid},
    )
    result = translate_pod(pod)
    name = result.templates[0]["metadata"]["name"]
    assert name.startswith("hami-gpu-1xfull-100c-") and len(name) == len("hami-gpu-1xfull-100c-") + 8
    selectors = [
        s["cel"]["expression"]
        for s in result.templates[0]["spec"]["spec"]["devices"]["requests"][0]["exactly"]["selectors"]
    ]
    assert selectors[0] == TYPE_SELECTOR
    assert _selects(selectors, h100)
    assert not _selects(selectors, a100)
    use_uuid = translate_pod(
        deployment_pod({"nvidia.com/gpu": "1"}, annotations={"nvidia.com/use-gpuuuid": a100.uuid})
    )
    expressions = [
        s["cel"]["expression"]
        for s in use_uuid.templates[0]["spec"]["spec"]["devices"]["requests"][0]["exactly"]["selectors"]
    ]
    assert _selects(expressions, a100) and not _selects(expressions, h100)
    # Regex specials in a type are literal; "" in nouse-gputype excludes every type (HAMi).
    odd = translate_pod(
        deployment_pod({"nvidia.com/gpu": "1"}, annotations={"nvidia.com/use-gputype": "A100-PCIE(40GB)"})
    )
    exprs = [
        s["cel"]["expression"]
        for s in odd.templates[0]["spec"]["spec"]["devices"]["requests"][0]["exactly"]["selectors"]
    ]
    assert not _selects(exprs, a100)
    none = translate_pod(
        deployment_pod({"nvidia.com/gpu": "1"}, annotations={"nvidia.com/nouse-gputype": ""})
    )
    exprs = [
        s["cel"]["expression"]
        for s in none.templates[0]["spec"]["spec"]["devices"]["requests"][0]["exactly"]["selectors"]
    ]
    assert not _selects(exprs, a100) and not _selects(exprs, h100)


def test_numa_bind_adds_a_match_attribute_constraint_for_several_gpus() -> None:
    pod = deployment_pod({"nvidia.com/gpu": "2"}, annotations={"nvidia.com/numa-bind": "true"})
    devices = translate_pod(pod).templates[0]["spec"]["spec"]["devices"]
    assert devices["constraints"] == [{"requests": ["gpu"], "matchAttribute": f"{DRIVER_NAME}/numa"}]
    single = translate_pod(
        deployment_pod({"nvidia.com/gpu": "1"}, annotations={"nvidia.com/numa-bind": "true"})
    )
    assert "constraints" not in single.templates[0]["spec"]["spec"]["devices"]


def test_claim_names_stay_dns_labels() -> None:
    long_name = "c" * 63
    pod = deployment_pod({"nvidia.com/gpu": "1"})
    pod["spec"]["containers"][0]["name"] = long_name
    claim = translate_pod(pod).claims[0].pod_claim_name
    assert len(claim) <= 63 and claim.startswith("hami-gpu-0-")


def test_claim_shape_validation() -> None:
    with pytest.raises(ValueError, match="at least one GPU"):
        ClaimShape(count=0, memory_bytes=None, cores=0)
    with pytest.raises(ValueError, match="cores"):
        ClaimShape(count=1, memory_bytes=None, cores=101)
