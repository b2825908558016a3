"""Composition root: the `hami` command.

Each subcommand lives in its own module of this package and exposes
``register(subparsers) -> None``; the module adds its parser and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an
exit code). Modules are discovered here so that adding a command never means
editing a shared list.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Sequence

from hami import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hami",
        description="hami-py: GPU sharing for Kubernetes, wire-compatible with HAMi 2.8",
    )
    parser.add_argument("--version", action="version", version=f"hami-py {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    result = func(args)
    return int(result or 0)
