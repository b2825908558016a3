"""Vendors enabled per device config (spec §4.1, §9), their traits (§6.1, §7.4) and webhook hooks (§3)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from vendor_builders import pod

from hami.core import keys
from hami.core.admission import PodAdmission
from hami.core.deviceconfig import parse_device_config
from hami.core.errors import ConfigError
from hami.core.vendors import (
    Health,
    admission_vendors,
    build_registry,
    handshake_health,
    managed_resources,
    vendor_traits,
)

BASE = (
    "NVIDIA",
    "MLU",
    "DCU",
    "Metax-GPU",
    "Metax-SGPU",
    "Mthreads",
    "Enflame",
    "GCU",
    "kunlun",
    "XPU",
    "AWSNeuron",
    "AMDGPU",
)


def test_every_vendor_but_ascend_and_iluvatar_is_on_by_default() -> None:
    assert build_registry().names == BASE


def test_ascend_and_iluvatar_need_their_flags_and_follow_the_config_lists() -> None:
    chart = build_registry(enable_ascend=True, enable_iluvatar=True).names
    assert chart[len(BASE) :] == (
        "MR-V100",
        "MR-V50",
        "BI-V150",
        "BI-V100",
        "Ascend910A",
        "Ascend910B2",
        "Ascend910B3",
        "Ascend910B4-1",
        "Ascend910B4",
        "Ascend310P",
    )
    config = parse_device_config(
        """
iluvatars:
- {chipName: BI-V150, commonWord: BI-V150, resourceCountName: iluvatar.ai/BI-V150-vgpu,
   resourceMemoryName: iluvatar.ai/BI-V150.vMem, resourceCoreName: iluvatar.ai/BI-V150.vCore}
vnpus:
- {chipName: 310P3, commonWord: Ascend310P, resourceName: huawei.com/Ascend310P,
   resourceMemoryName: huawei.com/Ascend310P-memory, memoryAllocatable: 21527, memoryCapacity: 24576,
   templates: [{name: vir01, memory: 3072}]}
cambricon: {resourceCountName: cambricon.com/mlu}
"""
    )
    reg = build_registry(config, enable_ascend=True, enable_iluvatar=True)
    assert reg.names == (*BASE, "BI-V150", "Ascend310P")
    assert build_registry(config).names == BASE
    # The config's resource names are the ones read.
    from vendor_builders import CONFIG  # noqa: F401 - the chart config is what the other tests use

    from hami.core.requests import pod_request

    request = pod_request(pod({"cambricon.com/mlu": 2}), config.nvidia, readers=reg.request_readers())
    assert request.containers[0].devices["MLU"].nums == 2


def test_duplicate_common_words_are_a_config_error() -> None:
    config = parse_device_config(
        "vnpus:\n- {commonWord: Ascend910B3, resourceName: a/b}\n"
        "- {commonWord: Ascend910B3, resourceName: a/c}\n"
    )
    with pytest.raises(ConfigError, match="Ascend910B3"):
        build_registry(config, enable_ascend=True)


def test_managed_resources_and_traits() -> None:
    reg = build_registry(enable_ascend=True)
    names = managed_resources(reg)
    for name in (
        keys.RESOURCE_GPU,
        keys.RESOURCE_GPUMEM_PERCENTAGE,
        "cambricon.com/mlu.smlu.vmemory",
        "hygon.com/dcumem",
        "huawei.com/Ascend910B3-memory",
        "enflame.com/shared-gcu",
        "kunlunxin.com/vxpu-memory",
        "aws.amazon.com/neuroncore",
    ):
        assert name in names
    assert len(names) == len(set(names))
    traits = vendor_traits(reg)
    assert traits["MLU"].lock_key == "cambricon.com/dsmlu.lock" and traits["MLU"].lock_expiry == timedelta(
        minutes=2
    )
    assert (
        traits["DCU"].handshake_key == "hami.io/node-handshake-dcu"
        and traits["DCU"].health is Health.HANDSHAKE
    )
    assert traits["Ascend910B3"].handshake_key == "hami.io/node-handshake-Ascend910B3"
    assert traits["XPU"].lock_key == keys.NODE_LOCK and traits["kunlun"].lock_key is None
    assert traits["Metax-GPU"].health is Health.CAPACITY and traits["Metax-SGPU"].health is Health.DEVICES
    assert traits["NVIDIA"].lock_key == keys.NODE_LOCK


def test_handshake_rule() -> None:
    now = datetime(2026, 1, 20, 7, 0, 30, tzinfo=UTC)
    fresh = handshake_health("Requesting_2026-01-20 07:00:00", now)
    assert (fresh.healthy, fresh.refresh, fresh.write) == (True, False, None)
    stale = handshake_health("Requesting_2026-01-20 06:59:00", now)
    assert (stale.healthy, stale.refresh) == (False, False)
    assert handshake_health("Deleted_2026-01-20 06:00:00", now).healthy
    answered = handshake_health("Reported 2026-01-20 07:00:29.1 +0000 UTC", now)
    assert (answered.healthy, answered.refresh, answered.write) == (
        True,
        True,
        "Requesting_2026-01-20 07:00:30",
    )
    assert handshake_health(None, now).write == "Requesting_2026-01-20 07:00:30"
    assert not handshake_health("Requesting_garbage", now).healthy


def test_capacity_and_device_health_rules() -> None:
    reg = build_registry()
    now = datetime(2026, 1, 20, tzinfo=UTC)
    metax = reg["Metax-GPU"]
    assert metax.check_health({}, {"metax-tech.com/gpu": "2"}, now).healthy  # type: ignore[attr-defined]
    assert not metax.check_health({}, {"metax-tech.com/gpu": "0"}, now).healthy  # type: ignore[attr-defined]
    sgpu = reg["Metax-SGPU"]
    assert not sgpu.check_health({}, {}, now).healthy  # type: ignore[attr-defined]
    assert reg["MLU"].check_health({}, {}, now).healthy  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------- webhook


def admit(raw: dict[str, Any], *, enable: bool = True) -> tuple[Any, dict[str, Any] | None]:
    reg = build_registry(enable_ascend=enable, enable_iluvatar=enable)
    admission = PodAdmission(vendors=admission_vendors(reg), readers=reg.request_readers())
    decision = admission.review(raw)
    return decision, (dict(decision.mutated) if decision.mutated is not None else None)


def container0(mutated: dict[str, Any] | None) -> dict[str, Any]:
    assert mutated is not None
    return mutated["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_webhook_presence_only_vendors_take_the_pod() -> None:
    decision, mutated = admit(pod({"cambricon.com/vmlu": 1}))
    assert decision.allowed and mutated is not None
    assert mutated["spec"]["schedulerName"] == "hami-scheduler"
    ops = {op["path"] for op in decision.patch}
    assert ops == {"/spec/schedulerName"}
    decision, mutated = admit(pod({"cpu": "1"}))
    assert decision.allowed and mutated is None


def test_webhook_iluvatar_cores_and_container_name_env() -> None:
    _, mutated = admit(pod({"iluvatar.ai/BI-V100-vgpu": 2}))
    c = container0(mutated)
    assert c["resources"]["limits"]["iluvatar.ai/BI-V100.vCore"] == "200"
    assert c["env"] == [{"name": "SOL_CONTINER_NAME", "value": "c0"}]
    _, off = admit(pod({"iluvatar.ai/BI-V100-vgpu": 2}), enable=False)
    assert off is None  # without --enable-iluvatar nobody takes the pod


def test_webhook_mthreads_whole_gpus_and_memory_validation() -> None:
    _, mutated = admit(pod({"mthreads.com/vgpu": 2}))
    limits = container0(mutated)["resources"]["limits"]
    assert (limits["mthreads.com/sgpu-core"], limits["mthreads.com/sgpu-memory"]) == ("32", "192")
    assert mutated is not None and mutated["metadata"]["annotations"]["mthreads.com/request-gpu-num"] == "2"
    ok, _ = admit(pod({"mthreads.com/vgpu": 1, "mthreads.com/sgpu-memory": 8}))
    assert ok.allowed
    bad, _ = admit(pod({"mthreads.com/vgpu": 1, "mthreads.com/sgpu-memory": 3}))
    assert (bad.allowed, bad.code) == (False, 500) and "valid values are" in bad.message


def test_webhook_ascend_rounds_memory_to_a_template_and_mirrors_requests() -> None:
    _, mutated = admit(pod({"huawei.com/Ascend910B3": 1, "huawei.com/Ascend910B3-memory": 10000}))
    resources = container0(mutated)["resources"]
    assert resources["limits"]["huawei.com/Ascend910B3-memory"] == "16384"
    assert resources["requests"]["huawei.com/Ascend910B3-memory"] == "16384"
    _, mutated = admit(pod({"huawei.com/Ascend910B3": 2}))
    assert container0(mutated)["resources"]["limits"]["huawei.com/Ascend910B3-memory"] == "65536"
    multi, _ = admit(pod({"huawei.com/Ascend910B3": 2, "huawei.com/Ascend910B3-memory": 1000}))
    assert (multi.allowed, multi.code, multi.message) == (
        False,
        500,
        "vNPU nor supported for multiple devices",
    )
    huge, _ = admit(pod({"huawei.com/Ascend910B3": 1, "huawei.com/Ascend910B3-memory": 99999}))
    assert huge.code == 500 and "huawei.com/Ascend910B3-memory 99999 is invalid" in huge.message


def test_webhook_kunlun_vxpu_rounds_memory() -> None:
    _, mutated = admit(pod({"kunlunxin.com/vxpu": 1, "kunlunxin.com/vxpu-memory": 30000}))
    resources = container0(mutated)["resources"]
    assert resources["limits"]["kunlunxin.com/vxpu-memory"] == "49152"
    assert resources["requests"]["kunlunxin.com/vxpu-memory"] == "49152"


def test_webhook_metax_sgpu_qos_and_app_class() -> None:
    _, mutated = admit(pod({"metax-tech.com/sgpu": 1}))
    assert (
        mutated is not None
        and mutated["metadata"]["annotations"]["metax-tech.com/sgpu-qos-policy"] == "best-effort"
    )
    online, mutated = admit(
        pod({"metax-tech.com/sgpu": 1}, annotations={"metax-tech.com/sgpu-app-class": "online"})
    )
    assert online.allowed and "metax-tech.com/sgpu-qos-policy" not in mutated["metadata"]["annotations"]  # type: ignore[index]
    two, _ = admit(pod({"metax-tech.com/sgpu": 2}, annotations={"metax-tech.com/sgpu-app-class": "offline"}))
    assert two.code == 500 and two.message == "app-class pod must request single device"
    qos, _ = admit(pod({"metax-tech.com/sgpu": 1}, annotations={"metax-tech.com/sgpu-qos-policy": "gold"}))
    assert qos.code == 500 and "best-effort, fixed-share, burst-share" in qos.message


def test_webhook_enflame_slices_follow_the_last_node_factor() -> None:
    reg = build_registry()
    reg["Enflame"].node_devices({}, {"enflame.com/gcu-count": "2", "enflame.com/shared-gcu": "8"}, node="n")
    admission = PodAdmission(vendors=admission_vendors(reg), readers=reg.request_readers())
    one = admission.review(pod({"enflame.com/vgcu": 1, "enflame.com/vgcu-percentage": 30}))
    assert one.mutated is not None
    resources = one.mutated["spec"]["containers"][0]["resources"]  # type: ignore[index]
    assert resources["limits"]["enflame.com/vgcu-percentage"] == "50"
    assert resources["limits"]["enflame.com/shared-gcu"] == "2"
    assert resources["requests"]["enflame.com/shared-gcu"] == "2"
    two = admission.review(pod({"enflame.com/vgcu": 2}))
    assert two.mutated is not None
    assert two.mutated["spec"]["containers"][0]["resources"]["limits"]["enflame.com/shared-gcu"] == "8"  # type: ignore[index]
    patch = json.dumps(list(two.patch))
    assert base64.b64encode(patch.encode())  # the webhook layer encodes these ops as they are
