"""The hardware port of the device plugin: what a GPU backend must answer.

Two implementations live in ``hami.deviceplugin.backends``: ``nvml`` (real GPUs through
pynvml, or a recorded NVML for tests) and ``mock`` (GPU-less clusters and CI). Everything
above this module works on :class:`PhysicalGpu` values and :class:`HealthEvent` streams,
never on NVML handles.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

# Application XIDs are caused by user programs (illegal address, MMU fault from a kernel,
# ...), not by the GPU: HAMi 2.8 / NVIDIA v0.18 never mark a device unhealthy for them.
APPLICATION_XIDS: Final = frozenset({13, 31, 43, 45, 68, 109})

# nvmlEventType bits the health watcher registers for.
EVENT_SINGLE_BIT_ECC: Final = 0x1
EVENT_DOUBLE_BIT_ECC: Final = 0x2
EVENT_XID_CRITICAL: Final = 0x8
HEALTH_EVENT_MASK: Final = EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC | EVENT_SINGLE_BIT_ECC


@dataclass(frozen=True, slots=True, kw_only=True)
class PhysicalGpu:
    """One full GPU as discovered on the node (node spec §2.4)."""

    uuid: str
    index: int
    name: str  # NVML product name, e.g. "NVIDIA H100 80GB HBM3"
    memory_mib: int  # total memory, bytes // 2**20
    pci_bus_id: str = ""  # sysfs form, e.g. "0000:3b:00.0"; "" when unknown
    numa_node: int | None = None  # None: the platform reports no NUMA affinity (a normal case)
    minor_number: int | None = None  # /dev/nvidia<minor>
    compute_capability: str = ""  # "major.minor"
    mig_enabled: bool = False

    @property
    def device_paths(self) -> tuple[str, ...]:
        return () if self.minor_number is None else (f"/dev/nvidia{self.minor_number}",)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthEvent:
    """A change of one GPU's health, as the backend observed it."""

    uuid: str
    healthy: bool
    reason: str
    xid: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    """Which events make a GPU unhealthy (node spec §5).

    ``enabled`` False means no health checking at all (``DP_DISABLE_HEALTHCHECKS`` has
    ``all`` or ``xids``): devices stay Healthy. ``recovery_after_s`` is how long a GPU must
    stay free of critical events, and answer NVML again, before it is Healthy again
    (0 = never, HAMi 2.8's behaviour).
    """

    enabled: bool = True
    ignored_xids: frozenset[int] = APPLICATION_XIDS
    forced_xids: frozenset[int] = frozenset()
    recovery_after_s: float = 60.0

    def is_critical_xid(self, xid: int) -> bool:
        if xid in self.forced_xids:
            return True
        return xid not in self.ignored_xids


def _xid_list(raw: str, variable: str) -> tuple[set[str], set[int]]:
    words: set[str] = set()
    xids: set[int] = set()
    for part in raw.split(","):
        item = part.strip().lower()
        if not item:
            continue
        if item.isdigit():
            xids.add(int(item))
        elif item in {"all", "xids"}:
            words.add(item)
        else:
            raise ValueError(f"{variable}: {part.strip()!r} is neither an XID number nor 'all'/'xids'")
    return words, xids


def health_policy(disable: str = "", enable: str = "", *, recovery_after_s: float = 60.0) -> HealthPolicy:
    """Build the policy from ``DP_DISABLE_HEALTHCHECKS`` / ``DP_ENABLE_HEALTHCHECKS`` values.

    Unlike HAMi 2.8 (which panics), ``all``/``xids`` simply turn health checking off.
    """
    off_words, extra_ignored = _xid_list(disable, "DP_DISABLE_HEALTHCHECKS")
    _, forced = _xid_list(enable, "DP_ENABLE_HEALTHCHECKS")
    if recovery_after_s < 0:
        raise ValueError("health recovery delay must be >= 0 seconds")
    return HealthPolicy(
        enabled=not off_words,
        ignored_xids=APPLICATION_XIDS | frozenset(extra_ignored),
        forced_xids=frozenset(forced),
        recovery_after_s=recovery_after_s,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """Pair scores between the node's GPUs (node spec §3.4): uuid -> peer uuid -> score."""

    scores: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


class DeviceBackend(Protocol):
    """Discovery, health and topology of the node's GPUs.

    Implementations keep blocking work (NVML) off the event loop.
    """

    async def devices(self) -> tuple[PhysicalGpu, ...]:
        """Every full GPU of the node, in NVML index order."""
        ...

    def health_events(self) -> AsyncIterator[HealthEvent]:
        """Health changes until cancelled; yields nothing while health checks are disabled."""
        ...

    async def topology(self) -> Topology:
        """Pair scores for the topology-aware policy (empty when unknown)."""
        ...

    async def close(self) -> None:
        """Release the backend's resources; idempotent."""
        ...
