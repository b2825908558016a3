"""`hami replay`: which packing policy allocates the most GPU on a cluster trace.

Example (the FGD paper's default experiment, 10 seeds, two policies, 2 processes)::

    hami replay --nodes openb_node_list_gpu_node.csv --pods openb_pod_list_default.csv \\
        --policy fgd,fragmentation-aware --seeds 42-51 --jobs 2 --plot curves.svg
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TextIO

from hami.core.errors import HamiError
from hami.core.packing import HAMI_DEFAULT_SPLIT, POLICIES
from hami.replay.batch import (
    Experiment,
    default_jobs,
    mean,
    parse_policies,
    parse_seeds,
    result_record,
    run_experiments,
)
from hami.replay.engine import DEFAULT_WINDOW, ReplayResult
from hami.replay.plot import write_plot
from hami.replay.trace import load_nodes, load_pods


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay a cluster trace under packing policies and report GPU allocation",
        description=(
            "Offer a trace's pods one at a time to a cluster (CPU/memory fit, GPU-sharing fit, the "
            "policy's node score and GPU choice) and report allocated GPU %% against arrived GPU %%. "
            "Inputs: openb CSVs, or the generic CSV/YAML formats of hami.replay.trace."
        ),
    )
    parser.add_argument("--nodes", required=True, type=Path, help="node list (CSV or YAML)")
    parser.add_argument("--pods", required=True, type=Path, help="pod trace (CSV or YAML)")
    parser.add_argument(
        "--policy",
        default="fgd",
        help=f"policy or comma-separated policies: {', '.join(POLICIES)} (default fgd)",
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="one seed (default 42)")
    seeds.add_argument("--seeds", default=None, help="several seeds: 42-51 or 42,43,50")
    parser.add_argument("--tune", type=float, default=1.3, help="inflate the workload to this x GPU capacity")
    parser.add_argument("--json", action="store_true", help="print one JSON object per (policy, seed)")
    parser.add_argument(
        "--plot", type=Path, default=None, help="draw the mean curve of each policy (.svg, or .png)"
    )
    parser.add_argument(
        "--plot-from", type=int, default=0, help="first arrived %% shown on the plot (zoom on the end)"
    )
    parser.add_argument("--jobs", type=int, default=None, help="parallel processes (default: min(4, CPUs))")
    parser.add_argument(
        "--split",
        type=int,
        default=HAMI_DEFAULT_SPLIT,
        help="HAMi tasks per GPU (deviceSplitCount, default 10)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help="fragmentation-aware: learn typical pods from this many recent arrivals (0: from the trace)",
    )
    parser.set_defaults(func=run)


class _Progress:
    """A one-line progress bar on stderr, only when it is a terminal."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.done = 0
        self.enabled = stream.isatty()
        self.started = time.monotonic()

    def pods(self, done: int, total: int) -> None:
        if self.enabled:
            self._draw(self.done + done / max(total, 1))

    def experiment(self, _: ReplayResult) -> None:
        self.done += 1
        if self.enabled:
            self._draw(self.done)

    def _draw(self, position: float) -> None:
        width = 30
        filled = int(width * position / max(self.total, 1))
        elapsed = time.monotonic() - self.started
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} experiments  {elapsed:5.1f}s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    try:
        policies = parse_policies(args.policy)
        seeds = parse_seeds(args.seeds) if args.seeds else (args.seed if args.seed is not None else 42,)
        if args.tune <= 0 or not math.isfinite(args.tune):
            raise ValueError(f"--tune must be a positive number, got {args.tune}")
        if args.split <= 0:
            raise ValueError(f"--split must be positive, got {args.split}")
        if args.window < 0:
            raise ValueError(f"--window must not be negative, got {args.window}")
        if args.plot is not None and args.plot.suffix.lower() not in (".svg", ".png"):
            raise ValueError(f"--plot file must end in .svg or .png: {args.plot}")
        nodes = load_nodes(args.nodes)
        pods = load_pods(args.pods)
    except (ValueError, HamiError) as err:
        print(f"hami replay: {err}", file=sys.stderr)
        return 2
    experiments = [
        Experiment(policy=p, seed=s, tune=args.tune, split=args.split, window=args.window)
        for p in policies
        for s in seeds
    ]
    jobs = args.jobs if args.jobs is not None else default_jobs()
    bar = _Progress(sys.stderr, len(experiments))
    trace = args.pods.stem

    def done(result: ReplayResult) -> None:
        bar.experiment(result)
        if args.json:
            print(json.dumps(result_record(result, trace=trace, nodes=len(nodes))), flush=True)

    try:
        results = run_experiments(nodes, pods, experiments, jobs=jobs, on_done=done, progress=bar.pods)
    except HamiError as err:
        bar.close()
        print(f"hami replay: {err}", file=sys.stderr)
        return 1
    bar.close()
    if not args.json:
        _print_table(results, len(nodes), len(pods), trace)
    if args.plot is not None:
        curves = _mean_curves(results)
        label = f"{trace}, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
        try:
            write_plot(args.plot, curves, f"GPU allocation: {label}", x_min=min(max(args.plot_from, 0), 125))
        except (ValueError, OSError) as err:
            print(f"hami replay: {err}", file=sys.stderr)
            return 1
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _mean_curves(results: list[ReplayResult]) -> dict[str, list[float]]:
    by_policy: dict[str, list[ReplayResult]] = defaultdict(list)
    for r in results:
        by_policy[r.policy].append(r)
    return {
        policy: [round(mean([r.alloc_pct[x] for r in rs]), 2) for x in range(len(rs[0].alloc_pct))]
        for policy, rs in by_policy.items()
    }


def _print_table(results: list[ReplayResult], nodes: int, pods: int, trace: str) -> None:
    print(f"{trace}: {nodes} nodes, {pods} trace pods")
    print(
        f"{'policy':<20} {'seed':>5} {'pods':>6} {'failed':>6} {'alloc@130%':>10} "
        f"{'final%':>7} {'frag%':>6} {'wall s':>7}"
    )
    by_policy: dict[str, list[ReplayResult]] = defaultdict(list)
    for r in results:
        by_policy[r.policy].append(r)
        print(
            f"{r.policy:<20} {r.seed:>5} {r.pods:>6} {r.failed:>6} {r.alloc_pct[130]:>10.2f} "
            f"{r.final_alloc_pct:>7.2f} {r.frag_pct:>6.2f} {r.wall_s:>7.2f}"
        )
    if any(len(rs) > 1 for rs in by_policy.values()):
        print(f"\n{'policy':<20} {'seeds':>5} {'mean alloc@130%':>16} {'mean failed':>12}")
        for policy, rs in by_policy.items():
            print(
                f"{policy:<20} {len(rs):>5} {mean([r.alloc_pct[130] for r in rs]):>16.3f} "
                f"{mean([float(r.failed) for r in rs]):>12.1f}"
            )
