"""Run many (policy, seed) experiments, in parallel processes when asked."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass

from hami.core.packing import HAMI_DEFAULT_SPLIT, POLICIES
from hami.replay.engine import DEFAULT_WINDOW, ReplayResult, run_replay
from hami.replay.trace import NodeSpec, PodSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class Experiment:
    policy: str
    seed: int
    tune: float = 1.3
    split: int = HAMI_DEFAULT_SPLIT
    window: int = DEFAULT_WINDOW


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"42"``, ``"42-51"`` or ``"42,45,50-51"`` into seeds, in order, without duplicates."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part and not part.startswith("-"):
                lo_text, hi_text = part.split("-", 1)
                lo, hi = int(lo_text), int(hi_text)
                if hi < lo:
                    raise ValueError(f"empty seed range {part!r}")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError as err:
            raise ValueError(f"bad seed list {text!r}: {err}") from None
    if not seeds:
        raise ValueError(f"bad seed list {text!r}: no seed")
    return tuple(dict.fromkeys(seeds))


def parse_policies(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise ValueError(f"unknown policy {', '.join(unknown) or text!r}; known: {', '.join(POLICIES)}")
    return names


def _run_one(nodes: Sequence[NodeSpec], pods: Sequence[PodSpec], exp: Experiment) -> ReplayResult:
    return run_replay(nodes, pods, exp.policy, exp.seed, exp.tune, exp.split, window=exp.window)


def run_experiments(
    nodes: Sequence[NodeSpec],
    pods: Sequence[PodSpec],
    experiments: Sequence[Experiment],
    jobs: int = 1,
    on_done: Callable[[ReplayResult], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[ReplayResult]:
    """Results in the order of ``experiments``; ``on_done`` sees each as soon as it finishes.

    With ``jobs`` <= 1 everything runs here and ``progress`` gets pod-level progress; otherwise
    up to ``jobs`` worker processes run one experiment each.
    """
    results: dict[int, ReplayResult] = {}
    if jobs <= 1 or len(experiments) == 1:
        for index, exp in enumerate(experiments):
            result = run_replay(nodes, pods, exp.policy, exp.seed, exp.tune, exp.split, progress, exp.window)
            results[index] = result
            if on_done is not None:
                on_done(result)
        return [results[i] for i in range(len(experiments))]
    with ProcessPoolExecutor(max_workers=min(jobs, len(experiments))) as pool:
        pending: dict[Future[ReplayResult], int] = {
            pool.submit(_run_one, nodes, pods, exp): i for i, exp in enumerate(experiments)
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                results[index] = future.result()
                if on_done is not None:
                    on_done(results[index])
    return [results[i] for i in range(len(experiments))]


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def result_record(result: ReplayResult, **extra: object) -> dict[str, object]:
    """A JSON-ready dict (NaN columns, i.e. arrived % never reached, become null)."""
    record: dict[str, object] = dict(extra)
    data = asdict(result)
    columns = [None if math.isnan(v) else v for v in result.alloc_pct]
    data["alloc_pct"] = columns
    data["alloc_at_130"] = columns[130] if len(columns) > 130 else None
    data["failed_pods"] = result.failed
    data["failed_pod_names"] = list(result.failed_pods)
    del data["failed"]
    record.update(data)
    return record


def mean(values: Iterator[float] | Sequence[float]) -> float:
    items = [v for v in values if not math.isnan(v)]
    return math.fsum(items) / len(items) if items else math.nan
