"""The scheduler's mutating admission decision for pods (hami-scheduler-spec.md §3, §4.2, §9).

Pure: :class:`PodAdmission` takes an AdmissionReview ``request`` (or a bare pod dict) and returns an
:class:`AdmissionDecision`: allowed (with RFC 6902 JSON-Patch ops against the object as received),
denied (403) or errored (400/500). The HTTP envelope lives in :mod:`hami.scheduler.webhook`.

Rules, in order (HAMi v2.8.0 unless marked *fix* or *new*):

1. Only ``CREATE`` of a ``Pod`` is mutated; any other operation or kind is allowed untouched
   (the chart registers CREATE on pods only, so this only matters for a misconfigured webhook).
2. An undecodable object (not an object, ``spec.containers`` not a list, a container not an
   object, a resource value that is not a quantity) → errored 400 naming the field.
3. Label ``hami.io/webhook: ignore`` on the pod → allowed untouched (the chart's objectSelector
   already skips such pods; checked here too for webhooks registered without it).
4. No containers → denied ``pod has no containers``.
5. Scheduler-name gate. *Fix* of spec §14 item 1 (HAMi HEAD #1627 semantics): a pod naming the
   configured scheduler (``hami-scheduler``) **is** mutated; ``""`` is mutated; ``default-scheduler``
   is mutated only when ``force_overwrite_default_scheduler`` is true; any other name is allowed
   untouched with ``pod already has different scheduler assigned``. Truth table (pod name →
   mutated?): force=true: "" yes, default-scheduler yes, hami-scheduler yes, other no;
   force=false: "" yes, default-scheduler no, hami-scheduler yes, other no.
6. Each regular container (init containers are ignored, as in v2.8.0 and :mod:`hami.core.requests`)
   goes through every vendor hook (:class:`AdmissionVendor`); a container with
   ``securityContext.privileged: true`` is skipped (spec §14 item 2 is kept: HAMi does not manage
   privileged containers, which see every GPU anyway) and the response carries a warning naming it.
   A hook raising :class:`InvalidRequest` → errored 400; any other :class:`HamiError` → errored 500.
7. If some container asks for a HAMi resource and a scheduler name is configured,
   ``spec.schedulerName`` is set to it; a pod with ``spec.nodeName`` set is then denied
   ``pod has node assigned``.
8. *New* (issue 4): a request that can never be placed is denied with the reason: memory per
   device above every registered card of the allowed types, more devices per container than any
   node has, cores above every card's, ``gpumem-percentage`` above 100, or type/mode annotations no
   registered device matches. The capacity comes from the scheduler's cache as a
   :class:`~hami.core.cluster_capacity.ClusterCapacity` (see
   :func:`~hami.core.cluster_capacity.capacity_of`); ``None`` (cache not synced) or a capacity
   without devices of the pod's vendor rejects nothing, since device plugins may simply not have
   registered yet. The bounds over-approximate (MIG GPUs count their largest instance count and
   memory), so a placeable pod is never rejected. A malformed request (``gpumem: 4Gi`` overflowing
   int32) is errored 400 with the field.

NVIDIA's hook (:class:`NvidiaAdmission`) is HAMi's MutateAdmission step by step. One deliberate
difference: env vars it adds replace an entry of the same name instead of appending a duplicate
(the effective value is the same, and a re-invoked webhook stays idempotent).

Seam for the DRA translation mode (k8s-apis.md §4.2, ``hami.scheduler.dra_admission``): the
webhook handler depends only on the :class:`PodAdmitter` Protocol. A decision stays pure data: the
objects the patched pod needs (ResourceClaimTemplates) ride in
:attr:`AdmissionDecision.prerequisites`, and the handler creates them before answering.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from hami.core import keys
from hami.core.cluster_capacity import MAX_CORES, ClusterCapacity, impossibility
from hami.core.deviceconfig import DeviceConfig, NvidiaConfig
from hami.core.errors import HamiError, InvalidRequest
from hami.core.quantity import QuantityError, parse_quantity
from hami.core.requests import (
    RequestReader,
    container_resources,
    pod_request,
    webhook_sets_exclusive_cores,
)

DEFAULT_SCHEDULER: Final = "default-scheduler"
MSG_NO_CONTAINERS: Final = "pod has no containers"
MSG_NODE_ASSIGNED: Final = "pod has node assigned"
MSG_OTHER_SCHEDULER: Final = "pod already has different scheduler assigned"
ENV_TASK_PRIORITY: Final = "CUDA_TASK_PRIORITY"
ENV_CORE_POLICY: Final = "GPU_CORE_UTILIZATION_POLICY"
ENV_VISIBLE_DEVICES: Final = "NVIDIA_VISIBLE_DEVICES"
MAX_DEPTH: Final = 100  # a pod is never this deep; bounds recursion on hostile input

JsonObject = dict[str, object]
PatchOp = Mapping[str, object]


# --------------------------------------------------------------------------------------- decision


class Outcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    ERRORED = "errored"


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionDecision:
    """What to answer. ``code`` is the ``status.code`` (200, 403, 400 or 500); ``patch`` the
    JSON-Patch ops (empty: no patch); ``mutated`` the object after the patch (None if unchanged);
    ``prerequisites`` the API objects (full manifests) that must exist before the patched pod is
    admitted: the webhook handler creates them (an existing one is fine), except on a dry run."""

    outcome: Outcome
    code: int
    message: str = ""
    patch: tuple[PatchOp, ...] = ()
    mutated: Mapping[str, object] | None = None
    warnings: tuple[str, ...] = ()
    prerequisites: tuple[Mapping[str, object], ...] = ()

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOWED

    @classmethod
    def allow(
        cls,
        message: str = "",
        *,
        patch: Sequence[PatchOp] = (),
        mutated: Mapping[str, object] | None = None,
        warnings: Sequence[str] = (),
        prerequisites: Sequence[Mapping[str, object]] = (),
    ) -> AdmissionDecision:
        return cls(
            outcome=Outcome.ALLOWED,
            code=200,
            message=message,
            patch=tuple(patch),
            mutated=mutated if patch else None,
            warnings=tuple(warnings),
            prerequisites=tuple(prerequisites),
        )

    @classmethod
    def deny(cls, message: str, *, warnings: Sequence[str] = ()) -> AdmissionDecision:
        return cls(outcome=Outcome.DENIED, code=403, message=message, warnings=tuple(warnings))

    @classmethod
    def error(cls, code: int, message: str) -> AdmissionDecision:
        return cls(outcome=Outcome.ERRORED, code=code, message=message)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionOptions:
    """Scheduler flags the webhook reads (spec §1.1)."""

    scheduler_name: str = keys.DEFAULT_SCHEDULER_NAME
    """``--scheduler-name``: written into ``spec.schedulerName``; "" leaves it alone."""
    force_overwrite_default_scheduler: bool = True
    """``--force-overwrite-default-scheduler``: take over pods naming ``default-scheduler``."""
    reject_impossible: bool = True
    """Deny requests no registered device can ever satisfy (rule 8)."""


# --------------------------------------------------------------------------------------- raw JSON


def _thaw(value: object, where: str, depth: int = 0) -> object:
    """A private, mutable copy of JSON-shaped data (dicts/lists), bounded in depth."""
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        return {str(k): _thaw(v, where, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v, where, depth + 1) for v in value]
    return value


def _obj(parent: JsonObject, key: str, where: str, *, create: bool) -> JsonObject | None:
    value = parent.get(key)
    if value is None:
        if not create:
            return None
        value = parent[key] = {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}.{key}: expected an object, got {type(value).__name__}")
    return value


def _set_env(container: JsonObject, name: str, value: str, where: str) -> None:
    env = container.get("env")
    if env is None:
        env = container["env"] = []
    if not isinstance(env, list):
        raise InvalidRequest(f"{where}.env: expected a list, got {type(env).__name__}")
    entry: JsonObject = {"name": name, "value": value}
    for i, item in enumerate(env):
        if isinstance(item, dict) and item.get("name") == name:
            env[i] = entry
            return
    env.append(entry)


def _quantity_ceil(raw: object, where: str) -> int:
    """Go ``Quantity.Value()``: the value rounded up to an integer."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise InvalidRequest(f"{where}: expected a quantity, got {type(raw).__name__}")
    try:
        return math.ceil(parse_quantity(raw if isinstance(raw, str | int) else repr(raw)))
    except QuantityError as e:
        raise InvalidRequest(f"{where}: {e}") from None


# --------------------------------------------------------------------------------------- vendor hooks


class AdmissionVendor(Protocol):
    """One vendor's webhook mutation (HAMi ``MutateAdmission``)."""

    @property
    def name(self) -> str: ...

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        """Mutate ``container`` (an element of ``pod.spec.containers``) and, if needed, ``pod`` in
        place; return whether the container asks for this vendor's devices. Raise
        :class:`InvalidRequest` for a malformed request, another :class:`HamiError` otherwise."""
        ...


@dataclass(frozen=True, slots=True)
class NvidiaAdmission:
    """NVIDIA MutateAdmission (spec §3, "NVIDIA MutateAdmission per container")."""

    config: NvidiaConfig

    @property
    def name(self) -> str:
        return "NVIDIA"

    def mutate_container(self, container: JsonObject, pod: JsonObject) -> bool:
        cfg = self.config
        index = _container_index(pod, container)
        where = f"spec.containers[{index}]"
        resources = _obj(container, "resources", where, create=False)
        limits = (
            _obj(resources, "limits", f"{where}.resources", create=False) if resources is not None else None
        ) or {}
        # 1. priority → env
        if cfg.resource_priority_name and cfg.resource_priority_name in limits:
            value = _quantity_ceil(
                limits[cfg.resource_priority_name],
                f"{where}.resources.limits[{cfg.resource_priority_name!r}]",
            )
            _set_env(container, ENV_TASK_PRIORITY, str(value), where)
        # 2. core utilisation policy → env (every container, as HAMi)
        if cfg.gpu_core_policy not in ("", "default"):
            _set_env(container, ENV_CORE_POLICY, cfg.gpu_core_policy, where)
        # 3. count defaulting (limits only)
        found = cfg.resource_count_name in limits
        if not found and cfg.default_gpu_num > 0:
            shares = (cfg.resource_core_name, cfg.resource_memory_name, cfg.resource_memory_percentage_name)
            if any(name and name in limits for name in shares):
                writable = _writable_limits(container, where)
                writable[cfg.resource_count_name] = str(cfg.default_gpu_num)
                found = True
        # 4. exclusive-core defaulting
        if webhook_sets_exclusive_cores(container_resources(container, where), cfg):
            _writable_limits(container, where)[cfg.resource_core_name] = str(MAX_CORES)
            found = True
        # 5. runtime class
        spec = _obj(pod, "spec", "pod", create=True)
        assert spec is not None
        if found and not spec.get("runtimeClassName") and cfg.runtime_class_name:
            spec["runtimeClassName"] = cfg.runtime_class_name
        # 6. hide GPUs from containers that asked for none
        if not found and cfg.overwrite_env:
            _set_env(container, ENV_VISIBLE_DEVICES, "none", where)
        return found


def _writable_limits(container: JsonObject, where: str) -> JsonObject:
    resources = _obj(container, "resources", where, create=True)
    assert resources is not None
    limits = _obj(resources, "limits", f"{where}.resources", create=True)
    assert limits is not None
    return limits


def _container_index(pod: JsonObject, container: JsonObject) -> int:
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if isinstance(containers, list):
        for i, c in enumerate(containers):
            if c is container:
                return i
    return -1


def default_vendors(config: DeviceConfig | NvidiaConfig) -> tuple[AdmissionVendor, ...]:
    """The hooks of the vendors implemented so far (NVIDIA; the vendors task adds the others)."""
    nvidia = config.nvidia if isinstance(config, DeviceConfig) else config
    return (NvidiaAdmission(nvidia),)


# --------------------------------------------------------------------------------------- JSON patch


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _same(a: object, b: object) -> bool:
    # JSON equality: True != 1 and 1 == 1.0 only as numbers of the same JSON type.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def json_patch(old: object, new: object, path: str = "") -> list[PatchOp]:
    """RFC 6902 ops turning ``old`` into ``new``: maps key by key, lists element-wise when one is a
    prefix-preserving extension or of equal length, whole values otherwise."""
    ops: list[PatchOp] = []
    _diff(old, new, path, ops)
    return ops


def _diff(old: object, new: object, path: str, ops: list[PatchOp]) -> None:
    if _same(old, new):
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
            else:
                _diff(old[key], new[key], f"{path}/{_escape(key)}", ops)
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": f"{path}/{_escape(key)}", "value": value})
        return
    if isinstance(old, list) and isinstance(new, list) and len(new) >= len(old) and path:
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            _diff(a, b, f"{path}/{i}", ops)
        for i in range(len(old), len(new)):
            ops.append({"op": "add", "path": f"{path}/{i}", "value": new[i]})
        return
    ops.append({"op": "replace", "path": path, "value": new})


# --------------------------------------------------------------------------------------- admission


class PodAdmitter(Protocol):
    """What the webhook handler needs: an AdmissionReview request in, a decision out."""

    def review_request(
        self, request: Mapping[str, object], *, capacity: ClusterCapacity | None = None
    ) -> AdmissionDecision: ...


def screen_request(request: Mapping[str, object]) -> AdmissionDecision | Mapping[str, object]:
    """Rules 1-2 on an AdmissionReview ``request``: the pod to review, or the decision to answer
    at once (another operation or kind: allowed untouched; no object: errored 400)."""
    operation = request.get("operation")
    if operation is not None and operation != "CREATE":
        return AdmissionDecision.allow(f"operation {str(operation)[:32]} is not mutated")
    kind = request.get("kind")
    if isinstance(kind, Mapping):
        group, name = kind.get("group", ""), kind.get("kind")
        if name is not None and (name != "Pod" or group not in ("", None)):
            return AdmissionDecision.allow(f"kind {str(name)[:64]} is not mutated")
    obj = request.get("object")
    if not isinstance(obj, Mapping):
        what = "missing" if obj is None else f"a {type(obj).__name__}"
        return AdmissionDecision.error(400, f"request.object: expected a Pod object, got {what}")
    return obj


class PodAdmission:
    """HAMi's pod webhook (rules in the module docstring); one per scheduler process."""

    __slots__ = ("_readers", "_vendors", "config", "options")

    def __init__(
        self,
        config: DeviceConfig | NvidiaConfig | None = None,
        options: AdmissionOptions | None = None,
        *,
        vendors: Sequence[AdmissionVendor] | None = None,
        readers: Sequence[RequestReader] = (),
    ) -> None:
        if config is None:
            config = NvidiaConfig()
        self.config: NvidiaConfig = config.nvidia if isinstance(config, DeviceConfig) else config
        self.options = options if options is not None else AdmissionOptions()
        self._vendors = tuple(vendors) if vendors is not None else default_vendors(self.config)
        self._readers = tuple(readers)

    def review_request(
        self, request: Mapping[str, object], *, capacity: ClusterCapacity | None = None
    ) -> AdmissionDecision:
        """Rule 1-2 on the AdmissionReview ``request``, then :meth:`review` of its object."""
        screened = screen_request(request)
        if isinstance(screened, AdmissionDecision):
            return screened
        return self.review(screened, capacity=capacity)

    def review(
        self, pod: Mapping[str, object], *, capacity: ClusterCapacity | None = None
    ) -> AdmissionDecision:
        """Rules 2-8 on a pod as received (``request.object``)."""
        try:
            return self._review(pod, capacity)
        except InvalidRequest as e:
            return AdmissionDecision.error(400, str(e))
        except HamiError as e:
            return AdmissionDecision.error(500, str(e))

    def _review(self, raw: Mapping[str, object], capacity: ClusterCapacity | None) -> AdmissionDecision:
        original = _thaw(raw, "request.object")
        assert isinstance(original, dict)
        pod = _thaw(original, "request.object")
        assert isinstance(pod, dict)
        metadata = _obj(pod, "metadata", "request.object", create=False) or {}
        labels = _obj(metadata, "labels", "metadata", create=False) or {}
        if labels.get(keys.WEBHOOK_IGNORE) == keys.WEBHOOK_IGNORE_VALUE:
            return AdmissionDecision.allow(f"pod has label {keys.WEBHOOK_IGNORE}={keys.WEBHOOK_IGNORE_VALUE}")
        spec = _obj(pod, "spec", "request.object", create=False) or {}
        containers = spec.get("containers")
        if containers is not None and not isinstance(containers, list):
            raise InvalidRequest(f"spec.containers: expected a list, got {type(containers).__name__}")
        if not containers:
            return AdmissionDecision.deny(MSG_NO_CONTAINERS)
        for i, c in enumerate(containers):
            if not isinstance(c, dict):
                raise InvalidRequest(f"spec.containers[{i}]: expected an object, got {type(c).__name__}")
        if not self._takes(spec.get("schedulerName")):
            return AdmissionDecision.allow(MSG_OTHER_SCHEDULER)

        warnings: list[str] = []
        privileged: set[int] = set()
        found = False
        for i, container in enumerate(containers):
            security = _obj(container, "securityContext", f"spec.containers[{i}]", create=False) or {}
            if security.get("privileged") is True:
                privileged.add(i)
                warnings.append(
                    f"container {container.get('name')!r} is privileged: HAMi does not manage its devices"
                )
                continue
            for vendor in self._vendors:
                found |= vendor.mutate_container(container, pod)

        if found and self.options.scheduler_name:
            # spec exists: the pod has containers
            spec["schedulerName"] = self.options.scheduler_name
            if spec.get("nodeName"):
                return AdmissionDecision.deny(MSG_NODE_ASSIGNED, warnings=warnings)
        if found and self.options.reject_impossible:
            reason = self._impossible(pod, privileged, capacity, warnings)
            if reason is not None:
                return AdmissionDecision.deny(reason, warnings=warnings)
        return AdmissionDecision.allow(patch=json_patch(original, pod), mutated=pod, warnings=warnings)

    def _takes(self, name: object) -> bool:
        """Rule 5, the scheduler-name gate (spec §14 item 1 fixed)."""
        if name is None or name == "":
            return True
        if self.options.scheduler_name and name == self.options.scheduler_name:
            return True
        return name == DEFAULT_SCHEDULER and self.options.force_overwrite_default_scheduler

    def _impossible(
        self,
        pod: JsonObject,
        privileged: set[int],
        capacity: ClusterCapacity | None,
        warnings: list[str],
    ) -> str | None:
        request = pod_request(pod, self.config, readers=self._readers)
        warnings.extend(request.warnings)
        for container in request.containers:
            if container.index in privileged:
                continue
            for vendor, device_request in container.devices.items():
                reason = impossibility(
                    container.name, vendor, device_request, request.selectors_for(vendor), capacity
                )
                if reason is not None:
                    return reason
        return None
