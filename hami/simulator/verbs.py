"""The resource endpoints of the simulated kube-apiserver: which verb a resource path asks for,
and each verb over the :class:`~hami.simulator.store.Store` (k8s-apis.md §6).

Writes go the way kube-apiserver takes them: decode, mutating admission, the store's strategy
(defaults, server-owned fields, validation), validating admission, then commit; ``dryRun=All``
stops before the commit. PUT and PATCH share one path that retries a lost race only when the
client did not ask for optimistic locking (no resourceVersion in the body, or a patch computed
against the object it lost to). Events of ``events.k8s.io/v1`` share the storage of core events
and are converted on the way in and out (:mod:`hami.simulator.conversions`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from hami.simulator.admission import AdmissionAttributes, AdmissionChain, Operation
from hami.simulator.binding import bind_pod
from hami.simulator.chaos import ApiChaos
from hami.simulator.conversions import from_view, to_view
from hami.simulator.history import parse_resource_version
from hami.simulator.patching import apply_patch, media_type, unsupported_media_type
from hami.simulator.resources import EVENTS, ResourceType
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
from hami.simulator.statuses import StatusError, bad_request, success, too_large_resource_version
from hami.simulator.store import JsonObj, Store
from hami.simulator.tables import to_table
from hami.simulator.watching import WatchRequest, serve_watch

if TYPE_CHECKING:
    from hami.simulator.server import ApiServerSettings

UPDATE_RETRIES = 8


class ResourceVerbs:
    """get, list, watch, create, update, patch, delete, deletecollection and bind on resources."""

    def __init__(
        self, store: Store, admission: AdmissionChain, chaos: ApiChaos, settings: ApiServerSettings
    ) -> None:
        self.store = store
        self.admission = admission
        self.chaos = chaos
        self.settings = settings

    async def serve(self, request: web.Request, group: str, version: str, tail: str) -> web.StreamResponse:
        """Answer a request for ``tail`` below ``/api/v1`` (group "") or ``/apis/<group>/<version>``."""
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
