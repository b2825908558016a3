"""The scheduler role's settings section (hami-scheduler-spec.md §1.1 flags, plus hami-py additions).

HAMi 2.8's flag spellings are kept where they exist (``--http_bind``, ``--cert_file``,
``--scheduler-name``...); leader election, kubeconfig and logging flags come from the common
:class:`~hami.config.settings.Settings` sections (``--leader-elect``,
``--leader-elect-resource-name``, ``--leader-elect-resource-namespace``, ``--kubeconfig``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from hami.config.settings import InvalidSetting, Settings, setting
from hami.core.dra_translate import DRIVER_NAME
from hami.core.policy import GpuPolicy, NodePolicy
from hami.runtime.console import ConsoleSettings, role_console_settings

DEFAULT_HTTP_BIND: Final = "127.0.0.1:8080"
DEFAULT_METRICS_BIND: Final = ":9395"
SCHEDULER_CONSOLE_PORT: Final = 20111
"""aiomonitor telnet port of the scheduler; the monitor uses 20101, the device plugin 20121 and
the DRA plugin 20131, so the roles of one machine never collide."""
LEADER_ELECT_OWN: Final = "own"
LEADER_ELECT_FOLLOW: Final = "follow-kube-scheduler"
DRA_MODE_OFF: Final = "off"
DRA_MODE_TRANSLATE: Final = "translate"
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def split_host_port(address: str, *, what: str = "address") -> tuple[str, int]:
    """``host:port`` / ``:port`` / ``[v6]:port`` → (host, port); an empty host means all interfaces."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"{what} {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{what} {address!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} {address!r}: port {port} is out of range")
    return host or "0.0.0.0", port


def parse_label_selector(text: str) -> dict[str, str]:
    """HAMi's ``--node-label-selector`` map syntax ``k=v,k2=v2`` (an empty string selects all)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label selector item {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSection:
    """``hami scheduler`` flags. Durations are seconds (Go strings such as ``5m`` are accepted)."""

    http_bind: str = setting(
        DEFAULT_HTTP_BIND,
        "listen address of /filter, /bind, /prioritize, /webhook, /healthz",
        flag="--http_bind",
    )
    cert_file: str = setting(
        "", "TLS certificate (HTTPS when both files are set; hot-reloaded)", flag="--cert_file"
    )
    key_file: str = setting(
        "", "TLS private key (HTTPS when both files are set; hot-reloaded)", flag="--key_file"
    )
    scheduler_name: str = setting(
        "", "schedulerName the webhook writes; source of emitted Events", flag="--scheduler-name"
    )
    node_scheduler_policy: str = setting(
        NodePolicy.BINPACK.value,
        "default node policy: binpack, spread or fragmentation-aware",
        flag="--node-scheduler-policy",
    )
    gpu_scheduler_policy: str = setting(
        GpuPolicy.SPREAD.value,
        "default GPU policy: binpack, spread or topology-aware",
        flag="--gpu-scheduler-policy",
    )
    metrics_bind_address: str = setting(
        DEFAULT_METRICS_BIND, "listen address of GET /metrics (plain HTTP)", flag="--metrics-bind-address"
    )
    node_label_selector: str = setting(
        "", "only nodes with these labels are registered (k=v,k2=v2)", flag="--node-label-selector"
    )
    node_lock_timeout: float = setting(
        300.0,
        "age after which a node lock whose holder is still pending is reported stale (never released by age "
        "alone; HAMi 2.8 expired it)",
        flag="--node-lock-timeout",
        unit="s",
    )
    force_overwrite_default_scheduler: bool = setting(
        True,
        "webhook: move pods of default-scheduler to this scheduler",
        flag="--force-overwrite-default-scheduler",
    )
    device_config_file: str = setting(
        "", "HAMi device-config.yaml (chart defaults when empty)", flag="--device-config-file"
    )
    enable_ascend: bool = setting(
        False, "schedule Huawei Ascend vNPUs (vnpus[] of the device config)", flag="--enable-ascend"
    )
    enable_iluvatar: bool = setting(
        False, "schedule Iluvatar GPUs (iluvatars[] of the device config)", flag="--enable-iluvatar"
    )
    compat_node_lock: bool = setting(
        False,
        "also write hami.io/mutex.lock at bind, one pod per node in handoff (for HAMi 2.8's device plugin)",
        flag="--compat-node-lock",
    )
    bind_wait_timeout: float = setting(
        20.0,
        "longest a bind waits for its handoff turn on the node (under kube-scheduler's 30 s timeout)",
        flag="--bind-wait-timeout",
        unit="s",
    )
    assume_grace: float = setting(
        30.0,
        "an assumed decision whose annotation never landed, with no write in flight, is forgotten after this",
        flag="--assume-grace",
        unit="s",
    )
    reconcile_interval: float = setting(
        5.0, "period of the stale-assumption and node-lock sweep", flag="--reconcile-interval", unit="s"
    )
    cache_wait: float = setting(
        2.0,
        "how long /bind waits for the watch cache to show a pod it has not seen yet",
        flag="--cache-wait",
        unit="s",
    )
    why_capacity: int = setting(
        2000, "pending pods whose last decision `hami why` keeps", flag="--why-capacity"
    )
    why_max_nodes: int = setting(
        256, "nodes kept per `hami why` record (the rest are counted)", flag="--why-max-nodes"
    )
    exact_events_max_nodes: int = setting(
        64,
        "evaluate every candidate (HAMi's exact FilteringSucceed text) up to this many candidates",
        flag="--exact-events-max-nodes",
    )
    tls_reload_interval: float = setting(
        5.0, "how often the cert/key files are checked for changes", flag="--tls-reload-interval", unit="s"
    )
    shutdown_timeout: float = setting(
        10.0, "how long in-flight requests may take after SIGTERM", flag="--shutdown-timeout", unit="s"
    )
    leader_elect_mode: str = setting(
        LEADER_ELECT_OWN,
        "with --leader-elect: 'own' campaigns for the Lease; 'follow-kube-scheduler' leads while this "
        "pod's kube-scheduler (holder <hostname>_...) holds it, as HAMi 2.8 does",
        flag="--leader-elect-mode",
    )
    dra_mode: str = setting(
        DRA_MODE_OFF,
        "webhook: 'translate' turns NVIDIA GPU requests into ResourceClaimTemplate references for "
        "the DRA plugin (schedulerName left alone); 'off' keeps HAMi's device-plugin path",
        flag="--dra-mode",
    )
    dra_driver_name: str = setting(
        DRIVER_NAME,
        "with --dra-mode=translate: the DRA driver and DeviceClass the claims name",
        flag="--dra-driver-name",
    )

    def __post_init__(self) -> None:
        try:
            split_host_port(self.http_bind, what="--http_bind")
        except ValueError as e:
            raise InvalidSetting("http_bind", str(e)) from None
        try:
            split_host_port(self.metrics_bind_address, what="--metrics-bind-address")
        except ValueError as e:
            raise InvalidSetting("metrics_bind_address", str(e)) from None
        if bool(self.cert_file) != bool(self.key_file):
            raise InvalidSetting(
                "cert_file", "--cert_file and --key_file must be given together", related=("key_file",)
            )
        if self.node_scheduler_policy not in {p.value for p in NodePolicy}:
            raise InvalidSetting(
                "node_scheduler_policy",
                f"must be binpack, spread or fragmentation-aware, got {self.node_scheduler_policy!r}",
            )
        if self.gpu_scheduler_policy not in {p.value for p in GpuPolicy}:
            raise InvalidSetting(
                "gpu_scheduler_policy",
                f"must be binpack, spread or topology-aware, got {self.gpu_scheduler_policy!r}",
            )
        try:
            parse_label_selector(self.node_label_selector)
        except ValueError as e:
            raise InvalidSetting("node_label_selector", str(e)) from None
        for name in ("node_lock_timeout", "bind_wait_timeout", "assume_grace", "reconcile_interval"):
            if getattr(self, name) <= 0:
                raise InvalidSetting(name, f"must be > 0, got {getattr(self, name)}")
        if self.leader_elect_mode not in (LEADER_ELECT_OWN, LEADER_ELECT_FOLLOW):
            raise InvalidSetting(
                "leader_elect_mode",
                f"must be {LEADER_ELECT_OWN} or {LEADER_ELECT_FOLLOW}, got {self.leader_elect_mode!r}",
            )
        if self.cache_wait < 0:
            raise InvalidSetting("cache_wait", f"must be >= 0, got {self.cache_wait}")
        if self.dra_mode not in (DRA_MODE_OFF, DRA_MODE_TRANSLATE):
            raise InvalidSetting(
                "dra_mode", f"must be {DRA_MODE_OFF} or {DRA_MODE_TRANSLATE}, got {self.dra_mode!r}"
            )
        if not _DNS_SUBDOMAIN.fullmatch(self.dra_driver_name) or len(self.dra_driver_name) > 63:
            raise InvalidSetting(
                "dra_driver_name",
                f"must be a DNS subdomain of at most 63 characters, got {self.dra_driver_name!r}",
            )
        for name in ("why_capacity", "why_max_nodes"):
            if getattr(self, name) < 1:
                raise InvalidSetting(name, f"must be >= 1, got {getattr(self, name)}")

    @property
    def tls(self) -> bool:
        return bool(self.cert_file and self.key_file)

    @property
    def node_selector(self) -> dict[str, str]:
        return parse_label_selector(self.node_label_selector)

    @property
    def label_selector_query(self) -> str | None:
        """The selector as the apiserver's ``labelSelector`` parameter (None: every node)."""
        selector = self.node_selector
        return ",".join(f"{k}={v}" for k, v in selector.items()) or None


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSettings(Settings):
    scheduler: SchedulerSection = SchedulerSection()
    # aiomonitor on 127.0.0.1:20111 (web UI 20112, Python console 20113); ``--no-monitor`` turns it off.
    console: ConsoleSettings = role_console_settings(SCHEDULER_CONSOLE_PORT)  # noqa: RUF009  # frozen
