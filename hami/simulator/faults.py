"""Fault injection for the simulated API server: plain, mutable rules tests switch on and off.

A rule matches requests by method and path prefix and, a limited number of times, answers with an
error Status (429 with ``Retry-After``, 500, 503, ...), delays the request, or drops the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hami.simulator.statuses import REASON_BY_CODE, StatusError


@dataclass(slots=True, kw_only=True)
class FaultRule:
    path_prefix: str = "/"
    methods: frozenset[str] = frozenset()
    """Empty matches every method."""
    status: int = 0
    """HTTP code to answer with (0: none, only delay or drop)."""
    message: str = "injected fault"
    retry_after_s: int = 0
    delay_s: float = 0.0
    drop: bool = False
    """Close the connection without an answer."""
    times: int = 1
    """How many matching requests it affects; negative = unlimited."""
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times >= 0 and self.hits >= self.times:
            return False
        return path.startswith(self.path_prefix) and (not self.methods or method in self.methods)

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

    def clear(self) -> None:
        self.rules.clear()

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first live rule matching this request (its hit is counted)."""
        for rule in self.rules:
            if rule.matches(method, path):
                rule.hits += 1
                return rule
        return None
