"""``python -m hami.cli._demo_launch ROLE ARGS...``: how ``hami demo`` starts each role process.

It runs exactly ``hami ROLE ARGS...`` (the role module's own ``register`` builds the parser and
its ``func`` runs), with two differences that matter for a demo on a laptop:

* only that role's module is imported, not every subcommand's: a role process starts in about half
  the time, and the demo starts 2 per node plus the scheduler at once;
* the process asks Linux to SIGTERM it when the demo dies (``PR_SET_PDEATHSIG``), so a demo killed
  with SIGKILL leaves no device plugin or monitor behind. The roles run in their own process group
  (a terminal's Ctrl-C reaches only the demo, which then stops them in order), so without this an
  orphan would never hear of the end.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

ROLES: Final = ("scheduler", "device-plugin", "monitor")
PARENT_ENV: Final = "HAMI_DEMO_PARENT_PID"
_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    expected = os.environ.get(PARENT_ENV, "")
    if not expected.isdigit() or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    # The parent may have died before prctl: then we are already an orphan.
    if os.getppid() != int(expected):
        raise SystemExit(f"hami demo (pid {expected}) is gone; not starting")


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ROLES:
        print(f"usage: python -m hami.cli._demo_launch {{{','.join(ROLES)}}} ARGS...", file=sys.stderr)
        return 2
    _die_with_parent()
    module = importlib.import_module(f"hami.cli.{argv[0].replace('-', '_')}")
    parser = argparse.ArgumentParser(prog="hami")
    module.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
