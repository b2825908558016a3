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
  resourceslices.
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
from typing import Any

import orjson
import yaml
from aiohttp import web

from hami.simulator import discovery
from hami.simulator.admission import AdmissionAttributes, AdmissionChain, Operation, ServiceResolver
from hami.simulator.binding import bind_pod
from hami.simulator.chaos import ApiChaos
from hami.simulator.conversions import from_view, to_view
from hami.simulator.faults import FaultRule, Faults
from hami.simulator.patching import apply_patch, media_type, unsupported_media_type
from hami.simulator.resources import EVENTS, REGISTRY, ResourceType
from hami.simulator.routing import (
    ListOptions,
    Target,
    int_param,
    json_response,
    method_not_allowed,
    not_found_path,
    read_body,
    resolve,
    table_version,
)
from hami.simulator.selectors import FieldSelector, LabelSelector
from hami.simulator.statuses import (
    StatusError,
    bad_request,
    success,
    too_large_resource_version,
)
from hami.simulator.store import JsonObj, Store, parse_resource_version
from hami.simulator.tables import to_table
from hami.simulator.watching import WatchRequest, serve_watch

logger = logging.getLogger(__name__)

UPDATE_RETRIES = 8


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
        return await self._resource(request, "", "v1", request.match_info["tail"])

    async def _named(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return await self._resource(request, info["group"], info["version"], info["tail"])

    async def _resource(
        self, request: web.Request, group: str, version: str, tail: str
    ) -> web.StreamResponse:
        target = resolve(group, version, tail)
        method = request.method
        rt = target.rt
        if target.subresource == "bindings":
            if method != "POST":
                raise method_not_allowed()
            body = await read_body(request, rt=None)
            name = (
                str(((body or {}).get("metadata") or {}).get("name") or "") if isinstance(body, dict) else ""
            )
            return await self._bind(target.namespace or "", name, body)
        if target.name is None:
            if target.subresource is not None:
                raise not_found_path()
            if method == "GET":
                return await self._list_or_watch(request, target)
            if method == "POST":
                if rt.namespaced and target.namespace is None:
                    raise method_not_allowed()
                return await self._create(request, target)
            if method == "DELETE":
                return await self._delete_collection(request, target)
            raise method_not_allowed()
        sub = target.subresource
        if sub == "binding" and rt.store_key == "pods":
            if method != "POST":
                raise method_not_allowed()
            return await self._bind(target.namespace or "", target.name, await read_body(request, rt=None))
        if sub is not None and sub not in rt.subresources:
            raise not_found_path()
        if target.watch_path and method == "GET":
            return await self._list_or_watch(request, target)
        if method == "GET":
            return self._get(request, target)
        if method == "PUT":
            return await self._update(request, target)
        if method == "PATCH":
            return await self._patch(request, target)
        if method == "DELETE" and sub is None:
            return await self._delete(request, target)
        raise method_not_allowed()

    @staticmethod
    def _storage_type(rt: ResourceType) -> ResourceType:
        return EVENTS if rt.store_key == EVENTS.store_key else rt

    def _render(
        self, request: web.Request, rt: ResourceType, obj: JsonObj, status: int = 200
    ) -> web.Response:
        table = table_version(request.headers.get("Accept", ""))
        if table is not None:
            include = request.query.get("includeObject", "Metadata")
            view = to_view(rt, obj)
            return json_response(
                to_table(
                    rt,
                    [view],
                    now=self.store.now(),
                    include_object=include,
                    list_meta={"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                    api_version=f"meta.k8s.io/{table}",
                ),
                status,
                f"application/json;as=Table;v={table};g=meta.k8s.io",
            )
        return json_response(to_view(rt, obj), status)

    # ------------------------------------------------------------------ verbs
    def _get(self, request: web.Request, target: Target) -> web.Response:
        assert target.name is not None
        obj = self.store.get(self._storage_type(target.rt), target.namespace, target.name)
        return self._render(request, target.rt, obj)

    async def _list_or_watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        rt = target.rt
        srt = self._storage_type(rt)
        opts = ListOptions.parse(request.query, target)
        table = table_version(request.headers.get("Accept", ""))
        include = request.query.get("includeObject", "Metadata")
        now = self.store.now

        def as_table(objects: list[JsonObj], meta: JsonObj) -> JsonObj:
            return to_table(
                rt,
                objects,
                now=now(),
                include_object=include,
                list_meta=meta,
                api_version=f"meta.k8s.io/{table}",
            )

        if opts.watch:
            view: Callable[[JsonObj], JsonObj] | None = None
            if table is not None:

                def view(obj: JsonObj) -> JsonObj:
                    meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
                    return as_table([to_view(rt, obj)], meta)
            elif srt is not rt:

                def view(obj: JsonObj) -> JsonObj:
                    return to_view(rt, obj)

            settings = self.settings
            return await serve_watch(
                request,
                self.store,
                WatchRequest(
                    rt=srt,
                    namespace=target.namespace,
                    labels=opts.labels,
                    fields=opts.fields,
                    resource_version=opts.resource_version,
                    send_initial_events=opts.send_initial_events,
                    allow_bookmarks=opts.allow_bookmarks,
                    timeout_s=float(opts.timeout_seconds or settings.default_watch_timeout_s),
                    bookmark_interval_s=settings.bookmark_interval_s,
                    too_large_rv_wait_s=settings.too_large_rv_wait_s,
                    queue_limit=settings.watch_queue_limit,
                    view=view,
                    hooks=self.chaos,
                ),
            )
        rv = opts.resource_version
        if rv not in ("", "0") and not opts.continue_token and opts.resource_version_match != "Exact":
            wanted = parse_resource_version(rv)
            if wanted > self.store.resource_version and not await self.store.wait_for_rv(
                wanted, self.settings.too_large_rv_wait_s
            ):
                raise too_large_resource_version(wanted, self.store.resource_version)
        result = self.store.list(
            srt,
            target.namespace,
            labels=opts.labels,
            fields=opts.fields,
            limit=opts.limit,
            continue_token=opts.continue_token,
            resource_version=rv,
            resource_version_match=opts.resource_version_match,
        )
        meta: JsonObj = {"resourceVersion": str(result.resource_version)}
        if result.continue_token:
            meta["continue"] = result.continue_token
        if result.remaining is not None:
            meta["remainingItemCount"] = result.remaining
        items = result.items if srt is rt else [to_view(rt, o) for o in result.items]
        if table is not None:
            return json_response(
                as_table(items, meta), 200, f"application/json;as=Table;v={table};g=meta.k8s.io"
            )
        return json_response(
            {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta, "items": items}
        )

    def _attrs(
        self, op: Operation, target: Target, name: str, old: JsonObj | None, dry_run: bool
    ) -> AdmissionAttributes:
        return AdmissionAttributes(
            operation=op,
            rt=target.rt,
            namespace=target.namespace or "",
            name=name,
            subresource=target.subresource or "",
            old_object=old,
            dry_run=dry_run,
        )

    async def _create(self, request: web.Request, target: Target) -> web.Response:
        rt = target.rt
        srt = self._storage_type(rt)
        body = await read_body(request, rt)
        dry_run = request.query.get("dryRun") == "All"
        obj = self.store.admit_create_input(srt, target.namespace, body)
        if self.admission.configured():
            obj = from_view(
                rt,
                await self.admission.mutate(
                    self._attrs("CREATE", target, str(obj["metadata"].get("name") or ""), None, dry_run),
                    to_view(rt, obj),
                ),
            )
        obj = self.store.prepare_create(srt, obj)
        if self.admission.configured():
            await self.admission.validate(
                self._attrs("CREATE", target, obj["metadata"]["name"], None, dry_run), to_view(rt, obj)
            )
        created = obj if dry_run else self.store.commit_create(srt, obj)
        return self._render(request, rt, created, 201)

    async def _write(
        self,
        request: web.Request,
        target: Target,
        produce: Callable[[], Any],
        *,
        retry: Callable[[Any], bool],
    ) -> web.Response:
        """Shared PUT/PATCH path: prepare, admission, commit; retry lost races when the body allows."""
        rt = target.rt
        srt = self._storage_type(rt)
        assert target.name is not None
        dry_run = request.query.get("dryRun") == "All"
        for attempt in range(UPDATE_RETRIES):
            body = produce()
            old, new = self.store.prepare_update(
                srt, target.namespace, target.name, body, subresource=target.subresource
            )
            if self.admission.configured():
                op: Operation = "CREATE" if old is None else "UPDATE"
                attrs = self._attrs(
                    op, target, target.name, None if old is None else to_view(rt, old), dry_run
                )
                mutated = from_view(rt, await self.admission.mutate(attrs, to_view(rt, new)))
                if mutated != new:
                    old, new = self.store.prepare_update(
                        srt, target.namespace, target.name, mutated, subresource=target.subresource
                    )
                await self.admission.validate(attrs, to_view(rt, new))
            if dry_run:
                return self._render(request, rt, new)
            try:
                result = self.store.commit_update(srt, old, new)
            except StatusError as e:
                if e.code == 409 and attempt + 1 < UPDATE_RETRIES and retry(body):
                    continue
                raise
            return self._render(request, rt, result, 201 if old is None else 200)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _update(self, request: web.Request, target: Target) -> web.Response:
        body = await read_body(request, target.rt)
        return await self._write(
            request,
            target,
            lambda: body,
            retry=lambda b: isinstance(b, dict) and not (b.get("metadata") or {}).get("resourceVersion"),
        )

    async def _patch(self, request: web.Request, target: Target) -> web.Response:
        rt, srt = target.rt, self._storage_type(target.rt)
        assert target.name is not None
        ctype = request.headers.get("Content-Type")
        kind = media_type(ctype)
        if kind not in (
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            raise unsupported_media_type()
        raw = await request.read()
        try:
            patch = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise bad_request(f"error decoding patch: {e}") from None
        seen_rv: dict[str, str] = {}

        def produce() -> Any:
            current = self.store.get(srt, target.namespace, target.name or "")
            seen_rv["rv"] = current["metadata"]["resourceVersion"]
            patched = apply_patch(ctype, to_view(rt, current), patch)
            return from_view(rt, patched)

        def retry(body: Any) -> bool:
            meta = body.get("metadata") if isinstance(body, dict) else None
            return isinstance(meta, dict) and meta.get("resourceVersion") == seen_rv.get("rv")

        return await self._write(request, target, produce, retry=retry)

    async def _delete_options(self, request: web.Request) -> JsonObj:
        body = await read_body(request, rt=None)
        if body is None:
            options: JsonObj = {}
            grace = int_param(request.query, "gracePeriodSeconds")
            if grace is not None:
                options["gracePeriodSeconds"] = grace
            if request.query.get("dryRun"):
                options["dryRun"] = [request.query["dryRun"]]
            return options
        if not isinstance(body, dict):
            raise bad_request("DeleteOptions must be a JSON object")
        return body

    async def _delete(self, request: web.Request, target: Target) -> web.Response:
        rt, srt = target.rt, self._storage_type(target.rt)
        assert target.name is not None
        options = await self._delete_options(request)
        grace = options.get("gracePeriodSeconds")
        if grace is not None and not isinstance(grace, int):
            raise bad_request("gracePeriodSeconds must be an integer")
        if "All" in (options.get("dryRun") or []):
            return self._render(request, rt, self.store.get(srt, target.namespace, target.name))
        obj, removed = self.store.delete(
            srt, target.namespace, target.name, grace_period=grace, preconditions=options.get("preconditions")
        )
        if removed and not rt.return_deleted:
            return json_response(success(rt, target.name, obj["metadata"].get("uid", "")))
        return self._render(request, rt, obj)

    async def _delete_collection(self, request: web.Request, target: Target) -> web.Response:
        rt, srt = target.rt, self._storage_type(target.rt)
        q = request.query
        options = await self._delete_options(request)
        deleted = self.store.delete_collection(
            srt,
            target.namespace,
            labels=LabelSelector.parse(q.get("labelSelector", "")),
            fields=FieldSelector.parse(q.get("fieldSelector", ""), rt),
            grace_period=options.get("gracePeriodSeconds"),
        )
        return json_response(
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": [to_view(rt, o) for o in deleted],
            }
        )

    async def _bind(self, namespace: str, name: str, body: Any) -> web.Response:
        bind_pod(self.store, namespace, name, body)
        return json_response(success(code=201), 201)


__all__ = ["ApiServer", "ApiServerSettings", "FaultRule", "Faults", "Store"]
