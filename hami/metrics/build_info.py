"""``hami_build_info{version,revision,build_date,python_version,platform} 1`` (HAMi #1581).

HAMi 2.8 labels the Go toolchain (``go_version``, ``compiler``); a Python process labels its
interpreter instead. The revision and build date are stamped at image build time through the
environment (``HAMI_REVISION``, ``HAMI_BUILD_DATE``); a development checkout falls back to
``git rev-parse``; otherwise both are ``unknown``, as in HAMi's un-injected builds.
"""

from __future__ import annotations

import platform as _platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from hami import __version__
from hami.metrics.catalog import BUILD_INFO

UNKNOWN: Final = "unknown"
ENV_REVISION: Final = "HAMI_REVISION"
ENV_BUILD_DATE: Final = "HAMI_BUILD_DATE"

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildInfo:
    version: str
    revision: str = UNKNOWN
    build_date: str = UNKNOWN
    python_version: str = ""
    platform: str = ""  # "<os>/<arch>" as Go prints it, e.g. "linux/amd64"

    def labels(self) -> dict[str, str]:
        return {
            "version": self.version,
            "revision": self.revision,
            "build_date": self.build_date,
            "python_version": self.python_version,
            "platform": self.platform,
        }


def current_platform() -> str:
    machine = _platform.machine().lower()
    return f"{sys.platform}/{_ARCH.get(machine, machine or UNKNOWN)}"


def git_revision(source_dir: Path, *, timeout: float = 2.0) -> str | None:
    """Short commit of the checkout holding ``source_dir``, or None when it is not a git checkout."""
    if not any((p / ".git").exists() for p in (source_dir, *source_dir.parents)):
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(source_dir), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    revision = done.stdout.strip()
    return revision if done.returncode == 0 and revision else None


def detect_build_info(env: Mapping[str, str], *, source_dir: Path | None = None) -> BuildInfo:
    """Build facts of this process; ``env`` is passed in by the CLI (nothing else reads os.environ)."""
    revision = env.get(ENV_REVISION, "").strip()
    if not revision:
        revision = git_revision(source_dir or Path(__file__).resolve().parent) or UNKNOWN
    return BuildInfo(
        version=__version__,
        revision=revision,
        build_date=env.get(ENV_BUILD_DATE, "").strip() or UNKNOWN,
        python_version=_platform.python_version(),
        platform=current_platform(),
    )


class BuildInfoCollector:
    """Constant gauge; no ``zone`` label, as in HAMi."""

    def __init__(self, info: BuildInfo) -> None:
        self.info = info

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(BUILD_INFO.name, BUILD_INFO.help, labels=BUILD_INFO.labels)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(BUILD_INFO.name, BUILD_INFO.help, labels=BUILD_INFO.labels)
        labels = self.info.labels()
        family.add_metric([labels[name] for name in BUILD_INFO.labels], 1.0)
        return [family]
