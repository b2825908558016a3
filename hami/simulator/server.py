"""The simulated kube-apiserver: an aiohttp JSON API over :class:`~hami.simulator.store.Store`.

Start it in-process::

    async with ApiServer.running(host="127.0.0.1", port=0) as srv:
        srv.url                      # "http://127.0.0.1:<port>", plain HTTP, no authentication
        srv.store                    # the Store (sync API: create/get/try_get/objects/list/update/mutate/
                                     #   delete/watch/compact); hami.simulator.binding.bind_pod(store, ...)
        srv.write_kubeconfig(path)   # kubeconfig for kubectl / kubernetes-asyncio (context "hami-sim")
        srv.faults.add(FaultRule(path_prefix="/api/v1/pods", status=429, retry_after_s=1))
        srv.chaos.pause(); srv.chaos.drop_watches("pods")   # hami.simulator.chaos: pause, watch faults

Supported (semantics of k8s-apis.md §6, checklist §10):

* Resources: core v1 namespaces (+status), nodes (+status), pods (+status, +binding; legacy
  ``namespaces/{ns}/bindings``), events, configmaps, secrets (``stringData`` folded into ``data``),
  resourcequotas (+status; stored, not enforced); events.k8s.io/v1 events (same storage as core events);
  coordination.k8s.io/v1 leases (MicroTime fields must have exactly 6 fractional digits; PUT needs a
  resourceVersion; PUT creates); admissionregistration.k8s.io/v1 mutating/validating webhook
  configurations; resource.k8s.io/v1 deviceclasses, resourceclaims (+status), resourceclaimtemplates,
  resourceslices. Stored-only (no controller-manager acts on them, :mod:`hami.simulator.kindrules`):
  serviceaccounts, services (+status; cluster IPs and node ports allocated), rbac.authorization.k8s.io/v1
  roles, rolebindings, clusterroles, clusterrolebindings, policy/v1 poddisruptionbudgets (+status),
  apps/v1 deployments, daemonsets, statefulsets, replicasets, batch/v1 jobs (+status).
* Verbs: get, list (``<Kind>List``, ``limit``/``continue`` as a consistent snapshot, ``resourceVersion``
  + ``resourceVersionMatch``), watch (``?watch=`` any case, or ``/watch/`` paths; ADDED/MODIFIED/DELETED/
  BOOKMARK/ERROR JSON lines; selector transitions; ``allowWatchBookmarks`` with periodic bookmarks;
  ``timeoutSeconds``; ``sendInitialEvents`` + ``k8s.io/initial-events-end``; too old RV → ERROR 410),
  create (201; uid, creationTimestamp, generateName, pod defaults and ``status.phase: Pending``; 404 for a
  missing namespace; 409 AlreadyExists), update (409 with the exact optimistic-lock message; no-op keeps
  the RV), patch (merge, strategic merge, JSON patch; 415 otherwise, server-side apply included), delete
  (grace periods for bound pods, finalizers, ``deletionTimestamp``; preconditions), deletecollection,
  ``dryRun=All``.
* Selectors: labels (=, ==, !=, in, notin, exists, !key, >, <); fields metadata.name, metadata.namespace,
  pod spec.nodeName/spec.schedulerName/status.phase/..., node spec.unschedulable, event involvedObject.*,
  resourceslice spec.nodeName/spec.driver.
* Errors: ``Status`` objects as kube-apiserver writes them (reason, code, details).
* Discovery ``/api``, ``/api/v1``, ``/apis``, ``/apis/<g>``, ``/apis/<g>/<v>``, ``/version``, ``/openapi/v3``
  (enough for kubectl's server-side field validation), ``/healthz``, ``/readyz``, ``/livez``.
* Table output (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``) for every kind (pods, nodes,
  namespaces, events, leases, ... with kubectl's columns; others Name + Created At), in lists, gets and
  watches.
* Admission webhooks on CREATE and UPDATE, including subresources but not pods/binding or DELETE
  (see :mod:`hami.simulator.admission`).

The verbs themselves are :mod:`hami.simulator.verbs`; this module is the HTTP front around them:
lifecycle, fault injection and error translation (middleware), discovery and probes.

Protobuf request bodies are understood only for Namespace/ConfigMap/Secret (what ``kubectl create
namespace|configmap|secret`` send; :mod:`hami.simulator.protowire`); others get 415. Replies are JSON.

Not supported: server-side apply, aggregated discovery, authentication and
RBAC, garbage collection of ownerReferences, quota enforcement, pods/log, exec, eviction. Namespace
deletion removes the namespace's objects at once. Nobody finishes a bound pod's graceful deletion
except a kubelet (or a DELETE with ``gracePeriodSeconds=0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml
from aiohttp import web

from hami.simulator import discovery
from hami.simulator.admission import AdmissionChain, ServiceResolver
from hami.simulator.chaos import ApiChaos
from hami.simulator.faults import FaultRule, Faults
from hami.simulator.resources import REGISTRY
from hami.simulator.routing import json_response, not_found_path
from hami.simulator.statuses import StatusError
from hami.simulator.store import JsonObj, Store
from hami.simulator.verbs import ResourceVerbs

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiServerSettings:
    history_size: int = 20_000
    """Change events kept for watches and continue tokens; older resourceVersions get 410."""
    bookmark_interval_s: float = 60.0
    """Period of BOOKMARK events on watches that allow them (kube-apiserver: about a minute)."""
    default_watch_timeout_s: float = 1800.0
    """Watch length when the client sends no ``timeoutSeconds``."""
    too_large_rv_wait_s: float = 3.0
    """How long a read at a future resourceVersion waits before 504 (kube-apiserver: 3 s)."""
    watch_queue_limit: int = 100_000
    """Events buffered per watcher before a too-slow watcher is disconnected."""
    webhook_service_resolver: ServiceResolver | None = None
    """Maps a webhook ``service`` reference to ``host:port`` (there is no cluster DNS)."""


class ApiServer:
    """The HTTP front of a :class:`Store`; one per simulated cluster."""

    def __init__(self, settings: ApiServerSettings | None = None, *, store: Store | None = None) -> None:
        self.settings = settings or ApiServerSettings()
        self.store = store or Store(history_size=self.settings.history_size)
        self.faults = Faults()
        self.chaos = ApiChaos(self.faults)
        self.admission = AdmissionChain(self.store, resolver=self.settings.webhook_service_resolver)
        self._verbs = ResourceVerbs(self.store, self.admission, self.chaos, self.settings)
        self.ready = True
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.host = "127.0.0.1"
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: ApiServerSettings | None = None,
        *,
        store: Store | None = None,
    ) -> AsyncIterator[ApiServer]:
        server = cls(settings, store=store)
        await server.start(host, port)
        try:
            yield server
        finally:
            await server.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(
            self.build_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        server = self._site._server
        assert server is not None and hasattr(server, "sockets")
        self.host, self.port = host, int(server.sockets[0].getsockname()[1])
        logger.info("simulated apiserver listening on %s", self.url)

    async def stop(self) -> None:
        self.ready = False
        self.store.close_all_watchers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.admission.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kubeconfig(self, namespace: str = "default") -> JsonObj:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "hami-sim", "cluster": {"server": self.url}}],
            "users": [{"name": "hami-sim", "user": {}}],
            "contexts": [
                {
                    "name": "hami-sim",
                    "context": {"cluster": "hami-sim", "user": "hami-sim", "namespace": namespace},
                }
            ],
            "current-context": "hami-sim",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.kubeconfig(namespace), sort_keys=False))
        return target

    # ------------------------------------------------------------------ app
    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=16 * 1024 * 1024)
        get = app.router.add_get
        get("/version", self._version)
        get("/version/", self._version)
        for probe in ("/healthz", "/livez"):
            get(probe, self._ok)
        get("/readyz", self._readyz)
        get("/api", self._api)
        get("/apis", self._apis)
        get("/openapi/v3", self._openapi_index)
        get("/openapi/v3/{path:.+}", self._openapi_doc)
        app.router.add_route("*", "/api/v1", self._api_v1)
        app.router.add_route("*", "/api/v1/{tail:.+}", self._core)
        app.router.add_route("*", "/apis/{group}", self._api_group)
        app.router.add_route("*", "/apis/{group}/{version}", self._group_version)
        app.router.add_route("*", "/apis/{group}/{version}/{tail:.+}", self._named)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.chaos.paused:
            await self.chaos.wait_running()
        rule = self.faults.take(request.method, request.path, request.query) if self.faults.rules else None
        if rule is not None:
            if rule.hang:
                await asyncio.get_running_loop().create_future()  # until the client gives up
            if rule.release is not None:
                await rule.release.wait()
            if rule.delay_s:
                await asyncio.sleep(rule.delay_s)
            if rule.drop and request.transport is not None:
                request.transport.close()
                raise ConnectionResetError("fault injection: connection dropped")
            error = rule.error()
            if error is not None:
                headers = {"Retry-After": str(rule.retry_after_s)} if rule.retry_after_s else {}
                return web.Response(
                    body=orjson.dumps(error.to_status()),
                    status=error.code,
                    content_type="application/json",
                    headers=headers,
                )
        try:
            return await handler(request)
        except StatusError as e:
            return json_response(e.to_status(), e.code)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            logger.exception("internal error serving %s %s", request.method, request.path)
            return json_response(
                StatusError(500, "InternalError", f"Internal error occurred: {e}").to_status(), 500
            )

    # ------------------------------------------------------------------ discovery & probes
    async def _version(self, request: web.Request) -> web.Response:
        return json_response(dict(discovery.VERSION_INFO))

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok") if self.ready else web.Response(text="shutting down", status=500)

    async def _api(self, request: web.Request) -> web.Response:
        return json_response(discovery.api_versions(f"{self.host}:{self.port}"))

    async def _apis(self, request: web.Request) -> web.Response:
        return json_response(discovery.api_group_list(REGISTRY))

    async def _api_v1(self, request: web.Request) -> web.Response:
        return json_response(discovery.api_resource_list(REGISTRY, "", "v1"))

    async def _api_group(self, request: web.Request) -> web.Response:
        doc = discovery.api_group(REGISTRY, request.match_info["group"])
        if doc is None or request.method != "GET":
            raise not_found_path()
        return json_response(doc)

    async def _group_version(self, request: web.Request) -> web.Response:
        doc = discovery.api_resource_list(
            REGISTRY, request.match_info["group"], request.match_info["version"]
        )
        if doc is None or request.method != "GET":
            raise not_found_path()
        return json_response(doc)

    async def _openapi_index(self, request: web.Request) -> web.Response:
        return json_response(discovery.openapi_index(REGISTRY))

    async def _openapi_doc(self, request: web.Request) -> web.Response:
        doc = discovery.openapi_document(REGISTRY, request.match_info["path"])
        if doc is None:
            raise not_found_path()
        return json_response(doc)

    # ------------------------------------------------------------------ resources
    async def _core(self, request: web.Request) -> web.StreamResponse:
        return await self._verbs.serve(request, "", "v1", request.match_info["tail"])

    async def _named(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return await self._verbs.serve(request, info["group"], info["version"], info["tail"])


__all__ = ["ApiServer", "ApiServerSettings", "FaultRule", "Faults", "Store"]
