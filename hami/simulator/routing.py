"""Request parsing of the simulated API server: URL → resource target, query options, bodies.

Paths follow kube-apiserver's layout (k8s-apis.md §6.1): ``/api/v1/...`` and ``/apis/<g>/<v>/...``,
``namespaces/<ns>/<plural>[/<name>[/<subresource>]]``, cluster-wide ``<plural>[/<name>[/<sub>]]``,
the deprecated ``watch/`` prefix, and the legacy ``namespaces/<ns>/bindings``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import yaml
from aiohttp import web

from hami.simulator import protowire
from hami.simulator.conversions import from_view
from hami.simulator.history import parse_resource_version
from hami.simulator.patching import media_type
from hami.simulator.resources import PODS, REGISTRY, ResourceType
from hami.simulator.selectors import FieldSelector, LabelSelector
from hami.simulator.statuses import StatusError, bad_request, field_error, invalid

NOT_FOUND_MSG = "the server could not find the requested resource"


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool = False


def not_found_path() -> StatusError:
    return StatusError(404, "NotFound", NOT_FOUND_MSG)


def method_not_allowed() -> StatusError:
    return StatusError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def resolve(group: str, version: str, tail: str) -> Target:
    parts = [p for p in tail.split("/") if p]
    watch_path = False
    if parts[:1] == ["watch"]:
        watch_path, parts = True, parts[1:]
    if len(parts) >= 3 and parts[0] == "namespaces":
        ns = parts[1]
        if not group and parts[2] == "bindings" and len(parts) == 3:
            return Target(rt=PODS, namespace=ns, name=None, subresource="bindings")
        rt = REGISTRY.find(group, version, parts[2])
        if rt is not None:
            if rt.namespaced and len(parts) <= 5:
                name = parts[3] if len(parts) >= 4 else None
                sub = parts[4] if len(parts) == 5 else None
                return Target(rt=rt, namespace=ns, name=name, subresource=sub, watch_path=watch_path)
            raise not_found_path()
    if parts:
        rt = REGISTRY.find(group, version, parts[0])
        if rt is not None and len(parts) <= 3:
            name = parts[1] if len(parts) >= 2 else None
            sub = parts[2] if len(parts) == 3 else None
            if not rt.namespaced or name is None:
                return Target(rt=rt, namespace=None, name=name, subresource=sub, watch_path=watch_path)
    raise not_found_path()


def parse_bool(value: str | None) -> bool | None:
    """apimachinery's query bool: only ``0``/``false`` (any case) are false; present otherwise true."""
    if value is None:
        return None
    return value.lower() not in ("0", "false")


def int_param(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"invalid value for {name}: {raw!r} is not an integer") from None


def json_response(data: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers={"Content-Type": content_type})


def table_version(accept: str) -> str | None:
    """``meta.k8s.io`` Table version the client accepts (``v1``/``v1beta1``), or None for plain JSON."""
    for media in accept.split(","):
        params = {}
        for param in media.split(";")[1:]:
            key, sep, value = param.partition("=")
            if sep:
                params[key.strip()] = value.strip()
        if (
            params.get("as") == "Table"
            and params.get("g") == "meta.k8s.io"
            and params.get("v") in ("v1", "v1beta1")
        ):
            return params["v"]
    return None


def _list_options_invalid(field: str, kind: str, detail: str) -> StatusError:
    return invalid(None, "", [field_error(kind, field, detail)], kind="ListOptions", group="meta.k8s.io")


@dataclass(frozen=True, slots=True, kw_only=True)
class ListOptions:
    labels: LabelSelector
    fields: FieldSelector
    resource_version: str
    resource_version_match: str
    watch: bool
    send_initial_events: bool | None
    allow_bookmarks: bool
    timeout_seconds: int
    limit: int
    continue_token: str

    @classmethod
    def parse(cls, query: Mapping[str, str], target: Target) -> ListOptions:
        """The query of a LIST/WATCH, validated like apimachinery's ListOptions (422 on bad combinations)."""
        rt = target.rt
        fields = FieldSelector.parse(query.get("fieldSelector", ""), rt)
        if target.name is not None:  # watching one object by URL = a metadata.name field selector
            by_name = FieldSelector.parse(f"metadata.name={target.name}", rt)
            fields = FieldSelector(requirements=(*fields.requirements, *by_name.requirements))
        rv = query.get("resourceVersion", "")
        if rv not in ("", "0"):
            parse_resource_version(rv)
        rv_match = query.get("resourceVersionMatch", "")
        watch = bool(parse_bool(query.get("watch"))) or target.watch_path
        send_initial = parse_bool(query.get("sendInitialEvents"))
        allow_bookmarks = bool(parse_bool(query.get("allowWatchBookmarks")))
        if rv_match not in ("", "NotOlderThan", "Exact"):
            raise _list_options_invalid(
                "resourceVersionMatch",
                "NotSupported",
                f'"{rv_match}": supported values: "Exact", "NotOlderThan", ""',
            )
        if send_initial is not None:
            if not watch:
                raise _list_options_invalid(
                    "sendInitialEvents", "Forbidden", "sendInitialEvents is forbidden for list"
                )
            if rv_match != "NotOlderThan":
                raise _list_options_invalid(
                    "resourceVersionMatch",
                    "Forbidden",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                )
            if not allow_bookmarks:
                raise _list_options_invalid(
                    "allowWatchBookmarks",
                    "Forbidden",
                    "sendInitialEvents requires setting allowWatchBookmarks to true",
                )
        elif rv_match and not rv:
            raise _list_options_invalid(
                "resourceVersionMatch",
                "Forbidden",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            )
        elif rv_match and watch:
            raise _list_options_invalid(
                "resourceVersionMatch", "Forbidden", "resourceVersionMatch is forbidden for watch"
            )
        return cls(
            labels=LabelSelector.parse(query.get("labelSelector", "")),
            fields=fields,
            resource_version=rv,
            resource_version_match=rv_match,
            watch=watch,
            send_initial_events=send_initial,
            allow_bookmarks=allow_bookmarks,
            timeout_seconds=max(int_param(query, "timeoutSeconds") or 0, 0),
            limit=max(int_param(query, "limit") or 0, 0),
            continue_token=query.get("continue", ""),
        )


def _decode_text(ctype: str, raw: bytes) -> Any:
    try:
        if ctype in ("application/yaml", "application/apply-patch+yaml"):
            return yaml.safe_load(raw)
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, yaml.YAMLError) as e:
        raise bad_request(f"the body of the request could not be decoded: {e}") from None


async def read_body(request: web.Request, rt: ResourceType | None) -> Any:
    """The decoded JSON (or YAML) body; checked against ``rt``'s kind and converted to stored form."""
    ctype = media_type(request.headers.get("Content-Type"))
    raw = await request.read()
    if "cbor" in ctype:
        raise StatusError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: "
            f"application/json, application/yaml (got {ctype})",
        )
    if not raw.strip():
        return None
    if ctype == "application/vnd.kubernetes.protobuf":
        data: Any = protowire.decode(raw)
    else:
        data = _decode_text(ctype, raw)
    if rt is not None and isinstance(data, dict):
        kind, api_version = data.get("kind"), data.get("apiVersion")
        if (kind and kind != rt.kind) or (api_version and api_version != rt.api_version):
            raise bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: the object is '
                f"{api_version}, Kind={kind}"
            )
        return from_view(rt, data)
    return data
