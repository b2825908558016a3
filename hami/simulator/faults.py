"""Fault injection for the simulated API server: plain, mutable rules tests switch on and off.

A rule matches requests by method and path prefix, and optionally by Kubernetes verb (``get``,
``list``, ``watch``, ``create``, ``update``, ``patch``, ``delete``, ``deletecollection``) and
resource (``pods``, ``nodes``, ``pods/binding``, ...), and, a limited number of times, answers with an
error Status (429 with ``Retry-After``, 500, 503, ...), delays the request, holds it until the test
releases it, hangs it until the client gives up (a timeout as the client sees it), or drops the
connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from hami.simulator.statuses import REASON_BY_CODE, StatusError

_WATCH_VALUES = frozenset({"true", "1"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestInfo:
    """What a request does, in Kubernetes terms (kube-apiserver's ``RequestInfo``, simplified)."""

    verb: str
    """get, list, watch, create, update, patch, delete, deletecollection; "" for non-resource paths."""
    resource: str = ""
    """Plural resource name, with ``/<subresource>`` when there is one (``pods/binding``)."""
    namespace: str = ""
    name: str = ""


def request_info(method: str, path: str, query: Mapping[str, str] | None = None) -> RequestInfo:
    """Classify a request by its method, path and query (no routing table needed)."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        rest = parts[3:]
    else:
        return RequestInfo(verb="")
    watch_path = rest[:1] == ["watch"]
    if watch_path:
        rest = rest[1:]
    namespace = ""
    if (
        rest[:1] == ["namespaces"]
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return RequestInfo(verb="")
    resource = rest[0] if len(rest) < 3 else f"{rest[0]}/{rest[2]}"
    name = rest[1] if len(rest) >= 2 else ""
    watching = watch_path or (query is not None and query.get("watch", "").lower() in _WATCH_VALUES)
    method = method.upper()
    if method == "GET":
        verb = "watch" if watching else ("get" if name else "list")
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = method.lower()
    return RequestInfo(verb=verb, resource=resource, namespace=namespace, name=name)


@dataclass(slots=True, kw_only=True)
class FaultRule:
    path_prefix: str = "/"
    methods: frozenset[str] = frozenset()
    """Empty matches every method."""
    verbs: frozenset[str] = frozenset()
    """Kubernetes verbs (:class:`RequestInfo`); empty matches every verb."""
    resources: frozenset[str] = frozenset()
    """Plural resources, ``pods/binding`` for a subresource; empty matches every resource."""
    query: Mapping[str, str] = field(default_factory=dict)
    """Query parameters the request must carry with these values (e.g. a ``fieldSelector``)."""
    status: int = 0
    """HTTP code to answer with (0: none, only delay, hang or drop)."""
    message: str = "injected fault"
    retry_after_s: int = 0
    delay_s: float = 0.0
    hang: bool = False
    """Never answer: the request waits until the client gives up (its timeout) or the server stops."""
    release: asyncio.Event | None = None
    """Hold matching requests until this is set, then serve them (a call frozen mid-flight)."""
    drop: bool = False
    """Close the connection without an answer."""
    times: int = 1
    """How many matching requests it affects; negative = unlimited."""
    hits: int = 0

    def matches(
        self,
        method: str,
        path: str,
        info: RequestInfo | None = None,
        query: Mapping[str, str] | None = None,
    ) -> bool:
        if self.times >= 0 and self.hits >= self.times:
            return False
        if not path.startswith(self.path_prefix) or (self.methods and method not in self.methods):
            return False
        if self.query and (query is None or any(query.get(k) != v for k, v in self.query.items())):
            return False
        if self.verbs or self.resources:
            info = info or request_info(method, path)
            if self.verbs and info.verb not in self.verbs:
                return False
            if self.resources and info.resource not in self.resources:
                return False
        return True

    def error(self) -> StatusError | None:
        if not self.status:
            return None
        details = {"retryAfterSeconds": self.retry_after_s} if self.retry_after_s else None
        return StatusError(self.status, REASON_BY_CODE.get(self.status, ""), self.message, details)


@dataclass(slots=True)
class Faults:
    rules: list[FaultRule] = field(default_factory=list)

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        if rule in self.rules:
            self.rules.remove(rule)

    def clear(self) -> None:
        self.rules.clear()

    def take(self, method: str, path: str, query: Mapping[str, str] | None = None) -> FaultRule | None:
        """The first live rule matching this request (its hit is counted)."""
        info: RequestInfo | None = None
        for rule in self.rules:
            if (rule.verbs or rule.resources) and info is None:
                info = request_info(method, path, query)
            if rule.matches(method, path, info, query):
                rule.hits += 1
                return rule
        return None
