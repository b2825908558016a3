"""The frozen Settings tree shared by every role.

Every timeout, backoff and lease timing is a field here, documented with its unit,
default and *why* (style guide §3.7, kopf ``OperatorSettings``). Code never reads the
environment; ``hami.config.loader`` builds one ``Settings`` at startup (CLI > env
``HAMI_*`` > file > these defaults) and the composition root passes sections down
explicitly. Tests construct sections directly with tiny values.

Field metadata (via ``setting()``) carries the help text and, where Kubernetes users
expect a well-known name, the CLI flag (``--leader-elect-lease-duration``); otherwise the
flag is derived from the path (``watching.inactivity_timeout`` →
``--watching-inactivity-timeout``, env ``HAMI_WATCHING_INACTIVITY_TIMEOUT``). Durations
are float seconds and accept Go-style strings on the command line ("800ms", "1m30s").

Roles add their own sections by subclassing ``Settings`` (frozen, slotted, kw_only) with
one more field holding their section dataclass::

    @dataclass(frozen=True, slots=True, kw_only=True)
    class SchedulerSection:
        http_port: int = setting(9443, "extender/webhook HTTPS port", flag="--http-port")

    @dataclass(frozen=True, slots=True, kw_only=True)
    class SchedulerSettings(Settings):
        scheduler: SchedulerSection = SchedulerSection()

    settings = load_settings(SchedulerSettings, args=ns)  # flags added by add_settings_arguments

Sections validate themselves in ``__post_init__`` by raising ``InvalidSetting`` naming the
field; the loader turns the field into the flag the user typed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from hami.core.errors import ConfigError

T = TypeVar("T")

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def setting(default: T, help: str, *, flag: str | None = None, unit: str = "") -> T:
    """A documented field. ``flag`` overrides the derived CLI flag (and thus the env name)."""
    metadata: dict[str, Any] = {"help": help, "unit": unit}
    if flag is not None:
        metadata["flag"] = flag
    return field(default=default, metadata=metadata)


class InvalidSetting(ConfigError):
    """A section rejected a value. ``field`` is the offending field's name inside its section;
    ``related`` names other fields of the same section involved in the rule."""

    def __init__(self, field: str, reason: str, *, related: Sequence[str] = ()) -> None:
        self.field = field
        self.related = tuple(related)
        super().__init__(field, reason)


def _positive(section: object, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value is not None and value <= 0:
            raise InvalidSetting(name, f"must be > 0, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffSettings:
    """Jittered exponential backoff: delay_n = min(maximum, initial × factor^n) × (1 + jitter × U[0,1)).

    Defaults are client-go's reflector backoff (800 ms → 30 s, factor 2, jitter 1.0, reset
    after 2 min healthy), which keeps thousands of watchers from reconnecting in lockstep.
    """

    initial: float = setting(0.8, "first retry delay", unit="s")
    maximum: float = setting(30.0, "cap of the un-jittered delay", unit="s")
    factor: float = setting(2.0, "multiplier per consecutive failure")
    jitter: float = setting(1.0, "extra random fraction of the delay (0 = none)")
    reset_after: float = setting(
        120.0, "a failure this long after the previous one starts again from `initial`", unit="s"
    )

    def __post_init__(self) -> None:
        if self.initial < 0:
            raise InvalidSetting("initial", f"must be ≥ 0, got {self.initial}")
        if self.maximum < self.initial:
            raise InvalidSetting("maximum", f"must be ≥ initial ({self.initial}), got {self.maximum}")
        if self.factor < 1:
            raise InvalidSetting("factor", f"must be ≥ 1, got {self.factor}")
        if self.jitter < 0:
            raise InvalidSetting("jitter", f"must be ≥ 0, got {self.jitter}")
        _positive(self, "reset_after")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingSettings:
    level: LogLevel = setting("info", "log level", flag="--log-level")  # noqa: RUF009  # a str
    json: bool = setting(False, "log one JSON object per line (for log collectors)", flag="--log-json")


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkingSettings:
    """How we reach the apiserver and how hard we retry idempotent calls."""

    kubeconfig: str | None = setting(
        None,
        "kubeconfig path; default: in-cluster config, else $KUBECONFIG/~/.kube/config",
        flag="--kubeconfig",
    )
    context: str | None = setting(
        None, "kubeconfig context (default: current-context)", flag="--kube-context"
    )
    api_server: str | None = setting(
        None,
        "apiserver URL overriding the kubeconfig's (e.g. http://127.0.0.1:8080 for the embedded cluster)",
        flag="--kube-api-server",
    )
    request_timeout: float = setting(
        30.0, "total timeout of one non-watch request; bounds every hung call", unit="s"
    )
    connect_timeout: float = setting(10.0, "TCP+TLS connect timeout, also for watches", unit="s")
    max_retries: int = setting(
        5, "retries of one idempotent call (GET/LIST, or any call the server rejected with 429)"
    )
    retry_backoff: BackoffSettings = BackoffSettings(initial=0.25, maximum=8.0, factor=2.0, jitter=0.5)
    max_retry_after: float = setting(
        30.0, "cap on a server's Retry-After, so a bogus header cannot park a call forever", unit="s"
    )
    connection_limit: int = setting(100, "max concurrent connections to the apiserver")

    def __post_init__(self) -> None:
        _positive(self, "request_timeout", "connect_timeout", "max_retry_after", "connection_limit")
        if self.max_retries < 0:
            raise InvalidSetting("max_retries", f"must be ≥ 0, got {self.max_retries}")


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchingSettings:
    """The Reflector contract (style guide §1.2)."""

    min_timeout: float = setting(
        300.0, "lower bound of the random per-watch timeoutSeconds (spreads reconnects)", unit="s"
    )
    max_timeout: float = setting(600.0, "upper bound of the random per-watch timeoutSeconds", unit="s")
    inactivity_timeout: float = setting(
        70.0,
        "re-watch when nothing (not even a bookmark, sent about every 60 s) arrived this long",
        unit="s",
    )
    backoff: BackoffSettings = BackoffSettings()
    initial_list_resource_version: str = setting(
        "0", 'RV of the first list: "0" may be served from the watch cache; "" forces a quorum read'
    )
    page_size: int = setting(500, "limit per page of consistent (re)lists; 0 = unpaginated")

    def __post_init__(self) -> None:
        _positive(self, "min_timeout", "inactivity_timeout")
        if self.max_timeout < self.min_timeout:
            raise InvalidSetting(
                "max_timeout", f"must be ≥ min_timeout ({self.min_timeout})", related=("min_timeout",)
            )
        if self.page_size < 0:
            raise InvalidSetting("page_size", f"must be ≥ 0, got {self.page_size}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderElectionSettings:
    """client-go ``tools/leaderelection`` on a coordination.k8s.io/v1 Lease (k8s-apis.md §7)."""

    enabled: bool = setting(False, "campaign for leadership before doing leader work", flag="--leader-elect")
    lease_name: str = setting("hami-scheduler", "Lease name", flag="--leader-elect-resource-name")
    lease_namespace: str = setting("kube-system", "Lease namespace", flag="--leader-elect-resource-namespace")
    identity: str | None = setting(
        None, "holder identity (default: <hostname>_<uuid4>)", flag="--leader-elect-identity"
    )
    lease_duration: float = setting(
        15.0,
        "how long followers wait, from the last change they observed, before taking over",
        flag="--leader-elect-lease-duration",
        unit="s",
    )
    renew_deadline: float = setting(
        10.0,
        "the leader steps down when it could not renew for this long (must be < lease duration)",
        flag="--leader-elect-renew-deadline",
        unit="s",
    )
    retry_period: float = setting(
        2.0, "interval between acquire/renew attempts", flag="--leader-elect-retry-period", unit="s"
    )
    release_on_cancel: bool = setting(
        True, "hand the Lease over on clean shutdown so a successor starts at once"
    )

    def __post_init__(self) -> None:
        _positive(self, "lease_duration", "renew_deadline", "retry_period")
        if not self.lease_name:
            raise InvalidSetting("lease_name", "must not be empty")
        if not self.lease_namespace:
            raise InvalidSetting("lease_namespace", "must not be empty")
        if self.lease_duration <= self.renew_deadline:
            raise InvalidSetting(
                "lease_duration",
                f"must be greater than the renew deadline ({self.lease_duration} ≤ {self.renew_deadline})",
                related=("renew_deadline",),
            )
        if self.renew_deadline <= self.retry_period * 1.2:
            raise InvalidSetting(
                "renew_deadline",
                "must be greater than the retry period × 1.2 "
                f"({self.renew_deadline} ≤ {self.retry_period} × 1.2)",
                related=("retry_period",),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The common root. Roles subclass it to add their own section (see module docstring)."""

    logging: LoggingSettings = LoggingSettings()
    networking: NetworkingSettings = NetworkingSettings()
    watching: WatchingSettings = WatchingSettings()
    leader_election: LeaderElectionSettings = LeaderElectionSettings()
