"""The ObjectMeta rules the simulated API server applies to writes (k8s-apis.md §6.2, §6.6-§6.8).

The server owns some metadata: a client cannot set it on CREATE, and an UPDATE keeps the stored
values whatever the body says. A body's name and namespace must agree with the request path; an
update must carry the stored resourceVersion (unless the kind allows unconditional updates) and
cannot change the UID; a DELETE may carry UID and resourceVersion preconditions. The messages are
kube-apiserver's own, since clients (kubectl, client-go) show them to people and some match on
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from hami.simulator.history import parse_resource_version
from hami.simulator.resources import ResourceType
from hami.simulator.statuses import bad_request, conflict, field_error, invalid, modified_conflict

JsonObj = dict[str, Any]

SERVER_SET_ON_CREATE: Final = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "resourceVersion",
    "generation",
    "selfLink",
)
"""Wiped from a CREATE body: the server sets them (or, for deletion fields, never on create)."""
KEPT_ON_UPDATE: Final = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)
"""Taken from the stored object on UPDATE, whatever the body says."""
_NOT_COMPARED: Final = ("resourceVersion", "managedFields")


def check_update_path(rt: ResourceType, meta: JsonObj, name: str, namespace: str | None) -> None:
    """Fill the body's name and namespace from the request path; 400 if the body names others."""
    body_name = meta.get("name") or ""
    if body_name and body_name != name:
        raise bad_request(f"the name of the object ({body_name}) does not match the name on the URL ({name})")
    meta["name"] = name
    if rt.namespaced:
        body_ns = meta.get("namespace") or ""
        if body_ns and body_ns != namespace:
            raise bad_request(
                f"the namespace of the object ({body_ns}) does not match the namespace on the request "
                f"({namespace})"
            )
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)


def carry_over(rt: ResourceType, name: str, old: JsonObj, new: JsonObj) -> None:
    """Check the update's optimistic lock and UID against ``old``, then copy the server-owned
    metadata of ``old`` into ``new`` (409 on a stale resourceVersion, 422 on a changed UID)."""
    meta = new["metadata"]
    old_meta = old["metadata"]
    body_rv = str(meta.get("resourceVersion") or "")
    if not body_rv:
        if not rt.unconditional_update:
            raise invalid(
                rt,
                name,
                [field_error("Invalid", "metadata.resourceVersion", "0: must be specified for an update")],
                details_kind=rt.plural,
                kind=rt.plural,
            )
    elif body_rv != old_meta["resourceVersion"]:
        parse_resource_version(body_rv)
        raise modified_conflict(rt, name)
    if meta.get("uid") and meta["uid"] != old_meta["uid"]:
        raise invalid(
            rt, name, [field_error("Invalid", "metadata.uid", f'"{meta["uid"]}": field is immutable')]
        )
    for key in KEPT_ON_UPDATE:
        if key in old_meta:
            meta[key] = old_meta[key]
        else:
            meta.pop(key, None)
    meta["resourceVersion"] = old_meta["resourceVersion"]


def check_delete_preconditions(
    rt: ResourceType, name: str, meta: Mapping[str, Any], preconditions: Mapping[str, Any]
) -> None:
    """409 unless the stored object (its ``meta``) still has the UID and resourceVersion asked for."""
    want_uid = preconditions.get("uid")
    if want_uid and want_uid != meta["uid"]:
        raise conflict(
            rt,
            name,
            f"the UID in the precondition ({want_uid}) does not match the UID in record "
            f"({meta['uid']}). "
            "The object might have been deleted and then recreated",
            qualified=rt.kind,
        )
    want_rv = preconditions.get("resourceVersion")
    if want_rv and want_rv != meta["resourceVersion"]:
        raise conflict(
            rt,
            name,
            f"the ResourceVersion in the precondition ({want_rv}) does not match the "
            "ResourceVersion in "
            f"record ({meta['resourceVersion']}). The object might have been modified",
            qualified=rt.kind,
        )


def same_object(old: JsonObj, new: JsonObj) -> bool:
    """Whether an update changes nothing but bookkeeping (such a no-op keeps the resourceVersion)."""
    if old.keys() != new.keys():
        return False
    for key in old:
        if key == "metadata":
            a = {k: v for k, v in old["metadata"].items() if k not in _NOT_COMPARED}
            b = {k: v for k, v in new["metadata"].items() if k not in _NOT_COMPARED}
            if a != b:
                return False
        elif old[key] != new[key]:
            return False
    return True
