"""apps/v1 workloads (Deployment, DaemonSet, StatefulSet, ReplicaSet) and batch/v1 Jobs as stored.

What kube-apiserver's strategies do to them, and nothing a controller would: scheme defaults (replicas,
update strategies, history limits, Job completions/parallelism/backoff, and the pod defaults inside
``spec.template``), a reset ``status`` on create, a Job's generated selector and template labels
(``batch.kubernetes.io/controller-uid``/``job-name``), a DaemonSet's
``deprecated.daemonset.template.generation`` annotation, and validation: ``spec.selector`` is required,
non-empty, matches the template's labels and is immutable; the template is a valid pod template with
the restart policy the kind allows; a Job's template is immutable, a StatefulSet's spec outside the
updatable fields too. No ReplicaSet, pod or status ever follows from them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from hami.simulator import strategies
from hami.simulator.resources import PODS, ResourceType
from hami.simulator.selectors import LabelSelector
from hami.simulator.statuses import StatusError, bad_request, field_error

JsonObj = dict[str, Any]
Causes = list[JsonObj]

DS_TEMPLATE_GENERATION = "deprecated.daemonset.template.generation"
JOB_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
STATEFULSET_UPDATABLE = (
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
)
_INITIAL_STATUS: Mapping[str, JsonObj] = {
    "Deployment": {},
    "ReplicaSet": {"replicas": 0},
    "StatefulSet": {"replicas": 0, "availableReplicas": 0},
    "DaemonSet": {
        "currentNumberScheduled": 0,
        "numberMisscheduled": 0,
        "desiredNumberScheduled": 0,
        "numberReady": 0,
    },
    "Job": {},
}


def _go_value(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _spec(rt: ResourceType, obj: JsonObj) -> JsonObj:
    spec = obj.get("spec")
    if spec is None:
        spec = obj["spec"] = {}
    return spec  # check_shape made it a dict


def _template(rt: ResourceType, spec: JsonObj) -> JsonObj | None:
    template = spec.get("template")
    if template is None:
        return None
    if not isinstance(template, dict) or not isinstance(template.get("spec", {}), dict):
        raise bad_request(
            f"json: cannot unmarshal into Go struct field {rt.kind}Spec.spec.template of type "
            "v1.PodTemplateSpec"
        )
    meta = template.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise bad_request(
            "json: cannot unmarshal into Go struct field PodTemplateSpec.spec.template.metadata of type "
            "v1.ObjectMeta"
        )
    return template


def _default_rolling(spec: JsonObj, key: str, kind: str, rolling: Mapping[str, Any]) -> None:
    strategy = spec.get(key)
    if not isinstance(strategy, dict):
        strategy = spec[key] = {}
    strategy["type"] = strategy.get("type") or kind
    if strategy["type"] == kind and rolling:
        current = strategy.get("rollingUpdate")
        current = dict(current) if isinstance(current, dict) else {}
        for field, value in rolling.items():
            current.setdefault(field, value)
        strategy["rollingUpdate"] = current


def default_workload(rt: ResourceType, obj: JsonObj) -> None:
    """The apps/v1 and batch/v1 ``SetDefaults_*`` (in place), the pod template's included."""
    spec = _spec(rt, obj)
    kind = rt.kind
    if kind in ("Deployment", "StatefulSet", "ReplicaSet") and spec.get("replicas") is None:
        spec["replicas"] = 1
    if kind != "ReplicaSet" and kind != "Job":
        spec.setdefault("revisionHistoryLimit", 10)
    if kind == "Deployment":
        _default_rolling(spec, "strategy", "RollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})
        spec.setdefault("progressDeadlineSeconds", 600)
    elif kind == "DaemonSet":
        _default_rolling(spec, "updateStrategy", "RollingUpdate", {"maxUnavailable": 1, "maxSurge": 0})
    elif kind == "StatefulSet":
        spec["podManagementPolicy"] = spec.get("podManagementPolicy") or "OrderedReady"
        _default_rolling(spec, "updateStrategy", "RollingUpdate", {"partition": 0})
        retention = spec.get("persistentVolumeClaimRetentionPolicy")
        retention = dict(retention) if isinstance(retention, dict) else {}
        retention.setdefault("whenDeleted", "Retain")
        retention.setdefault("whenScaled", "Retain")
        spec["persistentVolumeClaimRetentionPolicy"] = retention
    elif kind == "Job":
        if spec.get("completions") is None and spec.get("parallelism") is None:
            spec["completions"] = 1
        if spec.get("parallelism") is None:
            spec["parallelism"] = 1
        if spec.get("backoffLimit") is None:
            spec["backoffLimit"] = 6
        spec["completionMode"] = spec.get("completionMode") or "NonIndexed"
        if spec.get("suspend") is None:
            spec["suspend"] = False
        if not spec.get("podReplacementPolicy"):
            spec["podReplacementPolicy"] = "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
    template = _template(rt, spec)
    if template is not None:
        # the template's pod spec is defaulted in place exactly as a pod's
        strategies.decode_defaults(PODS, {"metadata": {}, "spec": template.setdefault("spec", {})})


def prepare_create(rt: ResourceType, obj: JsonObj) -> None:
    """``PrepareForCreate``: a fresh status; a Job's generated selector; a DaemonSet's template generation."""
    obj["status"] = dict(_INITIAL_STATUS.get(rt.kind, {}))
    meta = obj["metadata"]
    if rt.kind == "DaemonSet":
        meta["annotations"] = {**(meta.get("annotations") or {}), DS_TEMPLATE_GENERATION: "1"}
    if rt.kind != "Job" or _spec(rt, obj).get("manualSelector") is True:
        return
    spec = _spec(rt, obj)
    template = _template(rt, spec)
    if template is None:
        template = spec["template"] = {}
    template_meta = template.get("metadata") or {}
    labels = dict(template_meta.get("labels") or {})
    for key in JOB_NAME_LABELS:
        labels.setdefault(key, meta["name"])
    for key in JOB_LABELS:
        labels.setdefault(key, meta["uid"])
    template["metadata"] = {**template_meta, "labels": labels}
    selector: JsonObj = spec["selector"] if isinstance(spec.get("selector"), dict) else {}
    match = dict(selector.get("matchLabels") or {})
    match.setdefault(JOB_LABELS[0], meta["uid"])
    spec["selector"] = {**selector, "matchLabels": match}


def prepare_update(rt: ResourceType, old: JsonObj, new: JsonObj) -> None:
    """A DaemonSet's template generation follows template changes (``PrepareForUpdate``)."""
    if rt.kind != "DaemonSet":
        return
    old_meta, meta = old["metadata"], new["metadata"]
    generation = (old_meta.get("annotations") or {}).get(DS_TEMPLATE_GENERATION)
    if generation is None:
        return
    if (old.get("spec") or {}).get("template") != _spec(rt, new).get("template") and generation.isdigit():
        generation = str(int(generation) + 1)
    meta["annotations"] = {**(meta.get("annotations") or {}), DS_TEMPLATE_GENERATION: generation}


def _non_negative(spec: Mapping[str, Any], keys: tuple[str, ...]) -> Causes:
    causes: Causes = []
    for key in keys:
        value = spec.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            causes.append(
                field_error(
                    "Invalid", f"spec.{key}", f"{_go_value(value)}: must be greater than or equal to 0"
                )
            )
    return causes


def _validate_selector(
    rt: ResourceType, spec: Mapping[str, Any], template: Mapping[str, Any] | None
) -> Causes:
    selector = spec.get("selector")
    if selector is None:
        return [field_error("Required", "spec.selector", "")]
    if not isinstance(selector, dict):
        return [field_error("Invalid", "spec.selector", f"{_go_value(selector)}: must be a label selector")]
    try:
        parsed = LabelSelector.from_object(selector)
    except StatusError as e:
        return [field_error("Invalid", "spec.selector", f"{_go_value(selector)}: {e.message}")]
    if parsed.empty:
        return [
            field_error(
                "Invalid",
                "spec.selector",
                f"{_go_value(selector)}: empty selector is invalid for {rt.singular}",
            )
        ]
    labels = ((template or {}).get("metadata") or {}).get("labels") or {}
    if not parsed.matches(labels):
        return [
            field_error(
                "Invalid",
                "spec.template.metadata.labels",
                f"{_go_value(labels)}: `selector` does not match template `labels`",
            )
        ]
    return []


def _validate_template(rt: ResourceType, template: Mapping[str, Any] | None) -> Causes:
    if template is None:
        return [field_error("Required", "spec.template", "")]
    pod = {"metadata": template.get("metadata") or {}, "spec": template.get("spec") or {}}
    causes = [
        {**c, "field": f"spec.template.{c['field']}", "message": c["message"]}
        for c in strategies.validate_create(PODS, pod)
    ]
    allowed = ("OnFailure", "Never") if rt.kind == "Job" else ("Always",)
    policy = pod["spec"].get("restartPolicy")
    if policy not in allowed:
        supported = ", ".join(f'"{p}"' for p in allowed)
        causes.append(
            field_error(
                "NotSupported",
                "spec.template.spec.restartPolicy",
                f'"{policy}": supported values: {supported}',
            )
        )
    return causes


def _fixed_statefulset_fields(spec: Mapping[str, Any]) -> JsonObj:
    return {k: v for k, v in spec.items() if k not in (*STATEFULSET_UPDATABLE, "selector")}


def validate(rt: ResourceType, obj: JsonObj, old: JsonObj | None) -> Causes:
    """``Validate``/``ValidateUpdate`` of the kind (selector, template, counts, immutable fields)."""
    spec = _spec(rt, obj)
    template = _template(rt, spec)
    causes = _non_negative(
        spec,
        ("replicas", "minReadySeconds", "revisionHistoryLimit", "parallelism", "completions", "backoffLimit"),
    )
    manual = spec.get("manualSelector") is True
    if rt.kind != "Job" or manual or spec.get("selector") is not None:
        causes.extend(_validate_selector(rt, spec, template))
    causes.extend(_validate_template(rt, template))
    if old is None:
        return causes
    old_spec = old.get("spec") or {}
    immutable: tuple[str, ...] = ("selector",)
    if rt.kind == "Job":
        immutable = ("selector", "template", "completionMode")
    for key in immutable:
        if spec.get(key) != old_spec.get(key):
            causes.append(
                field_error("Invalid", f"spec.{key}", f"{_go_value(spec.get(key))}: field is immutable")
            )
    if rt.kind == "StatefulSet":
        if _fixed_statefulset_fields(spec) != _fixed_statefulset_fields(old_spec):
            causes.append(
                field_error(
                    "Forbidden",
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', "
                    "'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and "
                    "'minReadySeconds' are forbidden",
                )
            )
    return causes


__all__ = ["default_workload", "prepare_create", "prepare_update", "validate"]
