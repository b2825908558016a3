"""The webhook's pod rules (hami-scheduler-spec.md §3, §4.2, §9, §14 items 1-2)."""

from __future__ import annotations

import pytest
from webhook_builders import applied, container, pod, request

from hami.core.admission import (
    MSG_NO_CONTAINERS,
    MSG_NODE_ASSIGNED,
    MSG_OTHER_SCHEDULER,
    AdmissionOptions,
    Outcome,
    PodAdmission,
)
from hami.core.deviceconfig import NvidiaConfig, parse_device_config

GPU, MEM, PCT, CORES = (
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpumem-percentage",
    "nvidia.com/gpucores",
)


def review(body, config=None, **options):
    return PodAdmission(config, AdmissionOptions(**options)).review_request(request(body))


def limits_of(result: dict, index: int = 0) -> dict:
    return result["spec"]["containers"][index].get("resources", {}).get("limits", {})


def env_of(result: dict, index: int = 0) -> list[dict]:
    return result["spec"]["containers"][index].get("env", [])


def test_worked_example_of_spec_section_3():
    body = pod(container(limits={GPU: "1"}))
    decision = review(body)
    assert decision.outcome is Outcome.ALLOWED and decision.code == 200
    ops = {(op["op"], op["path"], op["value"]) for op in decision.patch}
    assert ops == {
        ("add", "/spec/containers/0/resources/limits/nvidia.com~1gpucores", "100"),
        ("replace", "/spec/schedulerName", "hami-scheduler"),
    }
    result = applied(body, decision)
    assert result["spec"]["schedulerName"] == "hami-scheduler"
    assert limits_of(result) == {GPU: "1", CORES: "100"}


def test_pod_without_hami_resources_is_not_touched():
    body = pod(container(limits={"cpu": "1"}), container("c1"))
    decision = review(body)
    assert decision.allowed and decision.patch == () and decision.mutated is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # count defaulting from defaultGPUNum; gpumem present → not exclusive
        ({MEM: "3000"}, {MEM: "3000", GPU: "1"}),
        # cores given → count defaulted, cores kept
        ({CORES: "30"}, {CORES: "30", GPU: "1"}),
        # percentage 100 → exclusive cores too
        ({PCT: "100"}, {PCT: "100", GPU: "1", CORES: "100"}),
        # percentage below 100 → no core defaulting
        ({PCT: "50"}, {PCT: "50", GPU: "1"}),
        # count and memory → shared card, no core defaulting
        ({GPU: "2", MEM: "1024"}, {GPU: "2", MEM: "1024"}),
        # count and cores → nothing to default
        ({GPU: "1", CORES: "50"}, {GPU: "1", CORES: "50"}),
    ],
)
def test_nvidia_defaulting(given, expected):
    body = pod(container(limits=given))
    result = applied(body, review(body))
    assert limits_of(result) == expected
    assert result["spec"]["schedulerName"] == "hami-scheduler"


def test_default_gpu_num_from_config_and_zero_disables_count_defaulting():
    body = pod(container(limits={MEM: "3000"}))
    result = applied(body, review(body, NvidiaConfig(default_gpu_num=3)))
    assert limits_of(result)[GPU] == "3"
    decision = review(body, NvidiaConfig(default_gpu_num=0))
    assert decision.allowed and decision.patch == ()  # not a HAMi pod: schedulerName untouched


def test_count_in_requests_only_still_gets_exclusive_cores():
    # Step 4 looks at limits *and* requests for the count; step 3 at limits only.
    body = pod(container(resources={"requests": {GPU: "1"}}))
    result = applied(body, review(body))
    assert limits_of(result) == {CORES: "100"}
    assert result["spec"]["schedulerName"] == "hami-scheduler"


def test_priority_becomes_env_rounded_up_and_replaces_a_same_named_entry():
    body = pod(
        container(
            limits={GPU: "1", MEM: "1000", "nvidia.com/priority": "500m"}, env=[{"name": "A", "value": "a"}]
        ),
        container(
            "c1",
            limits={GPU: "1", MEM: "1000", "nvidia.com/priority": "1"},
            env=[{"name": "CUDA_TASK_PRIORITY", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
        ),
    )
    result = applied(body, review(body))
    assert env_of(result, 0) == [{"name": "A", "value": "a"}, {"name": "CUDA_TASK_PRIORITY", "value": "1"}]
    assert env_of(result, 1) == [{"name": "CUDA_TASK_PRIORITY", "value": "1"}]


@pytest.mark.parametrize(
    ("policy", "expected"), [("force", "force"), ("disable", "disable"), ("default", None)]
)
def test_gpu_core_policy_env_on_every_container(policy, expected):
    body = pod(container(limits={GPU: "1"}), container("plain"))
    result = applied(body, review(body, NvidiaConfig(gpu_core_policy=policy)))
    for index in (0, 1):
        values = [e["value"] for e in env_of(result, index) if e["name"] == "GPU_CORE_UTILIZATION_POLICY"]
        assert values == ([expected] if expected else [])


def test_runtime_class_only_for_gpu_pods_without_one():
    config = NvidiaConfig(runtime_class_name="nvidia")
    gpu_pod = pod(container(limits={GPU: "1"}))
    assert applied(gpu_pod, review(gpu_pod, config))["spec"]["runtimeClassName"] == "nvidia"
    own = pod(container(limits={GPU: "1"}), runtimeClassName="kata")
    assert applied(own, review(own, config))["spec"]["runtimeClassName"] == "kata"
    plain = pod(container())
    assert "runtimeClassName" not in applied(plain, review(plain, config))["spec"]


def test_overwrite_env_hides_gpus_from_containers_without_a_request():
    body = pod(container(limits={GPU: "1"}), container("sidecar"))
    result = applied(body, review(body, NvidiaConfig(overwrite_env=True)))
    assert env_of(result, 0) == []
    assert env_of(result, 1) == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"}]
    # A pod without any GPU container gets the env but keeps its scheduler (spec §3 step 5).
    plain = pod(container("only"))
    result = applied(plain, review(plain, NvidiaConfig(overwrite_env=True)))
    assert result["spec"]["schedulerName"] == "default-scheduler"
    assert env_of(result) == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"}]


def test_privileged_container_is_skipped_with_a_warning():
    privileged = container(limits={GPU: "1"}, securityContext={"privileged": True})
    decision = review(pod(privileged))
    assert decision.allowed and decision.patch == ()
    assert decision.warnings == ("container 'c0' is privileged: HAMi does not manage its devices",)
    body = pod(privileged, container("c1", limits={GPU: "1"}))
    result = applied(body, review(body))
    assert limits_of(result, 0) == {GPU: "1"}
    assert limits_of(result, 1) == {GPU: "1", CORES: "100"}
    assert result["spec"]["schedulerName"] == "hami-scheduler"
    # privileged: false is an ordinary container
    unprivileged = pod(container(limits={GPU: "1"}, securityContext={"privileged": False}))
    assert review(unprivileged).patch


def test_ignore_label_leaves_the_pod_alone():
    decision = review(pod(container(limits={GPU: "1"}), labels={"hami.io/webhook": "ignore"}))
    assert decision.allowed and decision.patch == ()
    assert decision.message == "pod has label hami.io/webhook=ignore"
    other_value = pod(container(limits={GPU: "1"}), labels={"hami.io/webhook": "yes"})
    assert review(other_value).patch


@pytest.mark.parametrize(
    ("force", "scheduler", "mutated"),
    [
        (True, None, True),
        (True, "", True),
        (True, "default-scheduler", True),
        (True, "hami-scheduler", True),  # v2.8.0 skipped it (spec §14 item 1): fixed
        (True, "volcano", False),
        (False, None, True),
        (False, "", True),
        (False, "default-scheduler", False),
        (False, "hami-scheduler", True),  # v2.8.0 skipped every pod with force=false: fixed
        (False, "volcano", False),
    ],
)
def test_scheduler_name_gate_truth_table(force, scheduler, mutated):
    body = pod(container(limits={GPU: "1"}), scheduler=scheduler)
    decision = review(body, force_overwrite_default_scheduler=force)
    assert decision.allowed
    if mutated:
        result = applied(body, decision)
        assert result["spec"]["schedulerName"] == "hami-scheduler"
        assert limits_of(result)[CORES] == "100"
    else:
        assert decision.patch == () and decision.message == MSG_OTHER_SCHEDULER


def test_custom_scheduler_name_and_empty_scheduler_name():
    body = pod(container(limits={GPU: "1"}), scheduler="my-hami")
    result = applied(body, review(body, scheduler_name="my-hami"))
    assert result["spec"]["schedulerName"] == "my-hami" and limits_of(result)[CORES] == "100"
    body = pod(container(limits={GPU: "1"}))
    result = applied(body, review(body, scheduler_name=""))
    assert result["spec"]["schedulerName"] == "default-scheduler"  # resources defaulted, name kept
    assert limits_of(result)[CORES] == "100"


def test_node_assigned_is_denied_only_for_hami_pods():
    decision = review(pod(container(limits={GPU: "1"}), nodeName="node-a"))
    assert (decision.outcome, decision.code, decision.message) == (Outcome.DENIED, 403, MSG_NODE_ASSIGNED)
    assert review(pod(container(), nodeName="node-a")).allowed


@pytest.mark.parametrize("spec", [{"containers": []}, {}, None])
def test_no_containers_is_denied(spec):
    body = {"metadata": {"name": "p"}}
    if spec is not None:
        body["spec"] = spec
    decision = review(body)
    assert (decision.outcome, decision.code, decision.message) == (Outcome.DENIED, 403, MSG_NO_CONTAINERS)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"spec": {"containers": {"c": 1}}}, "spec.containers: expected a list"),
        ({"spec": {"containers": ["x"]}}, "spec.containers[0]: expected an object"),
        ({"spec": "x"}, "request.object.spec: expected an object"),
        (pod(container(limits={GPU: [1]})), "spec.containers[0].resources.limits['nvidia.com/gpu']"),
        (pod(container(limits={GPU: "lots"})), "spec.containers[0].resources.limits['nvidia.com/gpu']"),
        (pod(container(limits={GPU: "1", MEM: "4Gi"})), "does not fit a 32-bit integer"),
        (pod(container(limits={GPU: "1", "nvidia.com/priority": {}})), "nvidia.com/priority"),
        (pod(container(resources=[1])), "spec.containers[0].resources: expected an object"),
        (
            pod(container(limits={GPU: "1", "nvidia.com/priority": "1"}, env="x")),
            "spec.containers[0].env: expected a list",
        ),
    ],
)
def test_undecodable_pods_are_errored_400_naming_the_field(body, fragment):
    decision = review(body)
    assert decision.outcome is Outcome.ERRORED and decision.code == 400
    assert fragment in decision.message


def test_request_level_rules():
    admission = PodAdmission()
    body = pod(container(limits={GPU: "1"}))
    update = admission.review_request(request(body, operation="UPDATE"))
    assert update.allowed and update.patch == () and "UPDATE" in update.message
    deployment = admission.review_request(request(body, kind="Deployment"))
    assert deployment.allowed and deployment.patch == ()
    missing = admission.review_request({"uid": "u", "operation": "CREATE"})
    assert (missing.code, missing.message) == (400, "request.object: expected a Pod object, got missing")
    scalar = admission.review_request({"uid": "u", "object": 3})
    assert scalar.code == 400 and "got a int" in scalar.message


def test_init_containers_are_not_mutated():
    body = pod(container(), initContainers=[container("init", limits={GPU: "1"})])
    decision = review(body)
    assert decision.allowed and decision.patch == ()


def test_resource_names_come_from_the_device_config():
    config = parse_device_config(
        "nvidia:\n"
        "  resourceCountName: example.com/vgpu\n"
        "  resourceMemoryName: example.com/vmem\n"
        "  resourceCoreName: example.com/vcores\n"
        "  defaultGPUNum: 2\n"
    )
    body = pod(
        container(limits={"example.com/vmem": "100"}), container("c1", limits={"example.com/vgpu": "1"})
    )
    result = applied(body, review(body, config))
    assert limits_of(result, 0) == {"example.com/vmem": "100", "example.com/vgpu": "2"}
    assert limits_of(result, 1) == {"example.com/vgpu": "1", "example.com/vcores": "100"}
    assert review(pod(container(limits={GPU: "1"})), config).patch == ()  # the default name is not ours now


def test_empty_memory_resource_name_makes_a_count_exclusive():
    config = NvidiaConfig(resource_memory_name="")
    body = pod(container(limits={GPU: "1"}))
    assert limits_of(applied(body, review(body, config)))[CORES] == "100"


def test_mutation_is_idempotent():
    admission = PodAdmission(
        NvidiaConfig(overwrite_env=True, gpu_core_policy="force", runtime_class_name="rc")
    )
    body = pod(
        container(limits={MEM: "10", "nvidia.com/priority": "2"}), container("side"), labels={"app": "x"}
    )
    first = admission.review_request(request(body))
    once = applied(body, first)
    second = admission.review_request(request(once))
    assert second.allowed and second.patch == ()


def test_limits_added_to_a_container_without_resources():
    body = pod({"name": "c0", "image": "x", "resources": {"requests": {GPU: "1"}}})
    result = applied(body, review(body))
    assert result["spec"]["containers"][0]["resources"] == {"requests": {GPU: "1"}, "limits": {CORES: "100"}}
