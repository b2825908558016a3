#!/usr/bin/env python3
"""The long soak: the reliability scenarios (tests/reliability) at scale, again and again.

    python scripts/soak.py [--minutes 30] [--scale 20] [-k EXPR]

Each round runs ``pytest tests/reliability -m reliability`` with ``HAMI_SOAK_SCALE`` (churn of
100 × scale pods, 50 × scale bound pods for the scheduler restart up to 500, 40 × scale fuzz
examples per target, ...) and ``HAMI_SOAK_REPORT`` pointing at a JSON-lines file where every
scenario appends its invariant counts. A new round starts while time is left. At the end it prints
one line per scenario and a total::

    soak churn: 2 runs, 9120 checks, 0 invariant violations
    soak total: 0 invariant violations in 12 scenario runs, 0 failed tests, 2 rounds in 31.2 min

Exit status 0 only with zero violations and zero failed tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_round(scale: float, report: Path, selection: str | None, junit: Path) -> tuple[int, int]:
    """One pytest run; returns (failed tests, return code)."""
    env = dict(os.environ, HAMI_SOAK_SCALE=f"{scale:g}", HAMI_SOAK_REPORT=str(report))
    command = [
        sys.executable, "-m", "pytest", "tests/reliability", "-m", "reliability", "-q",
        "-p", "no:cacheprovider", f"--junitxml={junit}",
    ]  # fmt: skip
    if selection:
        command += ["-k", selection]
    done = subprocess.run(command, cwd=REPO, env=env, check=False)
    failed = 0
    if junit.exists():
        text = junit.read_text(errors="replace")
        for key in ("failures", "errors"):
            marker = f'{key}="'
            start = text.find(marker)
            if start >= 0:
                failed += int(text[start + len(marker) : text.index('"', start + len(marker))])
    elif done.returncode != 0:
        failed = 1
    return failed, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="keep starting rounds for this long")
    parser.add_argument("--scale", type=float, default=20.0, help="HAMI_SOAK_SCALE (1 = the CI sizes)")
    parser.add_argument("-k", dest="selection", default=None, help="pytest -k expression (a subset)")
    parser.add_argument("--max-rounds", type=int, default=0, help="stop after this many rounds (0: no limit)")
    args = parser.parse_args()
    if args.scale <= 0 or args.minutes <= 0:
        parser.error("--scale and --minutes must be positive")

    work = Path(tempfile.mkdtemp(prefix="hami-soak-"))
    report = work / "invariants.jsonl"
    started = time.monotonic()
    rounds = failed = 0
    while True:
        rounds += 1
        print(
            f"soak round {rounds} (scale {args.scale:g}, {(time.monotonic() - started) / 60:.1f} min in)",
            flush=True,
        )
        round_failed, _ = run_round(args.scale, report, args.selection, work / f"round-{rounds}.xml")
        failed += round_failed
        elapsed = time.monotonic() - started
        if elapsed >= args.minutes * 60 or (args.max_rounds and rounds >= args.max_rounds):
            break

    runs: dict[str, int] = defaultdict(int)
    checks: dict[str, int] = defaultdict(int)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    examples: dict[str, list[str]] = defaultdict(list)
    if report.exists():
        for line in report.read_text().splitlines():
            entry = json.loads(line)
            name = entry["scenario"]
            runs[name] += 1
            checks[name] += entry["checks"]
            for kind, n in entry["counts"].items():
                counts[name][kind] += n
            examples[name] += entry["examples"][: max(0, 3 - len(examples[name]))]
    total = 0
    for name in sorted(runs):
        violations = sum(counts[name].values())
        total += violations
        detail = f" {dict(counts[name])}" if violations else ""
        print(
            f"soak {name}: {runs[name]} runs, {checks[name]} checks, "
            f"{violations} invariant violations{detail}"
        )
        for example in examples[name]:
            print(f"    e.g. {example}")
    minutes = (time.monotonic() - started) / 60
    print(
        f"soak total: {total} invariant violations in {sum(runs.values())} scenario runs, "
        f"{failed} failed tests, {rounds} rounds in {minutes:.1f} min (logs: {work})"
    )
    return 0 if total == 0 and failed == 0 and runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
