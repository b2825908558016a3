"""The device-plugin role: one GPU node agent composed from backend, state and loops.

:class:`DevicePluginAgent` discovers the GPUs once, writes the CDI spec when a CDI strategy is
selected, then runs until cancelled: kubelet registration (:mod:`registration`), the
registration annotation (:mod:`annotator`), the health pump (backend events ->
:class:`~hami.deviceplugin.state.DeviceState` -> ListAndWatch and annotation) and, in
mock-capacity mode, the capacity publisher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hami.deviceplugin.allocate import CDI_STRATEGIES, AllocateSettings, HostLayout
from hami.deviceplugin.annotator import NodeAnnotator
from hami.deviceplugin.backend import DeviceBackend
from hami.deviceplugin.capacity import CapacityNames, MockCapacityPublisher
from hami.deviceplugin.cdi import CONTROL_DEVICES, DEFAULT_CDI_DIR, cdi_spec, write_spec
from hami.deviceplugin.podlookup import (
    AllocationRecorder,
    HamiPendingPodSource,
    KubeAllocationRecorder,
    NodeApi,
    PendingPodSource,
    PodApi,
)
from hami.deviceplugin.registration import DEFAULT_PLUGIN_DIR, KubeletRegistrar, RegistrationSettings
from hami.deviceplugin.service import DevicePluginService, new_random_id
from hami.deviceplugin.state import DeviceState
from hami.deviceplugin.virtual import NodeDeviceSettings, offered_gpus

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    node_name: str
    node: NodeDeviceSettings = field(default_factory=NodeDeviceSettings)
    allocate: AllocateSettings = field(default_factory=AllocateSettings)
    plugin_dir: Path = DEFAULT_PLUGIN_DIR
    preferred_allocation: bool = True  # advertise GetPreferredAllocation (HAMi 2.8: false)
    cdi_dir: Path = DEFAULT_CDI_DIR
    control_devices: tuple[str, ...] = CONTROL_DEVICES
    topology_score: bool = False  # ENABLE_TOPOLOGY_SCORE
    mock_capacity: CapacityNames | None = None  # --mock-capacity
    host_root: Path = Path("/")  # relocates host paths (tests, standalone runs)
    register_interval_s: float = 30.0
    poll_interval_s: float = 0.5
    health_retry_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.node_name:
            raise ValueError("the node name is required (--node-name or NODE_NAME)")


class DevicePluginAgent:
    def __init__(
        self,
        config: AgentConfig,
        backend: DeviceBackend,
        pods: PodApi,
        nodes: NodeApi,
        *,
        source: PendingPodSource | None = None,
        recorder: AllocationRecorder | None = None,
        new_id: Callable[[], str] = new_random_id,
        on_allocate: Callable[[float], object] | None = None,
    ) -> None:
        self.config = config
        self._backend = backend
        self._nodes = nodes
        self._source = source or HamiPendingPodSource(pods, nodes, resource=config.node.resource_name)
        self._recorder = recorder or KubeAllocationRecorder(pods, nodes)
        self.new_random_id = new_id
        self._on_allocate = on_allocate  # Allocate latency observer (the metrics histogram)
        self.state: DeviceState | None = None
        self.service: DevicePluginService | None = None
        self.registrar: KubeletRegistrar | None = None
        self.annotator: NodeAnnotator | None = None
        self.started = asyncio.Event()

    async def start(self) -> DeviceState:
        """Discover GPUs and build the parts (no background work yet)."""
        cfg = self.config
        gpus = offered_gpus(await self._backend.devices(), cfg.node)
        state = DeviceState(gpus, cfg.node)
        if gpus and any(s in CDI_STRATEGIES for s in cfg.allocate.device_list_strategies):
            path = await asyncio.to_thread(
                write_spec,
                cdi_spec(gpus, kind=cfg.allocate.cdi_kind, control_devices=cfg.control_devices),
                cfg.cdi_dir,
            )
            logger.info("wrote CDI spec %s", path)
        self.service = DevicePluginService(
            node_name=cfg.node_name,
            state=state,
            allocate_settings=cfg.allocate,
            pods=self._source,
            recorder=self._recorder,
            host=HostLayout(cfg.allocate, root=cfg.host_root),
            preferred_allocation=cfg.preferred_allocation,
            new_id=self.new_random_id,
            on_allocate=self._on_allocate,
        )
        self.registrar = KubeletRegistrar(
            self.service,
            RegistrationSettings(
                socket_name=cfg.node.socket_name,
                resource_name=cfg.node.resource_name,
                plugin_dir=cfg.plugin_dir,
                preferred_allocation=cfg.preferred_allocation,
                poll_interval_s=cfg.poll_interval_s,
            ),
        )
        self.annotator = NodeAnnotator(
            self._nodes,
            cfg.node_name,
            state,
            topology=self._backend.topology if cfg.topology_score else None,
            interval_s=cfg.register_interval_s,
        )
        self.state = state
        return state

    async def pump_health(self, state: DeviceState) -> None:
        """Backend health events -> state, restarting the watcher after failures."""
        while True:
            try:
                async for event in self._backend.health_events():
                    state.apply(event)
                logger.warning("health watcher ended; restarting in %.0f s", self.config.health_retry_s)
            except Exception as e:
                logger.error("health watcher failed: %s; restarting in %.0f s", e, self.config.health_retry_s)
            await asyncio.sleep(self.config.health_retry_s)

    async def run(self) -> None:
        """Run until cancelled; closes the backend on the way out."""
        try:
            state = await self.start()
            assert self.registrar is not None and self.annotator is not None
            if not state.gpus:
                logger.warning("No devices found on %s. Waiting indefinitely.", self.config.node_name)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.annotator.run(), name="node registration annotation")
                tg.create_task(self.pump_health(state), name="gpu health")
                if state.gpus:
                    tg.create_task(self.registrar.run(), name="kubelet registration")
                if self.config.mock_capacity is not None:
                    publisher = MockCapacityPublisher(
                        self._nodes,
                        self.config.node_name,
                        self.config.mock_capacity,
                        interval_s=self.config.register_interval_s,
                    )
                    tg.create_task(publisher.run(), name="mock capacity")
                self.started.set()
        finally:
            await self._backend.close()
