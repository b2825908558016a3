"""``POST /webhook``: the AdmissionReview envelope around :mod:`hami.core.admission` (spec §3,
k8s-apis.md §9.1).

The answer is always HTTP 200 with an AdmissionReview of the request's ``apiVersion``
(``admission.k8s.io/v1`` or ``v1beta1``; ``v1`` when the request's is unusable) carrying
``response.uid`` = ``request.uid`` and the decision's status:

* allowed → ``allowed: true, status.code: 200`` (+ ``patchType: JSONPatch`` and the base64
  ``patch`` when the pod changed, ``status.message`` and ``warnings`` when there are some);
* denied → ``allowed: false, status: {code: 403, reason: Forbidden, message}``;
* errored → ``allowed: false, status: {code: 400|500, message}``.

Every input problem is a 400 naming what was wrong (content type, empty or oversized body,
malformed JSON, wrong apiVersion/kind, missing ``request``/``uid``/``object``, undecodable pod);
an unexpected exception is logged and answered 500. The handler never fails the HTTP request, so
the API server always gets a decision (``failurePolicy: Ignore`` only covers transport failures).

The decision itself is synchronous (:meth:`WebhookHandler.respond`). An allowed decision with
``prerequisites`` (the DRA mode's ResourceClaimTemplates) is only answered by
:meth:`WebhookHandler.answer` once the handler's :data:`PrerequisiteCreator` made them exist;
skipped when ``request.dryRun`` is true (the registration says ``sideEffects: NoneOnDryRun``).
A creation failure turns the answer into errored 500 with the creator's message, so a pod is
never admitted pointing at a template that does not exist.

Wiring (composition root / ``hami.scheduler.app``)::

    admission = PodAdmission(device_config, AdmissionOptions(scheduler_name=..., ...))
    handler = WebhookHandler(admission, capacity=SnapshotCapacity(ledger.snapshot, synced))
    app = build_app(service, extra_routes=[webhook_routes(handler)])   # or add_webhook_routes(app, handler)
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import orjson
from aiohttp import web

from hami.core.admission import AdmissionDecision, Outcome, PodAdmitter
from hami.core.cluster_capacity import ClusterCapacity, capacity_of
from hami.core.errors import HamiError
from hami.core.snapshot import ClusterSnapshot

logger = logging.getLogger(__name__)

WEBHOOK_PATH: Final = "/webhook"
API_V1: Final = "admission.k8s.io/v1"
API_V1BETA1: Final = "admission.k8s.io/v1beta1"
SUPPORTED_API_VERSIONS: Final = (API_V1, API_V1BETA1)
KIND: Final = "AdmissionReview"
DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024  # a pod is at most ~1.5 MiB; AdmissionReview adds oldObject
_EXCERPT: Final = 64

CapacityProvider = Callable[[], ClusterCapacity | None]
"""Registered device capacity from the scheduler's cache; None while the cache is not synced."""

PrerequisiteCreator = Callable[[Sequence[Mapping[str, object]]], Awaitable[None]]
"""Makes every given object exist (already existing is fine). Raises :class:`HamiError` whose
message is put in the errored AdmissionReview; anything else is logged and answered 500."""


def _short(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


class SnapshotCapacity:
    """A :data:`CapacityProvider` over the ledger: recomputed only when the snapshot generation moves."""

    __slots__ = ("_memo", "_snapshot", "_synced")

    def __init__(self, snapshot: Callable[[], ClusterSnapshot], synced: Callable[[], bool]) -> None:
        self._snapshot = snapshot
        self._synced = synced
        self._memo: tuple[int, ClusterCapacity] | None = None

    def __call__(self) -> ClusterCapacity | None:
        if not self._synced():
            return None
        snap = self._snapshot()
        if self._memo is None or self._memo[0] != snap.generation:
            self._memo = (snap.generation, capacity_of(snap))
        return self._memo[1]


class _BadReview(Exception):
    """An unusable AdmissionReview: answered as errored 400 with this message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Verdict:
    api_version: str
    uid: str
    decision: AdmissionDecision
    dry_run: bool = False


class WebhookHandler:
    """The ``/webhook`` endpoint. :meth:`respond` is the decision, synchronous and total;
    :meth:`answer` adds the creation of the decision's prerequisites (see the module docstring)."""

    __slots__ = ("_admitter", "_capacity", "_prerequisites", "max_body")

    def __init__(
        self,
        admitter: PodAdmitter,
        *,
        capacity: CapacityProvider | None = None,
        prerequisites: PrerequisiteCreator | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self._admitter = admitter
        self._capacity = capacity
        self._prerequisites = prerequisites
        self.max_body = max_body

    async def handle(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        review = (
            _errored_review(API_V1, "", f"request body larger than {self.max_body} bytes")
            if body is None
            else await self.answer(body, request.content_type)
        )
        return web.Response(body=orjson.dumps(review), content_type="application/json")

    async def answer(self, body: bytes, content_type: str) -> dict[str, object]:
        """The AdmissionReview answering ``body``, after creating what an allowed decision needs
        (not on a dry run); never raises (but BaseException)."""
        verdict = self._decide(body, content_type)
        decision = verdict.decision
        if decision.allowed and decision.prerequisites and not verdict.dry_run:
            decision = await self._create_prerequisites(verdict)
        return _review(verdict.api_version, verdict.uid, decision)

    async def _create_prerequisites(self, verdict: _Verdict) -> AdmissionDecision:
        wanted = verdict.decision.prerequisites
        what = ", ".join(sorted({_object_ref(o) for o in wanted}))
        if self._prerequisites is None:
            return AdmissionDecision.error(
                500, f"the pod needs {what}, but this webhook has no API client to create them"
            )
        try:
            await self._prerequisites(wanted)
        except HamiError as e:  # the creator's message names the object and the problem
            logger.warning("webhook: uid=%s: %s", _short(verdict.uid), e)
            return AdmissionDecision.error(500, str(e))
        except Exception as e:
            logger.exception("webhook: uid=%s: creating %s failed", _short(verdict.uid), what)
            return AdmissionDecision.error(500, f"cannot create {what}: internal error: {type(e).__name__}")
        return verdict.decision

    async def _read(self, request: web.Request) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(65536):
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def respond(self, body: bytes, content_type: str) -> dict[str, object]:
        """The AdmissionReview of the decision on ``body``, without creating its prerequisites
        (:meth:`answer` does); never raises (but BaseException)."""
        verdict = self._decide(body, content_type)
        return _review(verdict.api_version, verdict.uid, verdict.decision)

    def _decide(self, body: bytes, content_type: str) -> _Verdict:
        api_version, uid = API_V1, ""
        try:
            if content_type != "application/json":
                raise _BadReview(f"Content-Type={_short(content_type)!s}, expected application/json")
            if not body.strip():
                raise _BadReview("request body is empty")
            try:
                review = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise _BadReview(f"malformed JSON: {e}") from None
            if not isinstance(review, dict):
                raise _BadReview(f"expected an AdmissionReview object, got JSON {type(review).__name__}")
            version = review.get("apiVersion")
            if version in SUPPORTED_API_VERSIONS:
                api_version = str(version)
            request = review.get("request")
            if isinstance(request, dict) and isinstance(request.get("uid"), str):
                uid = request["uid"]
            _check_envelope(review)
            assert isinstance(request, dict)
            capacity = self._capacity() if self._capacity is not None else None
            decision = self._admitter.review_request(request, capacity=capacity)
            _log(request, decision)
            return _Verdict(
                api_version=api_version, uid=uid, decision=decision, dry_run=request.get("dryRun") is True
            )
        except _BadReview as e:
            logger.info("webhook: bad AdmissionReview: %s", e)
            return _Verdict(api_version=api_version, uid=uid, decision=AdmissionDecision.error(400, str(e)))
        except Exception as e:
            logger.exception("webhook: internal error on AdmissionReview uid=%s", _short(uid))
            return _Verdict(
                api_version=api_version,
                uid=uid,
                decision=AdmissionDecision.error(500, f"internal error: {type(e).__name__}"),
            )


def _check_envelope(review: Mapping[str, object]) -> None:
    version, kind = review.get("apiVersion"), review.get("kind")
    if version not in SUPPORTED_API_VERSIONS:
        raise _BadReview(f"apiVersion {_short(version)}: expected {API_V1} or {API_V1BETA1}")
    if kind != KIND:
        raise _BadReview(f"kind {_short(kind)}: expected {KIND}")
    request = review.get("request")
    if request is None:
        raise _BadReview("AdmissionReview has no request")
    if not isinstance(request, dict):
        raise _BadReview(f"request: expected an object, got JSON {type(request).__name__}")
    uid = request.get("uid")
    if uid is None or uid == "":
        raise _BadReview("request.uid is missing")
    if not isinstance(uid, str):
        raise _BadReview(f"request.uid: expected a string, got JSON {type(uid).__name__}")


def _review(api_version: str, uid: str, decision: AdmissionDecision) -> dict[str, object]:
    status: dict[str, object] = {"code": decision.code}
    if decision.outcome is Outcome.DENIED:
        status["reason"] = "Forbidden"
    if decision.message:
        status["message"] = decision.message
    response: dict[str, object] = {"uid": uid, "allowed": decision.allowed, "status": status}
    if decision.allowed and decision.patch:
        try:
            patch = orjson.dumps(list(decision.patch))
        except TypeError as e:  # a value orjson cannot write (e.g. an integer over 64 bits)
            return _errored_review(api_version, uid, f"cannot encode the patch: {e}", code=500)
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(patch).decode("ascii")
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    return {"apiVersion": api_version, "kind": KIND, "response": response}


def _errored_review(api_version: str, uid: str, message: str, *, code: int = 400) -> dict[str, object]:
    return _review(api_version, uid, AdmissionDecision.error(code, message))


def _object_ref(obj: Mapping[str, object]) -> str:
    """``ResourceClaimTemplate demo/hami-gpu-1x4000mi-0c`` for messages."""
    meta = obj.get("metadata")
    name, namespace = "", ""
    if isinstance(meta, Mapping):
        name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "")
    where = f"{namespace}/{name}" if namespace else name
    return f"{_short(obj.get('kind') or 'object')} {_short(where)}"


def _log(request: Mapping[str, object], decision: AdmissionDecision) -> None:
    obj = request.get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = ""
    if isinstance(meta, dict):
        name = str(meta.get("name") or meta.get("generateName") or "")
    pod = f"{_short(request.get('namespace') or '')}/{_short(name)}"
    if decision.allowed:
        logger.debug("webhook: pod %s allowed, %d patch ops", pod, len(decision.patch))
    else:
        logger.info("webhook: pod %s %s (%d): %s", pod, decision.outcome, decision.code, decision.message)


def add_webhook_routes(app: web.Application, handler: WebhookHandler, *, path: str = WEBHOOK_PATH) -> None:
    """Mount ``POST <path>`` (other methods get aiohttp's 405)."""
    app.router.add_post(path, handler.handle)


def webhook_routes(
    handler: WebhookHandler,
    *,
    path: str = WEBHOOK_PATH,
    observe: Callable[[float], object] | None = None,
) -> Callable[[web.Application], list[web.RouteDef]]:
    """The same route as a ``hami.scheduler.app.RouteFactory`` (``build_app(extra_routes=[...])``);
    ``observe`` gets each request's handling time in seconds (the webhook latency histogram)."""

    async def timed(request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            return await handler.handle(request)
        finally:
            if observe is not None:
                observe(time.perf_counter() - started)

    def factory(app: web.Application) -> list[web.RouteDef]:
        return [web.post(path, handler.handle if observe is None else timed)]

    return factory
