"""Per-kind create/update rules, as kube-apiserver's registry strategies apply them (k8s-apis.md §6.2, §6.7).

Pure functions over JSON dicts. ``decode_defaults`` runs when a body is decoded (before admission),
``prepare_for_create``/``prepare_for_update`` after it, and ``validate_*`` return ``StatusCause`` lists.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from hami.simulator.resources import ResourceType
from hami.simulator.selectors import label_key_problem, label_value_problem
from hami.simulator.statuses import bad_request, field_error, invalid

JsonObj = dict[str, Any]

MICRO_TIME_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


def format_time(ts: float) -> str:
    """``metav1.Time``: RFC 3339, second precision, UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(ts: float) -> str:
    """``metav1.MicroTime``: always exactly six fractional digits."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _micro_time(rt: ResourceType, value: Any) -> Any:
    """Validate a MicroTime like Go's parser (exactly six fractional digits) and render it in UTC."""
    if value is None:
        return None
    if not isinstance(value, str) or not _MICRO_TIME.match(value):
        raise bad_request(
            f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: parsing time {value!r} '
            f'as "{MICRO_TIME_LAYOUT}": cannot parse as MicroTime (exactly six fractional digits required)'
        )
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _normalize_micro_times(rt: ResourceType, holder: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(holder, dict):
        return
    for key in keys:
        if holder.get(key) is not None:
            holder[key] = _micro_time(rt, holder[key])


def name_problem(rt: ResourceType, name: str) -> str | None:
    if rt.name_rule == "label":
        if len(name) > 63:
            return "must be no more than 63 characters"
        return None if _DNS_LABEL.match(name) else LABEL_MSG
    if rt.name_rule == "path":
        if name in (".", ".."):
            return f"may not be '{name}'"
        if "/" in name or "%" in name:
            return "may not contain '/' or '%'"
        return None
    if len(name) > 253:
        return "must be no more than 253 characters"
    return None if _DNS_SUBDOMAIN.match(name) else SUBDOMAIN_MSG


def check_shape(rt: ResourceType, body: Any) -> JsonObj:
    """The body must be a JSON object with an object ``metadata`` and string-to-string maps."""
    if not isinstance(body, dict):
        raise bad_request(f"the body of the request is not a JSON object (expected a {rt.kind})")
    meta = body.setdefault("metadata", {})
    if meta is None:
        meta = body["metadata"] = {}
    if not isinstance(meta, dict):
        raise bad_request(
            f"json: cannot unmarshal into Go struct field {rt.kind}.metadata of type v1.ObjectMeta"
        )
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad_request(
                f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{key} "
                "of type map[string]string"
            )
    for key in ("finalizers",):
        value = meta.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise bad_request(
                f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{key} of type []string"
            )
    for key in ("spec", "status"):
        value = body.get(key)
        if value is not None and not isinstance(value, dict) and rt.kind not in ("Event",):
            raise bad_request(f"json: cannot unmarshal into Go struct field {rt.kind}.{key} of type object")
    return body


def decode_defaults(rt: ResourceType, obj: JsonObj) -> None:
    """Scheme defaulting and decode-time format checks (in place)."""
    obj["kind"] = rt.kind
    obj["apiVersion"] = rt.api_version
    if rt.store_key == "pods":
        _default_pod(obj)
    elif rt.store_key == "leases.coordination.k8s.io":
        _normalize_micro_times(rt, obj.get("spec"), ("acquireTime", "renewTime"))
    elif rt.store_key == "events":
        _normalize_micro_times(rt, obj, ("eventTime",))
        _normalize_micro_times(rt, obj.get("series"), ("lastObservedTime",))
    elif rt.store_key == "secrets":
        _fold_string_data(obj)
        if not obj.get("type"):
            obj["type"] = "Opaque"
    elif rt.store_key == "namespaces":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])


def _fold_string_data(obj: JsonObj) -> None:
    string_data = obj.pop("stringData", None)
    if not string_data:
        return
    if not isinstance(string_data, dict):
        raise bad_request(
            "json: cannot unmarshal into Go struct field Secret.stringData of type map[string]string"
        )
    data = obj.setdefault("data", {}) or {}
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    obj["data"] = data


def _default_container(container: JsonObj) -> None:
    image = str(container.get("image") or "")
    tail = image.rsplit("/", 1)[-1]
    untagged_or_latest = "@" not in tail and (":" not in tail or tail.endswith(":latest"))
    container.setdefault("imagePullPolicy", "Always" if untagged_or_latest else "IfNotPresent")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    resources = container.get("resources")
    if isinstance(resources, dict):
        limits = resources.get("limits") or {}
        if isinstance(limits, dict) and limits:
            requests = resources.setdefault("requests", {}) or {}
            for key, value in limits.items():
                requests.setdefault(key, value)
            resources["requests"] = requests
    else:
        container["resources"] = {}


def _default_pod(pod: JsonObj) -> None:
    spec = pod.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise bad_request("json: cannot unmarshal into Go struct field Pod.spec of type v1.PodSpec")
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    for key in ("containers", "initContainers"):
        containers = spec.get(key)
        if containers is None:
            continue
        if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
            raise bad_request(
                f"json: cannot unmarshal into Go struct field PodSpec.spec.{key} of type []v1.Container"
            )
        for container in containers:
            _default_container(container)


def _qos_class(pod: Mapping[str, Any]) -> str:
    containers = [
        *(pod.get("spec", {}).get("containers") or []),
        *(pod.get("spec", {}).get("initContainers") or []),
    ]
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        requests = res.get("requests") or {}
        limits = res.get("limits") or {}
        for name in ("cpu", "memory"):
            if name in requests or name in limits:
                any_set = True
            if name not in limits or requests.get(name, limits.get(name)) != limits.get(name):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def prepare_for_create(rt: ResourceType, obj: JsonObj) -> None:
    """Strategy ``PrepareForCreate``: server-owned status (in place)."""
    if rt.store_key == "pods":
        obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj)}
    elif rt.store_key == "namespaces":
        obj["status"] = {"phase": "Active"}
    elif rt.store_key == "nodes":
        obj.setdefault("spec", {})
        obj.setdefault("status", {})


def validate_metadata(rt: ResourceType, obj: Mapping[str, Any]) -> list[JsonObj]:
    meta = obj.get("metadata") or {}
    causes: list[JsonObj] = []
    name = str(meta.get("name") or "")
    problem = name_problem(rt, name) if name else None
    if problem:
        causes.append(field_error("Invalid", "metadata.name", f'"{name}": {problem}'))
    for key, value in (meta.get("labels") or {}).items():
        key_problem = label_key_problem(key)
        if key_problem:
            causes.append(field_error("Invalid", "metadata.labels", f'"{key}": {key_problem}'))
        value_problem = label_value_problem(value)
        if value_problem:
            causes.append(field_error("Invalid", "metadata.labels", f'"{value}": {value_problem}'))
    for key in meta.get("annotations") or {}:
        key_problem = label_key_problem(key)
        if key_problem:
            causes.append(field_error("Invalid", "metadata.annotations", f'"{key}": {key_problem}'))
    return causes


def validate_create(rt: ResourceType, obj: Mapping[str, Any]) -> list[JsonObj]:
    causes = validate_metadata(rt, obj)
    if rt.store_key == "pods":
        causes.extend(_validate_pod_spec(obj))
    return causes


def _validate_pod_spec(pod: Mapping[str, Any]) -> list[JsonObj]:
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    causes: list[JsonObj] = []
    if not containers:
        causes.append(field_error("Required", "spec.containers", ""))
    seen: set[str] = set()
    for i, c in enumerate([*containers, *(spec.get("initContainers") or [])]):
        where = (
            f"spec.containers[{i}]" if i < len(containers) else f"spec.initContainers[{i - len(containers)}]"
        )
        name = c.get("name")
        if not name:
            causes.append(field_error("Required", f"{where}.name", ""))
        elif name in seen:
            causes.append(field_error("Duplicate", f"{where}.name", f'"{name}"'))
        else:
            seen.add(str(name))
        if not c.get("image"):
            causes.append(field_error("Required", f"{where}.image", ""))
    return causes


_POD_MUTABLE_MSG = (
    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,"
    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)


def _pod_spec_without_mutable(spec: Mapping[str, Any]) -> JsonObj:
    masked = dict(spec)
    for key in ("containers", "initContainers"):
        if isinstance(masked.get(key), list):
            masked[key] = [
                {k: v for k, v in c.items() if k != "image"} for c in masked[key] if isinstance(c, dict)
            ]
    masked.pop("activeDeadlineSeconds", None)
    masked.pop("tolerations", None)
    masked.pop("schedulingGates", None)
    return masked


def validate_update(rt: ResourceType, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[JsonObj]:
    causes = validate_metadata(rt, new)
    old_meta = old.get("metadata") or {}
    new_meta = new.get("metadata") or {}
    if old_meta.get("deletionTimestamp"):
        added = [f for f in new_meta.get("finalizers") or [] if f not in (old_meta.get("finalizers") or [])]
        if added:
            quoted = ", ".join(f'"{f}"' for f in added)
            causes.append(
                field_error(
                    "Forbidden",
                    "metadata.finalizers",
                    f"no new finalizers can be added if the object is being deleted, found new finalizers "
                    f"[]string{{{quoted}}}",
                )
            )
    if rt.store_key == "pods":
        old_spec = old.get("spec") or {}
        new_spec = new.get("spec") or {}
        old_tol = old_spec.get("tolerations") or []
        new_tol = new_spec.get("tolerations") or []
        gates_added = any(
            g not in (old_spec.get("schedulingGates") or []) for g in new_spec.get("schedulingGates") or []
        )
        if (
            _pod_spec_without_mutable(old_spec) != _pod_spec_without_mutable(new_spec)
            or any(t not in new_tol for t in old_tol)
            or gates_added
        ):
            causes.append(field_error("Forbidden", "spec", _POD_MUTABLE_MSG))
        causes.extend(c for c in _validate_pod_spec(new) if c["field"] != "spec")
    return causes


def deletion_grace_period(rt: ResourceType, obj: Mapping[str, Any], requested: int | None) -> int:
    """Pods: the requested or spec grace, but 0 when unbound or finished; negative → 1. Others: 0."""
    if rt.store_key != "pods":
        return 0
    spec = obj.get("spec") or {}
    grace = requested if requested is not None else int(spec.get("terminationGracePeriodSeconds") or 30)
    phase = (obj.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
        return 0
    return 1 if grace < 0 else grace


_SPEC_FREE_KEYS = ("metadata", "status", "kind", "apiVersion")


def spec_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether anything but metadata/status changed (the generation-bumping rule)."""
    keys = (set(old) | set(new)) - set(_SPEC_FREE_KEYS)
    return any(old.get(k) != new.get(k) for k in keys)


def apply_status_split(
    rt: ResourceType, old: Mapping[str, Any], new: JsonObj, subresource: str | None
) -> None:
    """Main-resource writes keep status; ``/status`` writes keep everything else (in place)."""
    if not rt.has_status:
        return
    if subresource != "status":
        if "status" in old:
            new["status"] = old["status"]
        else:
            new.pop("status", None)
        return
    for key in set(old) | set(new):
        if key in ("metadata", "status", "kind", "apiVersion"):
            continue
        if key in old:
            new[key] = old[key]
        else:
            new.pop(key, None)
    meta = new["metadata"]
    old_meta = old.get("metadata") or {}
    kept = (
        ("ownerReferences",)
        if rt.store_key in ("pods", "nodes")
        else ("labels", "annotations", "finalizers", "ownerReferences")
    )
    for key in kept:
        if key in old_meta:
            meta[key] = old_meta[key]
        else:
            meta.pop(key, None)


def raise_invalid_if(rt: ResourceType, name: str, causes: list[JsonObj]) -> None:
    if causes:
        raise invalid(rt, name, causes)


__all__ = [
    "apply_status_split",
    "check_shape",
    "decode_defaults",
    "deletion_grace_period",
    "format_micro_time",
    "format_time",
    "name_problem",
    "parse_time",
    "prepare_for_create",
    "raise_invalid_if",
    "spec_changed",
    "validate_create",
    "validate_update",
]
