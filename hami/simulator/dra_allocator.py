"""DRA allocation for the fake kube-scheduler (its DynamicResources plugin, simplified).

:func:`allocate_claim` is pure: given a claim, a node, the published devices and what is
already consumed, it returns ``status.allocation`` or raises :class:`Unallocatable` with the
reason. :class:`~hami.simulator.dra_scheduling.DraScheduling` wraps it for the scheduler.

Semantics kept (§3.4-§3.7): only slices of a pool's highest generation count; a device without
``allowMultipleAllocations`` is allocated at most once; a device with it is shared by consumable
capacity (KEP-5075): per capacity, a request's amount (or the policy default, or the whole value
when the request omits it and there is no policy) is raised to ``validRange.min``, rounded up to
``min + n*step`` or to the next ``validValues`` entry, refused above ``max``, and the sum over all
shares never exceeds ``value``; every allocation of such a device gets a ``shareID`` and its
``consumedCapacity``. Selectors (class and request) are CEL (:mod:`hami.simulator.dra_cel`).
``allocationMode: All``, ``firstAvailable`` (first sub-request that fits) and ``matchAttribute``
constraints are supported; a device is used once per claim. Not simulated: admin access, device
taints and tolerations, binding conditions, partitionable counters, ``distinctAttribute``,
``cel.bind``. Devices are tried in slice order (first fit), as upstream does.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

from hami.core.quantity import QuantityError, format_quantity, parse_quantity
from hami.simulator.dra_cel import CelSelectors as CelSelectors  # re-exported: allocate_claim takes one
from hami.simulator.dra_cel import cel_device as cel_device  # re-exported
from hami.simulator.dra_cel import qualified_name

logger = logging.getLogger(__name__)

JsonObj = dict[str, Any]
RESOURCE_API: Final = "/apis/resource.k8s.io/v1"
DELETE_PROTECTION: Final = "resource.kubernetes.io/delete-protection"


class Unallocatable(Exception):
    """The claim cannot be allocated on that node; the message says why (scheduler reason)."""


# --------------------------------------------------------------------------------------- inventory


@dataclass(frozen=True, slots=True)
class DeviceRef:
    driver: str
    pool: str
    device: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceDevice:
    ref: DeviceRef
    raw: Mapping[str, Any]
    multi: bool
    capacity: Mapping[str, Fraction]  # qualified-as-written name → total

    def attribute(self, qualified: str) -> Any:
        """Value of a fully-qualified attribute (``<domain>/<name>``), or None."""
        attrs = self.raw.get("attributes") or {}
        domain, ident = qualified_name(self.ref.driver, qualified)
        for name, value in attrs.items():
            if qualified_name(self.ref.driver, name) == (domain, ident):
                return next(iter(value.values()), None) if isinstance(value, Mapping) else None
        return None


def _q(value: Any) -> Fraction:
    return parse_quantity(value if isinstance(value, int) else str(value))


def node_devices(slices: Iterable[Mapping[str, Any]], node: str) -> list[SliceDevice]:
    """Devices usable on ``node``: its own slices and ``allNodes`` ones, highest pool generation only."""
    latest: dict[tuple[str, str], int] = {}
    for s in slices:
        spec = s.get("spec") or {}
        pool = spec.get("pool") or {}
        key = (str(spec.get("driver", "")), str(pool.get("name", "")))
        latest[key] = max(latest.get(key, 0), int(pool.get("generation") or 0))
    out: list[SliceDevice] = []
    for s in sorted(slices, key=lambda s: str((s.get("metadata") or {}).get("name", ""))):
        spec = s.get("spec") or {}
        pool = spec.get("pool") or {}
        driver, pool_name = str(spec.get("driver", "")), str(pool.get("name", ""))
        if int(pool.get("generation") or 0) != latest[(driver, pool_name)]:
            continue
        if spec.get("nodeName") != node and not spec.get("allNodes"):
            continue
        for device in spec.get("devices") or []:
            try:
                capacity = {str(k): _q(v.get("value", 0)) for k, v in (device.get("capacity") or {}).items()}
            except (QuantityError, AttributeError) as e:
                logger.warning(
                    "ignoring device %s of slice %s: bad capacity (%s)", device.get("name"), pool_name, e
                )
                continue
            out.append(
                SliceDevice(
                    ref=DeviceRef(driver, pool_name, str(device.get("name", ""))),
                    raw=device,
                    multi=bool(device.get("allowMultipleAllocations")),
                    capacity=capacity,
                )
            )
    return out


@dataclass(slots=True)
class Usage:
    """What allocated claims hold: exclusive devices and consumed capacity of shared ones."""

    exclusive: set[DeviceRef] = field(default_factory=set)
    consumed: dict[DeviceRef, dict[str, Fraction]] = field(default_factory=dict)

    def add_allocation(self, allocation: Mapping[str, Any]) -> None:
        for result in (allocation.get("devices") or {}).get("results") or []:
            ref = DeviceRef(str(result.get("driver")), str(result.get("pool")), str(result.get("device")))
            consumed = result.get("consumedCapacity")
            if result.get("shareID") is None and not consumed:
                self.exclusive.add(ref)
                continue
            held = self.consumed.setdefault(ref, {})
            for name, value in (consumed or {}).items():
                held[name] = held.get(name, Fraction(0)) + _q(value)


def usage_of(allocations: Iterable[Mapping[str, Any]]) -> Usage:
    usage = Usage()
    for allocation in allocations:
        usage.add_allocation(allocation)
    return usage


# --------------------------------------------------------------------------------------- allocation


def consumed_amount(device: SliceDevice, name: str, requested: Fraction | None) -> Fraction | None:
    """What a request takes of one capacity under its policy; None: the device cannot serve it."""
    total = device.capacity[name]
    policy = (device.raw.get("capacity") or {}).get(name, {}).get("requestPolicy")
    if not policy:
        return total if requested is None else requested
    amount = requested if requested is not None else (_q(policy["default"]) if "default" in policy else total)
    values = policy.get("validValues")
    if values:
        options = sorted(_q(v) for v in values)
        bigger = [v for v in options if v >= amount]
        return bigger[0] if bigger else None
    rng = policy.get("validRange")
    if rng:
        low = _q(rng["min"])
        amount = max(amount, low)
        if "step" in rng:
            step = _q(rng["step"])
            steps = -((low - amount) // step)  # ceil((amount - low) / step)
            amount = low + steps * step
        if "max" in rng and amount > _q(rng["max"]):
            return None
    return amount


def _fit(device: SliceDevice, requests: Mapping[str, Fraction], usage: Usage) -> dict[str, Fraction] | None:
    """Consumed capacity if the device can take this share now (None otherwise)."""
    if device.ref in usage.exclusive:
        return None
    held = usage.consumed.get(device.ref, {})
    if not device.multi:
        return {} if not held else None
    if any(name not in device.capacity for name in requests):
        return None
    consumed: dict[str, Fraction] = {}
    for name, total in device.capacity.items():
        amount = consumed_amount(device, name, requests.get(name))
        if amount is None or held.get(name, Fraction(0)) + amount > total:
            return None
        consumed[name] = amount
    return consumed


@dataclass(frozen=True, slots=True, kw_only=True)
class _Request:
    name: str
    device_class: str
    selectors: tuple[str, ...]
    mode: str
    count: int
    capacity: Mapping[str, Fraction]


def _requests_of(raw: Mapping[str, Any]) -> list[list[_Request]]:
    """Each claim request as its alternatives (one for ``exactly``, several for ``firstAvailable``)."""
    out: list[list[_Request]] = []
    for request in ((raw.get("spec") or {}).get("devices") or {}).get("requests") or []:
        name = str(request.get("name", ""))
        bodies = (
            [(name, request["exactly"])]
            if "exactly" in request
            else [(f"{name}/{sub.get('name')}", sub) for sub in request.get("firstAvailable") or []]
        )
        alternatives = []
        for full, body in bodies:
            try:
                capacity = {
                    str(k): _q(v) for k, v in ((body.get("capacity") or {}).get("requests") or {}).items()
                }
            except QuantityError as e:
                raise Unallocatable(f"request {full}: bad capacity request ({e})") from None
            alternatives.append(
                _Request(
                    name=full,
                    device_class=str(body.get("deviceClassName", "")),
                    selectors=tuple(
                        str((s.get("cel") or {}).get("expression", "")) for s in body.get("selectors") or []
                    ),
                    mode=str(body.get("allocationMode") or "ExactCount"),
                    count=int(body.get("count") or 1),
                    capacity=capacity,
                )
            )
        if not alternatives:
            raise Unallocatable(f"request {name!r} has neither exactly nor firstAvailable")
        out.append(alternatives)
    return out


def _format(value: Fraction) -> str:
    for suffix, factor in (("Gi", 2**30), ("Mi", 2**20)):
        if value and value.denominator == 1 and value.numerator % factor == 0:
            return f"{value.numerator // factor}{suffix}"
    return format_quantity(value)


def allocate_claim(
    claim: Mapping[str, Any],
    node: str,
    devices: Sequence[SliceDevice],
    usage: Usage,
    classes: Mapping[str, Mapping[str, Any]],
    cel: CelSelectors,
    *,
    new_share_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> JsonObj:
    """``status.allocation`` for ``claim`` on ``node`` (``usage`` is not modified)."""
    scratch = Usage(exclusive=set(usage.exclusive), consumed={k: dict(v) for k, v in usage.consumed.items()})
    used_here: set[DeviceRef] = set()
    results: list[JsonObj] = []
    config: list[JsonObj] = []
    constraints = ((claim.get("spec") or {}).get("devices") or {}).get("constraints") or []
    picked: dict[str, list[SliceDevice]] = {}
    errors: list[str] = []
    for alternatives in _requests_of(claim):
        chosen: tuple[_Request, list[tuple[SliceDevice, dict[str, Fraction]]]] | None = None
        why: list[str] = []
        for request in alternatives:
            device_class = classes.get(request.device_class)
            if device_class is None:
                why.append(f"request {request.name}: device class {request.device_class!r} not found")
                continue
            class_selectors = tuple(
                str((s.get("cel") or {}).get("expression", ""))
                for s in (device_class.get("spec") or {}).get("selectors") or []
            )
            match = [
                c
                for c in constraints
                if request.name.split("/")[0] in (c.get("requests") or []) or not c.get("requests")
            ]
            eligible: list[SliceDevice] = []
            for device in devices:
                if device.ref in used_here:
                    continue
                try:
                    if all(
                        cel.matches(e, cel_device(device.ref.driver, device.raw))
                        for e in (*class_selectors, *request.selectors)
                    ):
                        eligible.append(device)
                except ValueError as e:
                    errors.append(str(e))
            taken: list[tuple[SliceDevice, dict[str, Fraction]]] = []
            # matchAttribute: try each group of equal values in turn (greedy within a group).
            for group in _groups(eligible, picked, match):
                taken = _take(request, group, scratch)
                if (request.mode == "All" and taken) or len(taken) >= request.count:
                    break
            if request.mode == "All" and not taken:
                why.append(f"request {request.name}: no matching device")
                continue
            if request.mode != "All" and len(taken) < request.count:
                why.append(f"request {request.name}: {len(taken)} of {request.count} devices available")
                continue
            chosen = (request, taken)
            for c in (device_class.get("spec") or {}).get("config") or []:
                config.append({"source": "FromClass", "requests": [request.name], **c})
            break
        if chosen is None:
            raise Unallocatable("; ".join(why + errors[:1]) or "no device matches")
        request, taken = chosen
        picked[request.name.split("/")[0]] = [t[0] for t in taken]
        for device, consumed in taken:
            used_here.add(device.ref)
            result = _result(request, device, consumed, new_share_id() if device.multi else None)
            results.append(result)
            scratch.add_allocation({"devices": {"results": [result]}})
    for c in (claim.get("spec") or {}).get("devices", {}).get("config") or []:
        config.append({"source": "FromClaim", **c})
    devices_out: JsonObj = {"results": results}
    if config:
        devices_out["config"] = config
    return {
        "devices": devices_out,
        "nodeSelector": {
            "nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
            ]
        },
    }


def _take(
    request: _Request, devices: Sequence[SliceDevice], usage: Usage
) -> list[tuple[SliceDevice, dict[str, Fraction]]]:
    """First fit of ``request`` among ``devices``, each device once."""
    local = Usage(exclusive=set(usage.exclusive), consumed={k: dict(v) for k, v in usage.consumed.items()})
    taken: list[tuple[SliceDevice, dict[str, Fraction]]] = []
    for device in devices:
        if request.mode != "All" and len(taken) >= request.count:
            break
        consumed = _fit(device, request.capacity, local)
        if consumed is None:
            continue
        taken.append((device, consumed))
        share = "-" if device.multi else None
        local.add_allocation({"devices": {"results": [_result(request, device, consumed, share)]}})
    return taken


def _groups(
    devices: Sequence[SliceDevice],
    picked: Mapping[str, Sequence[SliceDevice]],
    constraints: Sequence[Mapping[str, Any]],
) -> list[list[SliceDevice]]:
    """Candidate sets satisfying ``matchAttribute`` (one set of all devices without constraints)."""
    attributes = [str(c["matchAttribute"]) for c in constraints if c.get("matchAttribute")]
    if not attributes:
        return [list(devices)]
    groups: dict[tuple[Any, ...], list[SliceDevice]] = {}
    for device in devices:
        values = tuple(device.attribute(a) for a in attributes)
        if any(v is None for v in values):
            continue  # a device lacking the attribute cannot satisfy the constraint
        groups.setdefault(values, []).append(device)
    out: list[list[SliceDevice]] = []
    for values, group in groups.items():
        wanted = dict(zip(attributes, values, strict=True))
        agree = all(
            d.attribute(str(c["matchAttribute"])) == wanted[str(c["matchAttribute"])]
            for c in constraints
            if c.get("matchAttribute")
            for r in (c.get("requests") or list(picked))
            for d in picked.get(r, ())
        )
        if agree:
            out.append(group)
    return out


def _result(
    request: _Request, device: SliceDevice, consumed: Mapping[str, Fraction], share: str | None
) -> JsonObj:
    result: JsonObj = {
        "request": request.name,
        "driver": device.ref.driver,
        "pool": device.ref.pool,
        "device": device.ref.device,
    }
    if share is not None:
        result["shareID"] = share
        result["consumedCapacity"] = {k: _format(v) for k, v in consumed.items()}
    return result


def allocation_node(allocation: Mapping[str, Any]) -> str | None:
    """The node an allocation is pinned to (our own ``matchFields`` form), or None (any node)."""
    terms = (allocation.get("nodeSelector") or {}).get("nodeSelectorTerms") or []
    for term in terms:
        for field_req in term.get("matchFields") or []:
            if field_req.get("key") == "metadata.name" and field_req.get("operator") == "In":
                values = field_req.get("values") or []
                return str(values[0]) if values else None
    return None


def pod_claim_names(pod: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """``(pod claim name, ResourceClaim name or None while not yet created)`` per pod claim.

    A template-based entry whose status lists no claim is still waiting for the resourceclaim
    controller; a status entry with no ``resourceClaimName`` means no claim is needed.
    """
    statuses = {str(s.get("name")): s for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []}
    out: list[tuple[str, str | None]] = []
    for entry in (pod.get("spec") or {}).get("resourceClaims") or []:
        name = str(entry.get("name", ""))
        if entry.get("resourceClaimName"):
            out.append((name, str(entry["resourceClaimName"])))
        elif name in statuses:
            claim = statuses[name].get("resourceClaimName")
            if claim:
                out.append((name, str(claim)))
        else:
            out.append((name, None))
    return out
