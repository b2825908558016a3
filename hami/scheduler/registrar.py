"""Node registration: node annotations → ledger capacity (hami-scheduler-spec.md §4.4, §7.3-§7.5).

Nodes are decoded once at ingest (:func:`decode_node`) into a :class:`NodeInfo` holding every
vendor's devices (``Vendor.node_devices``); the :class:`NodeRegistrar` then applies HAMi 2.8's
health families (§7.4, ``VendorTraits.health``): NVIDIA's devices count only while the node's
allocatable ``nvidia.com/gpu`` is non-zero (the device plugin is registered with kubelet), Enflame
GCU and Metax GPU likewise on their count resource, handshake vendors (Hygon, Iluvatar, Ascend,
Kunlun vXPU) while their ``Requesting_<time>`` stamp is under 60 s old, the others always. The
registration is re-read on every node change — as HAMi HEAD does (#2022) — instead of only when
the allocatable count changes (§14 item 4); handshake nodes are re-evaluated by the reconciler as
time passes, and the leader writes the handshake stamps (:meth:`VendorRegistration.handshake_write`).

A malformed registration quarantines **only that node**: its devices leave the ledger (it is
unschedulable, with the decode error as the reason shown by ``/filter`` and ``hami why``) while
its pods stay accounted, so nothing is double-booked when the annotation is fixed. HAMi 2.8
instead kept the stale devices. A missing annotation is simply "node unregistered".

NVIDIA's ``NodeCleanUp`` write (``hami.io/node-handshake: Deleted_<time>``, which nothing reads
in 2.8) is not reproduced: NVIDIA registration is a pure function of the watched Node.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hami.core import keys
from hami.core.errors import DecodeError
from hami.core.ledger import Ledger
from hami.core.model import DeviceInfo
from hami.core.node_annotations import encode_handshake
from hami.core.node_lock import NodeLock, decode_node_lock
from hami.core.quantity import QuantityError, exact_integer, parse_quantity
from hami.core.vendor import VendorRegistry
from hami.core.vendors import Health, VendorTraits, handshake_health, resource_names, vendor_traits

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorRegistration:
    """One vendor's view of one node."""

    vendor: str
    health: Health = Health.ALWAYS
    devices: tuple[DeviceInfo, ...] = ()
    error: str | None = None  # the annotation exists but cannot be used
    missing: bool = False  # the vendor is not on this node
    count: int = 0  # the count resource in allocatable (capacity as a fallback)
    handshake_key: str | None = None
    handshake: str | None = None  # the handshake annotation's value

    def healthy(self, now: datetime) -> bool:
        """HAMi 2.8's ``CheckHealth`` families (spec §7.4)."""
        if self.health is Health.CAPACITY:  # NVIDIA: allocatable nvidia.com/gpu; Enflame GCU, Metax GPU
            return self.count > 0
        if self.health is Health.HANDSHAKE:
            if (self.handshake or "").startswith("Deleted"):
                # HAMi's NodeCleanUp dropped these devices and "Deleted" never refreshes them:
                # they stay out until the plugin reports again (its ``Reported`` answer).
                return False
            return handshake_health(self.handshake, now).healthy
        return True  # ALWAYS; DEVICES (Metax sGPU) is healthy iff its annotation yields devices

    def handshake_write(self, now: datetime) -> str | None:
        """The handshake value the leader should write (``Requesting_<now>``, or ``Deleted_<now>``
        for an expired one, HAMi's ``NodeCleanUp``); None when nothing is due."""
        if self.health is not Health.HANDSHAKE or self.handshake_key is None or self.missing:
            return None
        verdict = handshake_health(self.handshake, now)
        if verdict.write is not None:
            return verdict.write
        if not verdict.healthy and not (self.handshake or "").startswith("Deleted"):
            return encode_handshake("deleted", now.astimezone(UTC))
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """What the scheduler needs of one Node."""

    name: str
    resource_version: str = ""
    vendors: tuple[VendorRegistration, ...] = ()
    lock_text: str | None = None  # raw hami.io/mutex.lock
    lock: NodeLock | None = None
    lock_error: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    vendor_locks: Mapping[str, str] = field(default_factory=dict)
    """Raw values of the vendors' own node locks (``cambricon.com/dsmlu.lock``), by annotation key."""

    def devices(self, now: datetime) -> tuple[DeviceInfo, ...]:
        """The devices that count now (healthy vendors whose annotation decodes)."""
        return tuple(d for v in self.vendors if v.error is None and v.healthy(now) for d in v.devices)

    def errors(self, now: datetime) -> tuple[str, ...]:
        return tuple(f"{v.vendor}: {v.error}" for v in self.vendors if v.error is not None and v.healthy(now))

    @property
    def time_dependent(self) -> bool:
        """Its health changes with time alone (handshake windows): re-evaluate periodically."""
        return any(v.health is Health.HANDSHAKE and not v.missing for v in self.vendors)


def _count(resources: Mapping[str, Any], resource: str) -> int:
    raw = resources.get(resource)
    if raw is None:
        return 0
    try:
        value = exact_integer(parse_quantity(str(raw)))
    except QuantityError:
        return 0
    return value if value is not None and value > 0 else 0


def decode_node(
    node: Mapping[str, Any], registry: VendorRegistry, traits: Mapping[str, VendorTraits] | None = None
) -> NodeInfo:
    """Decode a Node (never raises on bad annotations: errors are kept per vendor)."""
    traits = traits if traits is not None else vendor_traits(registry)
    meta = node.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    raw_ann = meta.get("annotations")
    annotations = (
        {str(k): v for k, v in raw_ann.items() if isinstance(v, str)} if isinstance(raw_ann, Mapping) else {}
    )
    status = node.get("status")
    status = status if isinstance(status, Mapping) else {}
    allocatable = status.get("allocatable")
    allocatable = allocatable if isinstance(allocatable, Mapping) else {}
    capacity = status.get("capacity")
    capacity = capacity if isinstance(capacity, Mapping) else {}
    raw_labels = meta.get("labels")
    labels = {str(k): str(v) for k, v in raw_labels.items()} if isinstance(raw_labels, Mapping) else {}
    name = str(meta.get("name", ""))

    vendors: list[VendorRegistration] = []
    for impl in registry:
        trait = traits.get(impl.name) or VendorTraits(health=Health.ALWAYS)
        count_name = resource_names(impl).count
        count = 0
        if count_name:
            count = (
                _count(allocatable, count_name) if count_name in allocatable else _count(capacity, count_name)
            )
        common = {
            "vendor": impl.name,
            "health": trait.health,
            "count": count,
            "handshake_key": trait.handshake_key,
            "handshake": annotations.get(trait.handshake_key) if trait.handshake_key else None,
        }
        try:
            devices = impl.node_devices(
                annotations,
                {str(k): str(v) for k, v in allocatable.items()},
                node=name,
                labels=labels,
            )
        except DecodeError as e:
            missing = e.value == "" and "not found" in e.reason
            vendors.append(
                VendorRegistration(error=None if missing else str(e), missing=missing, **common)  # type: ignore[arg-type]
            )
            continue
        except Exception as e:  # a vendor decoder bug must not take the informer down
            logger.error("node %s: %s registration decoder failed", name, impl.name, exc_info=True)
            vendors.append(VendorRegistration(error=f"decoder failed: {e}", **common))  # type: ignore[arg-type]
            continue
        vendors.append(VendorRegistration(devices=devices, **common))  # type: ignore[arg-type]

    vendor_locks = {
        t.lock_key: annotations[t.lock_key]
        for t in traits.values()
        if t.lock_key and t.lock_key != keys.NODE_LOCK and t.lock_key in annotations
    }
    lock_text = annotations.get(keys.NODE_LOCK)
    lock: NodeLock | None = None
    lock_error: str | None = None
    if lock_text:
        try:
            lock = decode_node_lock(lock_text)
        except DecodeError as e:
            lock_error = str(e)
    return NodeInfo(
        name=name,
        resource_version=str(meta.get("resourceVersion", "")),
        vendors=tuple(vendors),
        lock_text=lock_text,
        lock=lock,
        lock_error=lock_error,
        labels=labels,
        vendor_locks=vendor_locks,
    )


class NodeRegistrar:
    """Applies node deltas to the ledger and remembers why a node is not schedulable."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._quarantined: dict[str, str] = {}
        self._registered: set[str] = set()

    def quarantine_reason(self, node: str) -> str | None:
        """Why ``node``'s registration is refused (None: it is not quarantined)."""
        return self._quarantined.get(node)

    @property
    def quarantined(self) -> Mapping[str, str]:
        return dict(self._quarantined)

    @property
    def registered(self) -> frozenset[str]:
        return frozenset(self._registered)

    def apply(self, info: NodeInfo, now: datetime) -> None:
        errors = info.errors(now)
        if errors:
            reason = "; ".join(errors)
            if self._quarantined.get(info.name) != reason:
                logger.warning("node %s quarantined: unreadable device registration: %s", info.name, reason)
            self._quarantined[info.name] = reason
            self._ledger.set_node_devices(info.name, ())
            self._registered.discard(info.name)
            return
        if self._quarantined.pop(info.name, None) is not None:
            logger.info("node %s: device registration readable again", info.name)
        devices = info.devices(now)
        self._ledger.set_node_devices(info.name, devices)
        if devices:
            if info.name not in self._registered:
                logger.info("node %s registered with %d device(s)", info.name, len(devices))
            self._registered.add(info.name)
        elif info.name in self._registered:
            logger.info("node %s: no usable devices any more (device plugin gone?)", info.name)
            self._registered.discard(info.name)

    def remove(self, name: str) -> None:
        self._quarantined.pop(name, None)
        self._registered.discard(name)
        self._ledger.remove_node(name)
