"""``pods/binding``: the one way to set ``spec.nodeName`` of an existing pod (k8s-apis.md §6.10).

One atomic update: UID/RV preconditions, refusal when the pod is terminating, already bound or gated
(409 ``Operation cannot be fulfilled on pods/binding``), then ``spec.nodeName``, the Binding's
annotations and labels, condition ``PodScheduled=True`` and no ``status.nominatedNodeName``. The
generation is not bumped (the binding storage writes the pod directly, not through the strategy).
"""

from __future__ import annotations

from typing import Any

from hami.simulator.resources import PODS
from hami.simulator.statuses import bad_request, conflict, modified_conflict, not_found, plain_error
from hami.simulator.store import JsonObj, Store, clone
from hami.simulator.strategies import format_time


def bind_pod(store: Store, namespace: str, name: str, binding: Any) -> JsonObj:
    """``pods/binding``: set ``spec.nodeName`` once, atomically (k8s-apis.md §6.10)."""
    if not isinstance(binding, dict):
        raise bad_request("the body of the request is not a JSON object (expected a Binding)")
    meta = binding.get("metadata") or {}
    if not isinstance(meta, dict):
        raise bad_request(
            "json: cannot unmarshal into Go struct field Binding.metadata of type v1.ObjectMeta"
        )
    if meta.get("name") and meta["name"] != name:
        raise bad_request("name in URL does not match name in Binding object")
    target = binding.get("target") or {}
    if not isinstance(target, dict) or target.get("kind") not in (None, "", "Node") or not target.get("name"):
        raise plain_error(f'Binding "{name}" is invalid: target: Invalid value: target must be a named Node')
    old = store.try_get(PODS, namespace, name)
    if old is None:
        raise not_found(PODS, name)
    old_meta = old["metadata"]
    if meta.get("uid") and meta["uid"] != old_meta["uid"]:
        raise conflict(
            PODS,
            name,
            f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}",
        )
    if meta.get("resourceVersion") and meta["resourceVersion"] != old_meta["resourceVersion"]:
        raise modified_conflict(PODS, name)
    why = None
    spec = old.get("spec") or {}
    if old_meta.get("deletionTimestamp"):
        why = f"pod {name} is being deleted, cannot be assigned to a host"
    elif spec.get("nodeName"):
        why = f'pod {name} is already assigned to node "{spec["nodeName"]}"'
    elif spec.get("schedulingGates"):
        why = f"pod {name} has non-empty .spec.schedulingGates"
    if why:
        raise conflict(PODS, name, why, qualified="pods/binding")
    new: JsonObj = clone(old)
    new["spec"]["nodeName"] = target["name"]
    for src, dst in (("annotations", "annotations"), ("labels", "labels")):
        extra = meta.get(src)
        if isinstance(extra, dict) and extra:
            new["metadata"].setdefault(dst, {}).update({str(k): str(v) for k, v in extra.items()})
    status = new.setdefault("status", {})
    status.pop("nominatedNodeName", None)
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
    conditions.append(
        {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": format_time(store.now()),
        }
    )
    status["conditions"] = conditions
    return store.commit_update(PODS, old, new)
