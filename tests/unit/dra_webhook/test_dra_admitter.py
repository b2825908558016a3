"""The webhook's DRA translation mode without HTTP: :class:`DraAdmitter` decisions, the
:class:`TemplateCreator` against a fake API, and :meth:`WebhookHandler.answer` creating (or, on a
dry run, not creating) a decision's prerequisites."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import orjson
import pytest

from hami.core.admission import AdmissionDecision, AdmissionOptions, Outcome, PodAdmission
from hami.core.deviceconfig import DeviceConfig
from hami.core.dra_translate import DRA_LABEL, DRIVER_NAME, TranslateOptions
from hami.core.vendors import admission_vendors, build_registry
from hami.k8s.errors import ApiAlreadyExists, ApiForbidden
from hami.scheduler.dra_admission import (
    RESOURCE_CLAIM_TEMPLATES,
    DraAdmitter,
    TemplateCreator,
    TemplateError,
    webhook_admitter,
)
from hami.scheduler.settings import SchedulerSection
from hami.scheduler.webhook import WebhookHandler

GPU, MEM, PCT = "nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpumem-percentage"
DCU = "hygon.com/dcunum"
JSON = "application/json"
TEMPLATE = "hami-gpu-1x4000mi-0c"
WHOLE = "hami-gpu-1xfull-100c"  # a whole GPU: exclusive cores, as HAMi's webhook sets


def hami_admission() -> PodAdmission:
    registry = build_registry(DeviceConfig())
    return PodAdmission(
        DeviceConfig(),
        AdmissionOptions(scheduler_name="hami-scheduler"),
        vendors=admission_vendors(registry),
        readers=registry.request_readers(),
    )


def admitter() -> DraAdmitter:
    return DraAdmitter(
        hami_admission(), scheduler_name="hami-scheduler", readers=build_registry().request_readers()
    )


def pod(*limits: dict[str, str], labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    containers = [
        {"name": f"c{i}", "image": "cuda", "resources": {"limits": dict(lim)}} for i, lim in enumerate(limits)
    ]
    meta: dict[str, Any] = {"generateName": "job-"}
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": containers, **spec}}


def request(obj: Any, **extra: Any) -> dict[str, Any]:
    return {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE",
        "namespace": "ml",
        "object": obj,
        **extra,
    }


def ops(decision: AdmissionDecision) -> dict[str, Any]:
    return {op["path"]: op.get("value") for op in decision.patch}


# --------------------------------------------------------------------------------------- decisions


def test_gpu_pod_is_translated_with_its_template_as_prerequisite() -> None:
    decision = admitter().review_request(request(pod({GPU: "1", MEM: "4000", "cpu": "1"})))
    assert decision.allowed and decision.prerequisites
    patch = ops(decision)
    assert patch["/spec/resourceClaims"] == [{"name": "hami-gpu-c0", "resourceClaimTemplateName": TEMPLATE}]
    assert patch["/spec/containers/0/resources/claims"] == [{"name": "hami-gpu-c0"}]
    assert "/spec/containers/0/resources/limits/nvidia.com~1gpu" in patch
    assert not any("schedulerName" in path for path in patch)  # the default scheduler places it
    (template,) = decision.prerequisites
    assert template["kind"] == "ResourceClaimTemplate"
    assert template["metadata"] == {
        "name": TEMPLATE,
        "namespace": "ml",  # from the AdmissionRequest: the pod being created carries none
        "labels": {"app.kubernetes.io/managed-by": "hami", DRA_LABEL: "true"},
    }
    assert "c0" in decision.message and TEMPLATE in decision.message


def test_driver_name_reaches_the_claims() -> None:
    cfg = SchedulerSection(dra_mode="translate", dra_driver_name="gpu.example.com")
    admit, creator = webhook_admitter(hami_admission(), cfg, api=object(), nvidia=DeviceConfig().nvidia)
    assert isinstance(admit, DraAdmitter) and isinstance(creator, TemplateCreator)
    assert admit.options == TranslateOptions(driver="gpu.example.com", device_class="gpu.example.com")
    (template,) = admit.review_request(request(pod({GPU: "1"}))).prerequisites
    (req,) = template["spec"]["spec"]["devices"]["requests"]
    assert req["exactly"]["deviceClassName"] == "gpu.example.com"


def test_off_mode_keeps_hami_admission() -> None:
    hami = hami_admission()
    admit, creator = webhook_admitter(hami, SchedulerSection(), api=object(), nvidia=DeviceConfig().nvidia)
    assert admit is hami and creator is None


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        (pod({"cpu": "1"}), "no GPU: HAMi's admission, which changes nothing"),
        (pod({GPU: "1"}, labels={"hami.io/webhook": "ignore"}), "ignore label"),
        (pod({GPU: "1"}, schedulerName="volcano"), "another scheduler's pod"),
    ],
)
def test_pods_this_mode_does_not_translate_are_left_alone(obj: dict[str, Any], why: str) -> None:
    decision = admitter().review_request(request(obj))
    assert decision.allowed and decision.patch == () and decision.prerequisites == (), why


def test_other_vendors_keep_hamis_scheduling() -> None:
    decision = admitter().review_request(request(pod({DCU: "1"})))
    assert decision.allowed and not decision.prerequisites
    assert ops(decision)["/spec/schedulerName"] == "hami-scheduler"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (pod({GPU: "1", PCT: "50"}), f"{PCT}=50 cannot be expressed as a DRA capacity request"),
        (pod({GPU: "1"}, {DCU: "1"}), "and for DCU devices, which HAMi's scheduler places"),
        (
            pod({GPU: "1"}, nodeName="node-1"),
            "pod has node assigned: its DRA claims would never be allocated",
        ),
        (pod({GPU: "1"}, resourceClaims={"x": 1}), "spec.resourceClaims: expected a list, got dict"),
        (pod({GPU: "x"}), "is not a Kubernetes quantity"),
    ],
)
def test_refusals_name_the_reason(obj: dict[str, Any], message: str) -> None:
    decision = admitter().review_request(request(obj))
    assert decision.outcome is Outcome.DENIED and message in decision.message
    assert decision.prerequisites == ()


def test_other_operations_and_bad_objects() -> None:
    assert admitter().review_request(request(pod({GPU: "1"}), operation="UPDATE")).patch == ()
    missing = admitter().review_request(request(None))
    assert missing.outcome is Outcome.ERRORED and missing.code == 400


# --------------------------------------------------------------------------------------- creation


class FakeApi:
    def __init__(self, existing: dict[str, Any] | None = None, *, fail: Exception | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        if existing is not None:
            meta = existing["metadata"]
            self.objects[(meta["namespace"], meta["name"])] = existing
        self.fail = fail
        self.calls: list[tuple[str, str]] = []
        self.delay = 0.0

    async def create(
        self, resource: Any, body: dict[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        assert resource is RESOURCE_CLAIM_TEMPLATES and namespace == body["metadata"]["namespace"]
        self.calls.append(("create", body["metadata"]["name"]))
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiAlreadyExists("already exists", status=409, reason="AlreadyExists")
        self.objects[key] = body
        return body

    async def get(self, resource: Any, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        self.calls.append(("get", name))
        assert namespace is not None
        return self.objects[(namespace, name)]


def template(labels: dict[str, str] | None = None) -> dict[str, Any]:
    (obj,) = admitter().review_request(request(pod({GPU: "1", MEM: "4000"}))).prerequisites
    out = json.loads(json.dumps(obj))
    if labels is not None:
        out["metadata"]["labels"] = labels
    return out


async def test_creator_creates_then_accepts_hamis_existing_template() -> None:
    api = FakeApi()
    creator = TemplateCreator(api)
    await creator([template()])
    await creator([template()])
    assert api.calls == [("create", TEMPLATE), ("create", TEMPLATE), ("get", TEMPLATE)]


async def test_creator_refuses_a_foreign_template_of_the_same_name() -> None:
    api = FakeApi(template(labels={"team": "x"}))
    with pytest.raises(TemplateError, match=f"ml/{TEMPLATE} exists but was not made by HAMi"):
        await TemplateCreator(api)([template()])


async def test_creator_errors_name_the_template() -> None:
    forbidden = ApiForbidden("cannot create resourceclaimtemplates", status=403, reason="Forbidden")
    with pytest.raises(
        TemplateError, match=f"^cannot create ResourceClaimTemplate ml/{TEMPLATE}: .*403 Forbidden"
    ):
        await TemplateCreator(FakeApi(fail=forbidden))([template()])
    slow = FakeApi()
    slow.delay = 1.0
    with pytest.raises(
        TemplateError,
        match=rf"^cannot create ResourceClaimTemplate ml/{TEMPLATE}: .* did not answer within 0\.05 s$",
    ):
        await TemplateCreator(slow, timeout=0.05)([template()])
    with pytest.raises(TemplateError, match=r"only resource\.k8s\.io/v1 ResourceClaimTemplates"):
        await TemplateCreator(FakeApi())([{"apiVersion": "v1", "kind": "ConfigMap"}])


# --------------------------------------------------------------------------------------- handler


def body(obj: Any, **extra: Any) -> bytes:
    return orjson.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request(obj, **extra)}
    )


async def test_handler_creates_templates_before_answering_but_not_on_dry_run() -> None:
    api = FakeApi()
    handler = WebhookHandler(admitter(), prerequisites=TemplateCreator(api))
    gpu_pod = pod({GPU: "1", MEM: "4000"})

    dry = (await handler.answer(body(gpu_pod, dryRun=True), JSON))["response"]
    assert dry["allowed"] and dry["patchType"] == "JSONPatch" and api.calls == []

    pure = handler.respond(body(gpu_pod), JSON)["response"]  # the decision alone creates nothing
    assert pure["allowed"] and api.calls == []

    answer = (await handler.answer(body(gpu_pod), JSON))["response"]
    assert answer["allowed"] and api.calls == [("create", TEMPLATE)]
    patch = json.loads(base64.b64decode(answer["patch"]))
    assert {"op": "add", "path": "/spec/resourceClaims", "value": [
        {"name": "hami-gpu-c0", "resourceClaimTemplateName": TEMPLATE}
    ]} in patch  # fmt: skip

    plain = (await handler.answer(body(pod({"cpu": "1"})), JSON))["response"]
    assert plain["allowed"] and api.calls == [("create", TEMPLATE)]


async def test_handler_turns_creation_failures_into_errored_reviews() -> None:
    forbidden = ApiForbidden("no", status=403, reason="Forbidden")
    handler = WebhookHandler(admitter(), prerequisites=TemplateCreator(FakeApi(fail=forbidden)))
    response = (await handler.answer(body(pod({GPU: "1"})), JSON))["response"]
    assert not response["allowed"] and "patch" not in response
    assert response["status"]["code"] == 500
    assert (
        response["status"]["message"] == f"cannot create ResourceClaimTemplate ml/{WHOLE}: 403 Forbidden: no"
    )

    without = WebhookHandler(admitter())
    response = (await without.answer(body(pod({GPU: "1"})), JSON))["response"]
    assert response["status"]["code"] == 500 and "no API client" in response["status"]["message"]

    async def broken(objects: Any) -> None:
        raise RuntimeError("boom")

    response = (await WebhookHandler(admitter(), prerequisites=broken).answer(body(pod({GPU: "1"})), JSON))[
        "response"
    ]
    assert response["status"] == {
        "code": 500,
        "message": f"cannot create ResourceClaimTemplate ml/{WHOLE}: internal error: RuntimeError",
    }


def test_driver_name_default_is_hami_dras() -> None:
    assert SchedulerSection().dra_driver_name == DRIVER_NAME and SchedulerSection().dra_mode == "off"
