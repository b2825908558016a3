"""Priority feedback loop (node spec §7.4): pause low-priority work and switch core limiting.

Every scan, over the loaded regions:

Pass 1 (activity census): ``recent_kernel`` > 0 is decremented and written back; if still > 0 the
container is *active* and counts once per (device UUID, priority) on each of its devices.

Pass 2, per container of priority ``p``:

* blocking: at its first device that has active containers, is any container of a higher
  priority (lower number) active there? Then ``recent_kernel = -1`` (HAMi-core sleeps before each
  launch while it is negative); otherwise a negative value is reset to 0.
* utilisation switch: 1 (enforce ``CUDA_DEVICE_SM_LIMIT``) when, on any of its devices, a
  higher-priority container is active or more than one container of its own priority is;
  else 0. Written only on change.

HAMi 2.8 indexes a two-entry array by priority and panics on other values; counting per priority
value in a dict gives the same answer for 0/1 and stays defined for any value.

Writes are plain 32-bit stores into the live mapping (as 2.8). Blocking: runs in the scan thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class FeedbackTarget(Protocol):
    """What the loop needs of a region (``RegionFile`` implements it)."""

    @property
    def writable(self) -> bool: ...

    def read_recent_kernel(self) -> int: ...

    def write_recent_kernel(self, value: int) -> None: ...

    def read_utilization_switch(self) -> int: ...

    def write_utilization_switch(self, value: int) -> None: ...

    def read_priority(self) -> int: ...

    def read_device_uuids(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackReport:
    active: tuple[str, ...] = ()  # containers active in this round
    blocked: tuple[str, ...] = ()  # containers told to pause (recent_kernel set to -1)
    released: tuple[str, ...] = ()  # containers un-paused (recent_kernel reset to 0)
    switched_on: tuple[str, ...] = ()
    switched_off: tuple[str, ...] = ()


def run_feedback(targets: Mapping[str, FeedbackTarget]) -> FeedbackReport:
    """One round over ``targets`` (container name → region). Read-only regions are skipped."""
    writable = {name: t for name, t in sorted(targets.items()) if t.writable}
    devices = {name: t.read_device_uuids() for name, t in writable.items()}
    priorities = {name: t.read_priority() for name, t in writable.items()}

    active_by_device: dict[str, Counter[int]] = {}
    active: list[str] = []
    for name, target in writable.items():
        recent = target.read_recent_kernel()
        if recent <= 0:
            continue
        recent -= 1
        target.write_recent_kernel(recent)
        if recent > 0:
            active.append(name)
            for uuid in devices[name]:
                active_by_device.setdefault(uuid, Counter())[priorities[name]] += 1

    blocked: list[str] = []
    released: list[str] = []
    on: list[str] = []
    off: list[str] = []
    for name, target in writable.items():
        p = priorities[name]
        present = [active_by_device[u] for u in devices[name] if u in active_by_device]
        blocking = bool(present) and any(n > 0 for q, n in present[0].items() if q < p)
        recent = target.read_recent_kernel()
        if blocking and recent >= 0:
            target.write_recent_kernel(-1)
            blocked.append(name)
        elif not blocking and recent < 0:
            target.write_recent_kernel(0)
            released.append(name)
        shared = any(any(n > 0 for q, n in counts.items() if q < p) or counts[p] > 1 for counts in present)
        switch = 1 if shared else 0
        if target.read_utilization_switch() != switch:
            target.write_utilization_switch(switch)
            (on if switch else off).append(name)
    return FeedbackReport(
        active=tuple(active),
        blocked=tuple(blocked),
        released=tuple(released),
        switched_on=tuple(on),
        switched_off=tuple(off),
    )
