"""The scheduler-extender HTTP API (hami-scheduler-spec.md §2, k8s-apis.md §8).

The wire types of ``k8s.io/kube-scheduler/extender/v1`` carry no JSON tags, so keys are Go field
names: input keys are matched case-insensitively (the last matching key wins, as Go's decoder
does) and output always has every key, in Go's field order, with ``null`` for unset values and
``""`` for no error; strings are escaped like Go (``<`` → ``\\u003c``) and ``FailedNodes`` keys
are sorted as Go writes maps. Every answer is HTTP 200: a bad body, a follower, an unsynced
cache or an internal failure is an ``Error`` in the result, never a 500 or a hang.

Routes: ``POST /filter``, ``POST /prioritize`` (HostPriorityList, 0..10), ``POST /bind``,
``GET /why/{namespace}/{name}`` (the explanation record as JSON), plus ``GET /healthz`` and
``GET /readyz`` (200 only while caches are synced and this replica leads).

A refusal (follower, unsynced, shutting down) also closes the connection: kube-scheduler keeps
its connection to the extender alive, and through a Service that connection would otherwise stay
pinned to a replica that is no longer the leader; reconnecting reaches the ready one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from hami.core.gojson import go_string
from hami.metrics.instruments import SchedulerInstruments
from hami.scheduler.binder import BindArgs, Binder
from hami.scheduler.cycle import FilterCycle, FilterOutcome
from hami.scheduler.explain import WhyBook

logger = logging.getLogger(__name__)

JSON = "application/json"


class ArgsError(ValueError):
    """The request body is not the expected extender struct (message like Go's decoder's)."""


# ----------------------------------------------------------------------------------- decoding


def _field(obj: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """Go's field match: every key equal to ``name`` ignoring case assigns; the last one wins."""
    found, value = False, None
    lowered = name.lower()
    for key, item in obj.items():
        if key == name or key.lower() == lowered:
            found, value = True, item
    return found, value


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _loads(body: bytes, struct: str) -> Mapping[str, Any]:
    if not body.strip():
        raise ArgsError("EOF")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ArgsError(f"invalid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ArgsError(f"json: cannot unmarshal {_json_kind(parsed)} into Go value of type {struct}")
    return parsed


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterArgs:
    pod: Mapping[str, Any]
    node_names: tuple[str, ...]
    nodes: tuple[Mapping[str, Any], ...] | None  # set when the scheduler is not nodeCacheCapable


def decode_filter_args(body: bytes) -> FilterArgs:
    """ExtenderArgs: ``Pod``, ``Nodes``, ``NodeNames``."""
    obj = _loads(body, "v1.ExtenderArgs")
    _, pod = _field(obj, "Pod")
    if pod is None:
        raise ArgsError("extender args missing pod")
    if not isinstance(pod, dict):
        raise ArgsError(
            f"json: cannot unmarshal {_json_kind(pod)} into Go struct field ExtenderArgs.Pod of type v1.Pod"
        )
    has_names, names = _field(obj, "NodeNames")
    _, nodes = _field(obj, "Nodes")
    if names is not None:
        if not isinstance(names, list) or not set(map(type, names)) <= {str}:  # C speed for 1000s of names
            raise ArgsError(
                "json: cannot unmarshal into Go struct field ExtenderArgs.NodeNames of type []string"
            )
        return FilterArgs(pod=pod, node_names=tuple(names), nodes=None)
    if nodes is not None:
        items = nodes.get("items") if isinstance(nodes, dict) else None
        if not isinstance(items, list | type(None)):
            raise ArgsError(
                "json: cannot unmarshal into Go struct field ExtenderArgs.Nodes of type v1.NodeList"
            )
        node_objs = tuple(i for i in items or () if isinstance(i, dict))
        return FilterArgs(
            pod=pod,
            node_names=tuple(str((n.get("metadata") or {}).get("name", "")) for n in node_objs),
            nodes=node_objs,
        )
    raise ArgsError(
        "extender args carry neither NodeNames nor Nodes" if not has_names else "NodeNames is null"
    )


def decode_bind_args(body: bytes) -> BindArgs:
    """ExtenderBindingArgs: ``PodName``, ``PodNamespace``, ``PodUID``, ``Node``."""
    obj = _loads(body, "v1.ExtenderBindingArgs")
    values: dict[str, str] = {}
    for name in ("PodName", "PodNamespace", "PodUID", "Node"):
        _, value = _field(obj, name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ArgsError(
                f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                f"ExtenderBindingArgs.{name} of type string"
            )
        values[name] = value
    if not values["PodName"] or not values["Node"]:
        raise ArgsError("binding args need PodName and Node")
    return BindArgs(
        pod_name=values["PodName"],
        pod_namespace=values["PodNamespace"] or "default",
        pod_uid=values["PodUID"],
        node=values["Node"],
    )


# ----------------------------------------------------------------------------------- encoding


def _string_list(values: Sequence[str] | None) -> str:
    if values is None:
        return "null"
    return "[" + ",".join(go_string(v) for v in values) + "]"


def _string_map(values: Mapping[str, str] | None) -> str:
    if values is None:
        return "null"
    return "{" + ",".join(f"{go_string(k)}:{go_string(values[k])}" for k in sorted(values)) + "}"


def encode_filter_result(
    outcome: FilterOutcome, *, nodes: Sequence[Mapping[str, Any]] | None = None
) -> bytes:
    """ExtenderFilterResult with every key present, Go's field order and escaping."""
    nodes_json = "null"
    if nodes is not None and outcome.node_names is not None:
        chosen = set(outcome.node_names)
        items = [n for n in nodes if (n.get("metadata") or {}).get("name") in chosen]
        nodes_json = orjson.dumps({"metadata": {}, "items": items}).decode()
    return (
        f'{{"Nodes":{nodes_json},"NodeNames":{_string_list(outcome.node_names)},'
        f'"FailedNodes":{_string_map(outcome.failed_nodes)},"FailedAndUnresolvableNodes":null,'
        f'"Error":{go_string(outcome.error)}}}'
    ).encode()


def encode_error_result(error: str) -> bytes:
    return encode_filter_result(FilterOutcome(error=error))


def encode_bind_result(error: str) -> bytes:
    return f'{{"Error":{go_string(error)}}}'.encode()


def encode_priorities(scores: Sequence[tuple[str, int]]) -> bytes:
    return ("[" + ",".join(f'{{"Host":{go_string(h)},"Score":{s}}}' for h, s in scores) + "]").encode()


# ----------------------------------------------------------------------------------- handlers


Gate = Callable[[], str | None]
"""Returns None when the request may proceed, else why not (e.g. "not leader: ...")."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtenderService:
    """What the extender routes need; built by the role's composition root."""

    cycle: FilterCycle
    binder: Binder
    why: WhyBook
    serving: Gate  # synced and leading: may decide and bind
    ready: Gate  # /readyz
    instruments: SchedulerInstruments | None = None


EXTENDER = web.AppKey("hami_scheduler_extender", ExtenderService)


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON)


def _refused(body: bytes) -> web.Response:
    response = _json(body)
    response.force_close()
    return response


async def _read(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise ArgsError(f"request body too large: {e.text}") from None


async def handle_filter(request: web.Request) -> web.Response:
    service = request.app[EXTENDER]
    started = time.perf_counter()
    try:
        try:
            args = decode_filter_args(await _read(request))
        except ArgsError as e:
            return _json(encode_error_result(str(e)))
        refused = service.serving()
        if refused is not None:
            return _refused(encode_error_result(refused))
        try:
            outcome = await service.cycle.filter(args.pod, args.node_names)
        except Exception as e:  # never a 500: kube-scheduler retries the pod
            logger.error("filter failed", exc_info=True)
            return _json(encode_error_result(f"internal error: {type(e).__name__}: {e}"))
        return _json(encode_filter_result(outcome, nodes=args.nodes))
    finally:
        if service.instruments is not None:
            service.instruments.filter_seconds.observe(time.perf_counter() - started)


async def handle_prioritize(request: web.Request) -> web.Response:
    service = request.app[EXTENDER]
    try:
        args = decode_filter_args(await _read(request))
    except ArgsError as e:
        logger.info("prioritize: bad arguments: %s", e)
        return _json(b"[]")
    if service.serving() is not None:
        return _refused(encode_priorities([(name, 0) for name in args.node_names]))
    try:
        scores = service.cycle.prioritize(args.pod, args.node_names)
    except Exception:
        logger.error("prioritize failed", exc_info=True)
        scores = [(name, 0) for name in args.node_names]
    return _json(encode_priorities(scores))


async def handle_bind(request: web.Request) -> web.Response:
    service = request.app[EXTENDER]
    started = time.perf_counter()
    try:
        try:
            args = decode_bind_args(await _read(request))
        except ArgsError as e:
            return _json(encode_bind_result(str(e)))
        refused = service.serving()
        if refused is not None:
            return _refused(encode_bind_result(refused))
        try:
            error = await service.binder.bind(args)
        except Exception as e:
            logger.error("bind failed", exc_info=True)
            error = f"internal error: {type(e).__name__}: {e}"
        return _json(encode_bind_result(error))
    finally:
        if service.instruments is not None:
            service.instruments.bind_seconds.observe(time.perf_counter() - started)


async def handle_why(request: web.Request) -> web.Response:
    service = request.app[EXTENDER]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    record = service.why.get(namespace, name)
    if record is None:
        body = {
            "error": f"no decision recorded for pod {namespace}/{name} (not filtered by this replica yet, "
            "scheduled long ago, or deleted)"
        }
        return _json(orjson.dumps(body), status=404)
    return _json(orjson.dumps(record.to_json()))


async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def handle_readyz(request: web.Request) -> web.Response:
    why = request.app[EXTENDER].ready()
    if why is None:
        return web.Response(status=200)
    return web.Response(status=503, text=why)


def add_extender_routes(app: web.Application, service: ExtenderService) -> None:
    app[EXTENDER] = service
    app.router.add_post("/filter", handle_filter)
    app.router.add_post("/prioritize", handle_prioritize)
    app.router.add_post("/bind", handle_bind)
    app.router.add_get("/why/{namespace}/{name}", handle_why)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
