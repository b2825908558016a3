"""Running the invariants of :mod:`rel_invariants` during a scenario: every ``poll_s`` while it
runs, once more at the end, with soft violations counted only when they persist and liveness
judged only outside disturbance windows; the counts go to ``$HAMI_SOAK_REPORT`` for the soak."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rel_invariants import ClusterView, InvariantChecker, InvariantSettings, Violation

JsonObj = dict[str, Any]
REPORT_ENV = "HAMI_SOAK_REPORT"


@dataclass(slots=True)
class InvariantReport:
    scenario: str
    checks: int
    violations: dict[tuple[str, str], Violation]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for kind, _ in self.violations:
            out[kind] += 1
        return dict(out)

    def to_json(self) -> JsonObj:
        return {
            "scenario": self.scenario,
            "checks": self.checks,
            "violations": sum(self.counts().values()),
            "counts": self.counts(),
            "examples": [str(v) for v in list(self.violations.values())[:10]],
        }


class InvariantMonitor:
    """Checks the invariants every ``poll_s`` while a scenario runs, and once more at the end."""

    def __init__(
        self, view: ClusterView, settings: InvariantSettings | None = None, *, scenario: str
    ) -> None:
        self.settings = settings or InvariantSettings()
        self.checker = InvariantChecker(view, self.settings)
        self.scenario = scenario
        self.checks = 0
        self.recorded: dict[tuple[str, str], Violation] = {}
        self._first_seen: dict[tuple[str, str], float] = {}
        self._disturbances = 0
        self._calm_since = time.monotonic()

    # ---- disturbance windows -----------------------------------------------------------

    @contextlib.contextmanager
    def disturbed(self) -> Iterator[None]:
        """Liveness is not judged inside this block and for ``pending_settle_s`` after it."""
        self._disturbances += 1
        try:
            yield
        finally:
            self._disturbances -= 1
            self._calm_since = time.monotonic()

    def _liveness(self) -> bool:
        return (
            self._disturbances == 0 and time.monotonic() - self._calm_since >= self.settings.pending_settle_s
        )

    # ---- checking ----------------------------------------------------------------------

    def observe(self, *, final: bool = False) -> list[Violation]:
        now = time.time()
        mono = time.monotonic()
        found = self.checker.check(now, liveness=final or self._liveness())
        self.checks += 1
        current = set()
        for violation in found:
            key = (violation.kind, violation.subject)
            current.add(key)
            if violation.hard:
                self.recorded.setdefault(key, violation)
                continue
            first = self._first_seen.setdefault(key, mono)
            if final or mono - first >= self.settings.persist_s:
                self.recorded.setdefault(key, violation)
        for key in list(self._first_seen):
            if key not in current:
                del self._first_seen[key]
        return found

    async def run(self) -> None:
        while True:
            self.observe()
            await asyncio.sleep(self.settings.poll_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[InvariantMonitor]:
        task = asyncio.create_task(self.run(), name=f"invariants {self.scenario}")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def settle(self, *, within: float = 30.0) -> list[Violation]:
        """Wait (up to ``within``) until no violation is current, then run the final check."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.observe() and self._liveness():
                break
            await asyncio.sleep(self.settings.poll_s)
        return self.observe(final=True)

    def report(self) -> InvariantReport:
        return InvariantReport(scenario=self.scenario, checks=self.checks, violations=dict(self.recorded))

    def write_report(self) -> None:
        """Append this scenario's counts to ``$HAMI_SOAK_REPORT`` (JSON lines) when set."""
        target = os.environ.get(REPORT_ENV)
        if target:
            with Path(target).open("a", encoding="utf-8") as out:
                out.write(json.dumps(self.report().to_json()) + "\n")

    def assert_clean(self) -> None:
        self.write_report()
        report = self.report()
        assert report.checks > 0, "the invariants were never checked"
        if report.violations:
            lines = "\n".join(f"  {v}" for v in list(report.violations.values())[:20])
            raise AssertionError(f"{len(report.violations)} invariant violations {report.counts()}:\n{lines}")
