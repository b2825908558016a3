"""MetaX whole GPUs (common word ``Metax-GPU``; spec §11, HAMi ``pkg/device/metax/device.go``); the
shared sGPUs are :mod:`hami.core.vendors.metax_sgpu`.

**Metax-GPU** — ``metax-tech.com/gpu`` (whole cards: 100 % memory and cores); devices from node
capacity (65536 MiB each, split count 1, IDs ``<node>-metax-<i>``), health = capacity > 0. Pod
annotations ``hami.io/metax-gpu-devices-to-allocate`` / ``-allocated``. A pod's containers must
all use the same card (HAMi's ``customFilterRule``). ScoreNode: with the node policy ``binpack``
``2000 − loss[n]`` from ``metax-tech.com/gpu.topology.losses``, with ``spread`` ``2000 − score[n]``
from ``metax-tech.com/gpu.topology.scores`` (JSON ``{"<n devices>": value}``; n = devices picked;
an unreadable map or a missing n reads as 0). No lock, no selection annotations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from hami.core import gojson
from hami.core.deviceconfig import MetaxConfig
from hami.core.gojson import GoJsonError, Pairs
from hami.core.model import ContainerDeviceRequest, DeviceInfo, PodSingleDevice
from hami.core.pod_annotations import PodDeviceKeys
from hami.core.policy import NodePolicy
from hami.core.requests import ContainerResources
from hami.core.scoring import f32
from hami.core.snapshot import DeviceUsage, NodeSnapshot
from hami.core.vendors.base import (
    BaseVendor,
    Clock,
    Health,
    NodePublication,
    ResourceNames,
    VendorTraits,
    capacity_devices,
    requested_count,
)
from hami.core.vendors.fitloop import FitRules
from hami.core.vendors.podspec import device_count, required_capacity

METAX_GPU: Final = "Metax-GPU"
METAX_SGPU: Final = "Metax-SGPU"
GPU_POD_KEYS: Final = PodDeviceKeys(
    to_allocate="hami.io/metax-gpu-devices-to-allocate", allocated="hami.io/metax-gpu-devices-allocated"
)
SGPU_POD_KEYS: Final = PodDeviceKeys(
    to_allocate="hami.io/metax-sgpu-devices-to-allocate", allocated="hami.io/metax-sgpu-devices-allocated"
)
TOPOLOGY_LOSSES: Final = "metax-tech.com/gpu.topology.losses"
TOPOLOGY_SCORES: Final = "metax-tech.com/gpu.topology.scores"
GPU_MEMORY_MIB: Final = 65536
SDEVICES: Final = "metax-tech.com/node-gpu-devices"
SDEVICES_ALLOCATED: Final = "metax-tech.com/gpu-devices-allocated"
PREDICATE_TIME: Final = "metax-tech.com/predicate-time"
USE_UUID: Final = "metax-tech.com/use-gpuuuid"
NOUSE_UUID: Final = "metax-tech.com/nouse-gpuuuid"
QOS_POLICY: Final = "metax-tech.com/sgpu-qos-policy"
TOPOLOGY_AWARE: Final = "metax-tech.com/sgpu-topology-aware"
APP_CLASS: Final = "metax-tech.com/sgpu-app-class"
QOS_POLICIES: Final = ("best-effort", "fixed-share", "burst-share")
ONLINE: Final = "online"
OFFLINE: Final = "offline"
CARD_UNHEALTHY: Final = "CardUnhealthy"
CARD_QOS_MISMATCH: Final = "CardQosPolicyMismatch"
CARD_APP_CLASS_MISMATCH: Final = "CardAppClassMismatch"
DIRECT_LINK_SCORE: Final = 10
SGPU_SPLIT: Final = 16
SGPU_MEMORY_MIB: Final = 65536
_GO_INT_KEY: Final = re.compile(r"[+-]?[0-9]{1,18}")


# --------------------------------------------------------------------------------------- Metax GPU


def topology_value(raw: object, picked: int) -> int:
    """``parseMetaxAnnos``: the entry for ``picked`` of a JSON ``map[int]int``; 0 when unreadable."""
    if not isinstance(raw, str):
        return 0
    try:
        parsed = gojson.loads(raw)
    except GoJsonError:
        return 0
    if not isinstance(parsed, Pairs):
        return 0
    found = 0
    for key, value in parsed:
        if _GO_INT_KEY.fullmatch(key) is None or isinstance(value, bool) or not isinstance(value, int):
            return 0  # Go fails the whole Unmarshal
        if int(key) == picked:
            found = value
    return found


class MetaxGpuVendor(BaseVendor):
    __slots__ = ("config",)

    fit_rules = FitRules(same_device_as_earlier=True)

    def __init__(self, config: MetaxConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config if config is not None else MetaxConfig()
        super().__init__(
            name=METAX_GPU,
            names=ResourceNames(count=self.config.resource_count_name),
            pod_keys=GPU_POD_KEYS,
            traits=VendorTraits(health=Health.CAPACITY),
            clock=clock,
        )

    @property
    def scores_nodes(self) -> bool:
        return True

    def container_request(
        self, container: ContainerResources, warnings: list[str]
    ) -> ContainerDeviceRequest | None:
        nums = requested_count(container, self.config.resource_count_name, warnings)
        if nums is None:
            return None
        return ContainerDeviceRequest(
            nums=nums, type=METAX_GPU, memreq=0, mem_percentage_req=100, coresreq=100
        )

    def node_devices(
        self,
        annotations: Mapping[str, str],
        allocatable: Mapping[str, str],
        *,
        node: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[DeviceInfo, ...]:
        name = self.config.resource_count_name
        count = device_count(required_capacity(allocatable, name), name)
        # ScoreNode reads the node's topology annotations; keep them with the devices.
        custom = {k: annotations[k] for k in (TOPOLOGY_LOSSES, TOPOLOGY_SCORES) if k in annotations}
        return capacity_devices(
            node, "metax", count, vendor=METAX_GPU, split=1, devmem=GPU_MEMORY_MIB, custominfo=custom
        )

    def score_node(
        self,
        node: NodeSnapshot,
        assigned: PodSingleDevice,
        previous: Sequence[DeviceUsage],
        policy: NodePolicy,
    ) -> float:
        picked = sum(len(c) for c in assigned)
        custom = next((d.custominfo for d in previous if d.vendor == METAX_GPU), {})
        key = TOPOLOGY_LOSSES if policy is NodePolicy.BINPACK else TOPOLOGY_SCORES
        if key not in custom:
            return 0.0
        return f32(2000 - topology_value(custom[key], picked))

    def impersonate(
        self, node: str, devices: int, *, memory_mib: int | None, now: datetime
    ) -> NodePublication:
        """metax gpu-device: the count resource and the topology maps (a MetaLink pair per 2 cards)."""
        losses = {str(n): 0 if n <= 2 or n % 2 == 0 else 10 * (n % 2) for n in range(1, devices + 1)}
        scores = {str(n): 100 * (n // 2) for n in range(1, devices + 1)}
        annotations = (
            {TOPOLOGY_LOSSES: gojson.go_int_map(losses), TOPOLOGY_SCORES: gojson.go_int_map(scores)}
            if devices
            else {}
        )
        return NodePublication(
            annotations=annotations, capacity={self.config.resource_count_name: str(devices)}
        )
