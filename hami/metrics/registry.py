"""One ``CollectorRegistry`` per process, built by the composition root and passed down.

Never the library's global ``REGISTRY``: tests build a fresh registry each, and a process never
exposes the Python client's default process/platform collectors by accident (HAMi 2.8's
scheduler also serves a custom registry without Go runtime collectors).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from hami.metrics.build_info import BuildInfo, BuildInfoCollector


def new_registry(build_info: BuildInfo | None = None) -> CollectorRegistry:
    """A fresh registry; with ``build_info`` it already exposes ``hami_build_info``."""
    registry = CollectorRegistry(auto_describe=False)
    if build_info is not None:
        registry.register(BuildInfoCollector(build_info))
    return registry
