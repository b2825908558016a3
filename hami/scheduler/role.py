"""The scheduler role: caches, decisions, listeners and background loops, started and stopped in order.

:meth:`SchedulerRole.run` starts the watch caches, then (while they sync) the event sink, the
reconciler, the leader elector (which campaigns once the caches are synced, see
:mod:`hami.scheduler.leadership`) and the TLS watcher, then the metrics listener and the main
HTTP(S) listener, and serves until ``stop`` is set or it is cancelled. ``/filter`` and ``/bind``
refuse (at once, with a reason) until every cache has synced and while this replica does not
lead. ``POST /webhook`` (:mod:`hami.scheduler.webhook`) is served on the same listener.

Shutdown order (style guide §3.6): ``/readyz`` turns 503 first, then the listener stops accepting
and in-flight requests finish (``--shutdown-timeout``), then the Lease is released, then the
watches stop; the caller closes the API client last.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry

from hami.core.admission import AdmissionOptions, PodAdmission
from hami.core.deviceconfig import DeviceConfig
from hami.core.policy import GpuPolicy, NodePolicy
from hami.core.vendor import VendorRegistry
from hami.core.vendors import admission_vendors, build_registry
from hami.k8s.client import KubeApi
from hami.metrics.build_info import BuildInfo
from hami.metrics.http import MetricsServer, serve_metrics
from hami.metrics.instruments import SchedulerInstruments
from hami.metrics.registry import new_registry
from hami.metrics.scheduler import SchedulerUsageCollector
from hami.runtime.clock import Clock
from hami.runtime.tasks import create_guarded_task, shielded, stop_tasks
from hami.scheduler.app import Listener, RouteFactory, build_app, listen
from hami.scheduler.binder import Binder, BinderSettings
from hami.scheduler.cycle import CycleSettings, FilterCycle
from hami.scheduler.dra_admission import webhook_admitter
from hami.scheduler.events import EventSink
from hami.scheduler.explain import WhyBook
from hami.scheduler.extender import ExtenderService
from hami.scheduler.fencing import FencedApi
from hami.scheduler.handoff import HandoffTracker
from hami.scheduler.leadership import (
    AlwaysLeader,
    Candidate,
    ElectedLeadership,
    LeaderElectMode,
    Leadership,
    LeadershipCollector,
)
from hami.scheduler.reconciler import Reconciler
from hami.scheduler.settings import SchedulerSettings, split_host_port
from hami.scheduler.state import SchedulerState
from hami.scheduler.tls import ReloadingCertificate
from hami.scheduler.usage import scheduler_usage
from hami.scheduler.webhook import SnapshotCapacity, WebhookHandler, webhook_routes

logger = logging.getLogger(__name__)


class SchedulerRole:
    """Everything ``hami scheduler`` runs, wired from settings (also used in-process by tests)."""

    def __init__(
        self,
        settings: SchedulerSettings,
        api: KubeApi,
        *,
        device_config: DeviceConfig | None = None,
        registry: VendorRegistry | None = None,
        metrics_registry: CollectorRegistry | None = None,
        build_info: BuildInfo | None = None,
        extra_routes: Iterable[RouteFactory] = (),
        clock: Clock | None = None,
        identity: str | None = None,
    ) -> None:
        self.settings = settings
        cfg = settings.scheduler
        self.api = api
        self.device_config = device_config or DeviceConfig()
        self.registry = registry or build_registry(
            self.device_config, enable_ascend=cfg.enable_ascend, enable_iluvatar=cfg.enable_iluvatar
        )
        self.state = SchedulerState(
            self.registry, tracker=HandoffTracker(exclusive=cfg.compat_node_lock), clock=clock
        )
        self.state.create_informers(api, watching=settings.watching, node_selector=cfg.label_selector_query)
        self.metrics_registry = metrics_registry or new_registry(build_info)
        self.instruments = SchedulerInstruments(self.metrics_registry)
        self.metrics_registry.register(SchedulerUsageCollector(lambda: scheduler_usage(self.state)))
        self.events = EventSink(api, component=cfg.scheduler_name or "hami-scheduler")
        self.why = WhyBook(cfg.why_capacity)
        self.elector: Candidate | None = None
        self.leadership: Leadership = AlwaysLeader()
        writer: KubeApi = api
        if settings.leader_election.enabled:
            elected = ElectedLeadership.build(
                api,
                settings.leader_election,
                LeaderElectMode(cfg.leader_elect_mode),
                identity=identity,
                clock=self.state.clock,
                watching=settings.watching,
                on_lost=self.state.forget_assumptions,
            )
            self.elector = elected.candidate
            self.leadership = elected
            # Decisions, bindings, node locks and handshakes go through the fence; watches do not.
            writer = FencedApi(api, elected)
        self.metrics_registry.register(LeadershipCollector(self.leadership))
        self.cycle = FilterCycle(
            self.state,
            writer,
            nvidia=self.device_config.nvidia,
            settings=CycleSettings(
                node_policy=NodePolicy(cfg.node_scheduler_policy),
                gpu_policy=GpuPolicy(cfg.gpu_scheduler_policy),
                exact_events_max_nodes=cfg.exact_events_max_nodes,
                why_max_nodes=cfg.why_max_nodes,
            ),
            events=self.events,
            why=self.why,
            instruments=self.instruments,
            leadership=self.leadership,
        )
        self.binder = Binder(
            self.state,
            writer,
            settings=BinderSettings(
                bind_wait_timeout=cfg.bind_wait_timeout,
                cache_wait=cfg.cache_wait,
                compat_node_lock=cfg.compat_node_lock,
            ),
            events=self.events,
            fence=self.leadership.fence if self.elector is not None else None,
            leadership=self.leadership,
            decided_at=self.cycle.decided_at,
            wants_devices=self.cycle.wants_devices,
        )
        self.reconciler = Reconciler(
            self.state,
            writer,
            assume_grace=cfg.assume_grace,
            interval=cfg.reconcile_interval,
            lock_timeout=cfg.node_lock_timeout,
            is_leader=lambda: self.leadership.refusal() is None,
        )
        self.tls = (
            ReloadingCertificate(cfg.cert_file, cfg.key_file, min_check_interval=1.0) if cfg.tls else None
        )
        admission = PodAdmission(
            self.device_config,
            AdmissionOptions(
                scheduler_name=cfg.scheduler_name,
                force_overwrite_default_scheduler=cfg.force_overwrite_default_scheduler,
            ),
            vendors=admission_vendors(self.registry),
            readers=self.registry.request_readers(),
        )
        admitter, templates = webhook_admitter(
            admission,
            cfg,
            api,
            nvidia=self.device_config.nvidia,
            readers=self.registry.request_readers(),
        )
        self.webhook = WebhookHandler(
            admitter,
            capacity=SnapshotCapacity(self.state.ledger.snapshot, lambda: self.state.synced),
            prerequisites=templates,
        )
        self.stopping = False
        self.service = ExtenderService(
            cycle=self.cycle,
            binder=self.binder,
            why=self.why,
            serving=self.serving_refusal,
            ready=self.readiness_refusal,
            instruments=self.instruments,
        )
        webhook = webhook_routes(self.webhook, observe=self.instruments.webhook_seconds.observe)
        self.app = build_app(self.service, extra_routes=[webhook, *extra_routes])
        self.listener: Listener | None = None
        self.metrics: MetricsServer | None = None
        self.started = asyncio.Event()
        self.warm = asyncio.Event()  # caches synced and frozen: only then does this replica campaign

    # ------------------------------------------------------------------ gates

    def serving_refusal(self) -> str | None:
        if self.stopping:
            return "scheduler is shutting down"
        if not self.state.synced:
            return "scheduler caches are not synced yet"
        return self.leadership.refusal()

    def readiness_refusal(self) -> str | None:
        return self.serving_refusal()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self.listener is not None, "not started"
        return self.listener.url

    async def _freeze_after_sync(self) -> None:
        """Move the freshly listed caches out of the cyclic GC's reach: with tens of thousands of
        cached pods a full collection would otherwise pause a ``/filter`` for tens of ms."""
        await self.state.wait_synced()
        gc.collect()
        gc.freeze()
        logger.info("caches synced; %d objects frozen out of the cyclic GC", gc.get_freeze_count())
        self.warm.set()

    async def _campaign(self, candidate: Candidate) -> None:
        """Lead only with warm caches: a replica still listing (or freezing, which blocks the loop)
        would take the Lease from a synced follower and then fail its first renewals."""
        await self.warm.wait()
        await candidate.run()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or cancelled); see the module docstring for the order."""
        stop = stop or asyncio.Event()
        cfg = self.settings.scheduler
        watchers = [create_guarded_task(self.state.run_informers(), name="scheduler watches")]
        helpers: list[asyncio.Task[Any]] = [
            create_guarded_task(self.events.run(), name="scheduler events"),
            create_guarded_task(self.reconciler.run(), name="scheduler reconciler"),
        ]
        if self.tls is not None:
            helpers.append(create_guarded_task(self.tls.watch(cfg.tls_reload_interval), name="tls reload"))
        lease: list[asyncio.Task[Any]] = []
        if self.elector is not None:
            lease.append(create_guarded_task(self._campaign(self.elector), name="leader election"))
        helpers.append(create_guarded_task(self._freeze_after_sync(), name="gc freeze", finishable=True))
        everything = [*watchers, *helpers, *lease]
        try:
            host, port = split_host_port(cfg.metrics_bind_address)
            self.metrics = await serve_metrics(self.metrics_registry, host, port)
            host, port = split_host_port(cfg.http_bind)
            self.listener = await listen(
                self.app,
                host,
                port,
                ssl_context=self.tls.context if self.tls is not None else None,
                shutdown_timeout=cfg.shutdown_timeout,
            )
            logger.info(
                "scheduler extender listening on %s (metrics on port %d)",
                self.listener.url,
                self.metrics.port,
            )
            self.started.set()
            stopper = asyncio.ensure_future(stop.wait())
            pending: set[asyncio.Future[Any]] = {stopper, *everything}
            try:
                while stopper in pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:  # eternal tasks only end by failing (guard); finishable ones may return
                        if task is not stopper and not task.cancelled() and task.exception() is not None:
                            raise task.exception()  # type: ignore[misc]
            finally:
                stopper.cancel()
        finally:
            self.stopping = True  # (1) /readyz 503, /filter and /bind refuse
            if self.listener is not None:  # (2) stop accepting, let in-flight requests finish
                await shielded(
                    self.listener.runner.cleanup(), time_limit=cfg.shutdown_timeout + 1, name="http shutdown"
                )
            await self.events.flush(1.0)
            await stop_tasks(lease, grace=self.settings.leader_election.renew_deadline, title="lease")  # (3)
            await stop_tasks([*helpers, *watchers], grace=5.0, title="scheduler")  # (4)
            if self.metrics is not None:
                await self.metrics.close()
