"""``hami scheduler``: the scheduler extender (filter, prioritize, bind), webhook host and metrics.

Examples::

    # in the chart (kube-scheduler sidecar calls https://127.0.0.1:443); the extender campaigns on
    # its own Lease (followers refuse /filter and /bind at once, /readyz 503)
    hami scheduler --http_bind 0.0.0.0:443 --cert_file /tls/tls.crt --key_file /tls/tls.key \\
        --scheduler-name hami-scheduler --device-config-file /device-config.yaml --leader-elect \\
        --leader-elect-resource-name hami-scheduler-extender --leader-elect-resource-namespace kube-system

    # HAMi 2.8's way: lead while this pod's kube-scheduler (holder <hostname>_<uuid>) holds its Lease
    hami scheduler --leader-elect --leader-elect-mode follow-kube-scheduler \\
        --leader-elect-resource-name hami-scheduler --leader-elect-resource-namespace kube-system

    # against the embedded cluster
    hami scheduler --kubeconfig /tmp/hami-sim/kubeconfig --http_bind 127.0.0.1:8080 \\
        --metrics-bind-address 127.0.0.1:9395

    # DRA mode: the webhook turns nvidia.com/gpu (+ gpumem, gpucores) into ResourceClaimTemplate
    # references served by `hami dra-plugin` (needs create/get on resourceclaimtemplates)
    hami scheduler --http_bind 0.0.0.0:443 --cert_file tls.crt --key_file tls.key --dra-mode translate

Flags keep HAMi 2.8's names (hami-scheduler-spec.md §1.1); every flag also reads ``HAMI_<FLAG>``.
``/metrics`` (HAMi 2.8's names, ``hami_build_info``, latency histograms) is served on
``--metrics-bind-address`` (default ``:9395``); the aiomonitor console on 127.0.0.1:20111
(``--monitor-port``, ``--no-monitor``; commands ``ledger [node]``, ``inflight``, ``handoffs``,
``informers``, ``leader``). A busy console port is logged and the scheduler runs without it.
SIGTERM (or Ctrl-C) stops cleanly: readiness off, in-flight requests finished, Lease released;
a second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hami.config.loader import add_settings_arguments, load_settings, setting_specs
from hami.core.deviceconfig import DeviceConfig, parse_device_config
from hami.core.errors import ConfigError
from hami.k8s.auth import load_credentials
from hami.k8s.client import HttpKubeApi
from hami.metrics.build_info import detect_build_info
from hami.runtime.console import run_role_console
from hami.runtime.logs import configure_logging
from hami.runtime.shutdown import handle_signals
from hami.scheduler.console import InformerActivity, scheduler_console_commands, watch_informers
from hami.scheduler.role import SchedulerRole
from hami.scheduler.settings import SchedulerSettings

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "scheduler",
        help="run the scheduler extender (filter/bind), admission webhook and metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(p, SchedulerSettings)
    p.set_defaults(func=run)


def load_device_config(path: str) -> DeviceConfig:
    if not path:
        return DeviceConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("--device-config-file", f"cannot read {path}: {e.strerror or e}") from e
    config = parse_device_config(text)
    for warning in config.warnings:
        logger.warning("device config: %s", warning)
    return config


def log_flags(settings: SchedulerSettings) -> None:
    """HAMi prints every flag at start (``FLAG: --name="value"``)."""
    for spec in setting_specs(SchedulerSettings):
        value: Any = settings
        for part in spec.path:
            value = getattr(value, part)
        logger.info('FLAG: %s="%s"', spec.flag, value)


async def serve(settings: SchedulerSettings, device_config: DeviceConfig) -> int:
    credentials = await load_credentials(settings.networking, environ=os.environ)
    api = HttpKubeApi(credentials, settings.networking)
    try:
        role = SchedulerRole(
            settings,
            api,
            device_config=device_config,
            build_info=detect_build_info(os.environ),
        )
        activity = InformerActivity()
        watch_informers(role, activity)
        commands = scheduler_console_commands(role, activity)
        async with run_role_console(settings.console, commands, role="scheduler"):
            with handle_signals() as shutdown:
                await role.run(shutdown.stopping)
                return shutdown.exit_code
    finally:
        await api.close()  # (5) last: nothing may talk to the apiserver after this


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(SchedulerSettings, args=args, environ=os.environ)
        configure_logging(settings.logging.level, settings.logging.json)
        log_flags(settings)
        device_config = load_device_config(settings.scheduler.device_config_file)
        return asyncio.run(serve(settings, device_config))
    except ConfigError as e:
        print(f"hami scheduler: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"hami scheduler: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        logger.error("scheduler failed", exc_info=True)
        print(f"hami scheduler: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
