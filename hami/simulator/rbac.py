"""rbac.authorization.k8s.io/v1 objects as kube-apiserver stores them: defaults and validation.

Roles and bindings are stored and served, never enforced: this API server has no authorization (every
client is ``system:admin``), so the RBAC a chart installs is checked for shape only. Defaults:
``roleRef.apiGroup`` and a subject's ``apiGroup`` (``rbac.authorization.k8s.io`` for users and groups,
``""`` for service accounts). Validation follows ``ValidatePolicyRule`` and the binding rules: verbs
required, resource rules need API groups and resources, namespaced rules cannot name non-resource
URLs, a binding's ``roleRef`` is required, well-formed and immutable, subjects are well-formed.
Aggregated ClusterRoles are stored as written: aggregation is a controller's work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from hami.simulator.resources import ResourceType
from hami.simulator.statuses import field_error

JsonObj = dict[str, Any]
Causes = list[JsonObj]

GROUP = "rbac.authorization.k8s.io"
SUBJECT_KINDS = ("ServiceAccount", "User", "Group")


def _go(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    return value if isinstance(value, list) else []


def default_rbac(rt: ResourceType, obj: JsonObj) -> None:
    """``SetDefaults_RoleBinding``/``ClusterRoleBinding``/``Subject`` (in place)."""
    if not rt.kind.endswith("Binding"):
        return
    role_ref = obj.get("roleRef")
    if isinstance(role_ref, dict) and not role_ref.get("apiGroup"):
        role_ref["apiGroup"] = GROUP
    for subject in _list(obj, "subjects"):
        if (
            isinstance(subject, dict)
            and not subject.get("apiGroup")
            and subject.get("kind") in ("User", "Group")
        ):
            subject["apiGroup"] = GROUP


def _validate_rules(rules: list[Any], namespaced: bool) -> Causes:
    causes: Causes = []
    for i, rule in enumerate(rules):
        where = f"rules[{i}]"
        if not isinstance(rule, dict):
            causes.append(field_error("Invalid", where, f"{_go(rule)}: must be a policy rule"))
            continue
        if not _list(rule, "verbs"):
            causes.append(field_error("Required", f"{where}.verbs", "verbs must contain at least one value"))
        urls = _list(rule, "nonResourceURLs")
        if urls:
            if namespaced:
                causes.append(
                    field_error(
                        "Invalid",
                        f"{where}.nonResourceURLs",
                        f"{_go(urls)}: namespaced rules cannot apply to non-resource URLs",
                    )
                )
            if _list(rule, "apiGroups") or _list(rule, "resources") or _list(rule, "resourceNames"):
                causes.append(
                    field_error(
                        "Invalid",
                        f"{where}.nonResourceURLs",
                        f"{_go(urls)}: rules cannot apply to both regular resources and non-resource URLs",
                    )
                )
            continue
        if not _list(rule, "apiGroups"):
            causes.append(
                field_error(
                    "Required", f"{where}.apiGroups", "resource rules must supply at least one api group"
                )
            )
        if not _list(rule, "resources"):
            causes.append(
                field_error(
                    "Required", f"{where}.resources", "resource rules must supply at least one resource"
                )
            )
    return causes


def _validate_binding(rt: ResourceType, obj: Mapping[str, Any]) -> Causes:
    causes: Causes = []
    role_ref = obj.get("roleRef")
    if not isinstance(role_ref, dict):
        return [field_error("Required", "roleRef", "")]
    kinds = ("Role", "ClusterRole") if rt.namespaced else ("ClusterRole",)
    if role_ref.get("kind") not in kinds:
        supported = ", ".join(f'"{k}"' for k in kinds)
        causes.append(
            field_error(
                "NotSupported", "roleRef.kind", f'"{role_ref.get("kind", "")}": supported values: {supported}'
            )
        )
    if role_ref.get("apiGroup") != GROUP:
        causes.append(
            field_error(
                "NotSupported",
                "roleRef.apiGroup",
                f'"{role_ref.get("apiGroup", "")}": supported values: "{GROUP}"',
            )
        )
    if not role_ref.get("name"):
        causes.append(field_error("Required", "roleRef.name", ""))
    for i, subject in enumerate(_list(obj, "subjects")):
        where = f"subjects[{i}]"
        if not isinstance(subject, dict):
            causes.append(field_error("Invalid", where, f"{_go(subject)}: must be a subject"))
            continue
        kind = subject.get("kind")
        if not subject.get("name"):
            causes.append(field_error("Required", f"{where}.name", ""))
        if kind not in SUBJECT_KINDS:
            causes.append(
                field_error(
                    "NotSupported",
                    f"{where}.kind",
                    f'"{kind or ""}": supported values: "ServiceAccount", "User", "Group"',
                )
            )
        elif kind == "ServiceAccount":
            if subject.get("apiGroup"):
                causes.append(
                    field_error(
                        "NotSupported", f"{where}.apiGroup", f'"{subject["apiGroup"]}": supported values: ""'
                    )
                )
            if not rt.namespaced and not subject.get("namespace"):
                causes.append(field_error("Required", f"{where}.namespace", ""))
        elif subject.get("apiGroup") != GROUP:
            causes.append(
                field_error(
                    "NotSupported",
                    f"{where}.apiGroup",
                    f'"{subject.get("apiGroup", "")}": supported values: "{GROUP}"',
                )
            )
    return causes


def validate(rt: ResourceType, obj: JsonObj, old: JsonObj | None) -> Causes:
    if not rt.kind.endswith("Binding"):
        return _validate_rules(_list(obj, "rules"), rt.namespaced)
    causes = _validate_binding(rt, obj)
    if old is not None and old.get("roleRef") != obj.get("roleRef"):
        causes.append(field_error("Invalid", "roleRef", f"{_go(obj.get('roleRef'))}: cannot change roleRef"))
    return causes


__all__ = ["default_rbac", "validate"]
