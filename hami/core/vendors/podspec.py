"""Raw-JSON access the vendor hooks share: container resources for the webhook mutations (spec §3,
"Other vendors' MutateAdmission") and node capacity for the capacity-based vendors (spec §11).

Quantities are read as HAMi reads them: ``Quantity.Value()`` rounds up (webhook), ``AsInt64``
accepts exact integers only (capacity, requests). Values the webhook writes are plain decimal
strings, which is how ``resource.NewQuantity(v, DecimalSI)`` serialises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

from hami.core.errors import DecodeError, InvalidRequest
from hami.core.quantity import QuantityError, exact_integer, parse_quantity

JsonObject = dict[str, object]

MAX_NODE_DEVICES: Final = 4096
"""More devices of one vendor than any node has: a capacity above it is refused, not expanded."""
_GIB_UNITLESS_HINT: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _section(container: JsonObject, name: str, *, create: bool) -> JsonObject | None:
    resources = container.get("resources")
    if resources is None:
        if not create:
            return None
        resources = container["resources"] = {}
    if not isinstance(resources, dict):
        raise InvalidRequest(f"container {container.get('name')!r}: resources must be an object")
    section = resources.get(name)
    if section is None:
        if not create:
            return None
        section = resources[name] = {}
    if not isinstance(section, dict):
        raise InvalidRequest(f"container {container.get('name')!r}: resources.{name} must be an object")
    return section


def limits_of(container: JsonObject) -> JsonObject:
    """The container's ``resources.limits`` (empty when absent); never created."""
    return _section(container, "limits", create=False) or {}


def writable(container: JsonObject, name: str) -> JsonObject:
    """``resources.limits`` or ``resources.requests``, created when absent."""
    section = _section(container, name, create=True)
    assert section is not None
    return section


def quantity_value(raw: object, where: str) -> int:
    """Go ``Quantity.Value()``: the quantity rounded up to an integer."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise InvalidRequest(f"{where}: expected a quantity, got {type(raw).__name__}")
    try:
        return math.ceil(parse_quantity(raw if isinstance(raw, str | int) else repr(raw)))
    except QuantityError as e:
        raise InvalidRequest(f"{where}: {e}") from None


def quantity_int(raw: object) -> int | None:
    """Go ``Quantity.AsInt64()``: the value when it is an exact integer, else None."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None
    try:
        return exact_integer(parse_quantity(raw))
    except QuantityError:
        return None


def has_unit(raw: object) -> bool:
    """Whether a quantity's text carries a letter (a suffix such as ``Gi``/``M`` or an exponent)."""
    return isinstance(raw, str) and any(c in _GIB_UNITLESS_HINT for c in raw)


def set_env(container: JsonObject, name: str, value: str) -> None:
    """Append ``name=value`` to the container's env unless a variable of that name exists."""
    env = container.get("env")
    if env is None:
        env = container["env"] = []
    if not isinstance(env, list):
        raise InvalidRequest(f"container {container.get('name')!r}: env must be a list")
    if any(isinstance(e, dict) and e.get("name") == name for e in env):
        return
    env.append({"name": name, "value": value})


def pod_annotations(pod: JsonObject, *, create: bool) -> JsonObject | None:
    metadata = pod.get("metadata")
    if metadata is None:
        if not create:
            return None
        metadata = pod["metadata"] = {}
    if not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be an object")
    annotations = metadata.get("annotations")
    if annotations is None:
        if not create:
            return None
        annotations = metadata["annotations"] = {}
    if not isinstance(annotations, dict):
        raise InvalidRequest("metadata.annotations must be an object")
    return annotations


def read_pod_annotations(pod: Mapping[str, object] | None) -> Mapping[str, str]:
    """A raw pod's annotations as strings (non-string values dropped), for read-only use."""
    if pod is None:
        return {}
    metadata = pod.get("metadata")
    raw = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}


def pod_containers(pod: Mapping[str, object] | None) -> list[Mapping[str, object]]:
    """The regular containers of a raw pod (malformed entries skipped)."""
    if pod is None:
        return []
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    if not isinstance(containers, list):
        return []
    return [c for c in containers if isinstance(c, Mapping)]


def capacity(allocatable: Mapping[str, str], name: str) -> int | None:
    """A node capacity value as HAMi's ``Capacity.Name(..).AsInt64()`` reads it (None: unusable)."""
    if not name:
        return None
    raw = allocatable.get(name)
    if raw is None:
        return None
    return quantity_int(raw)


def required_capacity(allocatable: Mapping[str, str], name: str, *, positive: bool = True) -> int:
    """The capacity HAMi's ``GetNodeDevices`` needs: absent, unparsable or 0 → ``device not found``.

    The DecodeError's value is always empty: the registrar then reads it as "this vendor is not on
    the node" (kubelet reports 0 while a plugin is away), not as a broken registration."""
    value = capacity(allocatable, name)
    if value is None or value == 0 or (positive and value < 0):
        raise DecodeError(name, "", f"device not found {name}")
    return value


def device_count(count: int, name: str) -> int:
    """A device count derived from capacity, refused (DecodeError) beyond :data:`MAX_NODE_DEVICES`
    so that a hostile or broken capacity cannot make the scheduler build millions of devices."""
    if count > MAX_NODE_DEVICES:
        raise DecodeError(
            name, str(count), f"{count} devices is more than a node can hold ({MAX_NODE_DEVICES})"
        )
    return count
