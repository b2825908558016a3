"""`KubeSchedulerConfiguration` (``kubescheduler.config.k8s.io/v1``) as the fake kube-scheduler reads it.

Only what changes the simulator's behaviour is kept: the profiles' scheduler names, the pod
backoff bounds and the ``extenders[]`` block (k8s-apis.md §8.1). The file may be the bare
configuration, a multi-document YAML stream, or a ConfigMap (as ``helm template`` renders HAMi's
chart) whose data holds it, so the chart's own configuration can be fed in unchanged. Validation
follows kube-scheduler's ``validateExtenders``; unknown keys are ignored, as the real decoder's
lenient path does for fields it does not know.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from hami.core.errors import ConfigError

API_VERSION: Final = "kubescheduler.config.k8s.io/v1"
KIND: Final = "KubeSchedulerConfiguration"
DEFAULT_SCHEDULER_NAME: Final = "default-scheduler"
DEFAULT_EXTENDER_TIMEOUT: Final = 5.0
"""Seconds; kube-scheduler's ``DefaultExtenderTimeout`` when ``httpTimeout`` is unset."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_RESOURCE_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def parse_go_duration(value: object, *, key: str) -> float:
    """Seconds in a Go ``time.Duration`` string (``"30s"``, ``"1m30s"``, ``"500ms"``, ``"0"``)."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a duration string such as '30s', got {value!r}")
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ConfigError(key, f"invalid duration {value!r} (expected e.g. '30s', '1m30s', '500ms')")
    return sign * total


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagedResource:
    name: str
    ignored_by_scheduler: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    insecure: bool = False
    server_name: str = ""
    ca_file: str = ""
    ca_data: bytes = b""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtenderConfig:
    url_prefix: str
    filter_verb: str = ""
    prioritize_verb: str = ""
    preempt_verb: str = ""
    bind_verb: str = ""
    weight: int = 0
    enable_https: bool = False
    tls: TlsConfig | None = None
    http_timeout: float = DEFAULT_EXTENDER_TIMEOUT
    node_cache_capable: bool = False
    managed_resources: tuple[ManagedResource, ...] = ()
    ignorable: bool = False

    def is_interested(self, pod: Mapping[str, Any]) -> bool:
        """kube-scheduler ``IsInterested``: no managed resources ⇒ every pod; else any container
        (regular or init) that requests or limits one of them."""
        if not self.managed_resources:
            return True
        names = {m.name for m in self.managed_resources}
        spec = pod.get("spec") or {}
        for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
            resources = container.get("resources") or {}
            for section in ("requests", "limits"):
                if names.intersection((resources.get(section) or {}).keys()):
                    return True
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    scheduler_names: tuple[str, ...] = (DEFAULT_SCHEDULER_NAME,)
    extenders: tuple[ExtenderConfig, ...] = ()
    pod_initial_backoff: float = 1.0
    """Seconds before the first retry of an unschedulable pod (``podInitialBackoffSeconds``)."""
    pod_max_backoff: float = 10.0
    """Cap of the doubling retry backoff (``podMaxBackoffSeconds``)."""
    unschedulable_flush: float = 60.0
    """Seconds after which an unschedulable pod is retried even without a cluster event (the real
    ``podMaxInUnschedulablePodsDuration`` is 5 min; shorter suits a simulator)."""

    def ignored_resources(self) -> frozenset[str]:
        return frozenset(
            m.name for e in self.extenders for m in e.managed_resources if m.ignored_by_scheduler
        )


def _bool(raw: Mapping[str, Any], field: str, key: str) -> bool:
    value = raw.get(field, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}.{field}", f"expected true or false, got {value!r}")
    return value


def _str(raw: Mapping[str, Any], field: str, key: str) -> str:
    value = raw.get(field, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{key}.{field}", f"expected a string, got {value!r}")
    return value


def _tls(raw: object, key: str) -> TlsConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(key, "expected a mapping")
    ca_data = b""
    if raw.get("caData"):
        try:
            ca_data = base64.b64decode(str(raw["caData"]), validate=True)
        except ValueError as exc:
            raise ConfigError(f"{key}.caData", f"not base64: {exc}") from exc
    if raw.get("certData") or raw.get("keyData"):
        raise ConfigError(
            f"{key}.certData", "inline client certificates are not supported; use certFile/keyFile"
        )
    return TlsConfig(
        insecure=_bool(raw, "insecure", key),
        server_name=_str(raw, "serverName", key),
        ca_file=_str(raw, "caFile", key),
        ca_data=ca_data,
        cert_file=_str(raw, "certFile", key),
        key_file=_str(raw, "keyFile", key),
    )


def _extender(raw: object, key: str) -> ExtenderConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(key, "expected a mapping")
    url = _str(raw, "urlPrefix", key)
    if not url:
        raise ConfigError(f"{key}.urlPrefix", "is required")
    weight = raw.get("weight", 0)
    if not isinstance(weight, int) or isinstance(weight, bool):
        raise ConfigError(f"{key}.weight", f"expected an integer, got {weight!r}")
    prioritize = _str(raw, "prioritizeVerb", key)
    if prioritize and weight <= 0:
        raise ConfigError(f"{key}.weight", "must have a positive weight applied to it")
    managed: list[ManagedResource] = []
    seen: set[str] = set()
    for i, item in enumerate(raw.get("managedResources") or []):
        mkey = f"{key}.managedResources[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(mkey, "expected a mapping with name and ignoredByScheduler")
        name = _str(item, "name", mkey)
        if not _RESOURCE_NAME.match(name):
            raise ConfigError(f"{mkey}.name", f"invalid resource name {name!r}")
        if name in seen:
            raise ConfigError(f"{mkey}.name", f"duplicate resource name {name!r}")
        seen.add(name)
        managed.append(
            ManagedResource(name=name, ignored_by_scheduler=_bool(item, "ignoredByScheduler", mkey))
        )
    timeout = DEFAULT_EXTENDER_TIMEOUT
    if raw.get("httpTimeout") not in (None, ""):
        timeout = parse_go_duration(raw["httpTimeout"], key=f"{key}.httpTimeout")
        if timeout <= 0:
            timeout = DEFAULT_EXTENDER_TIMEOUT
    return ExtenderConfig(
        url_prefix=url,
        filter_verb=_str(raw, "filterVerb", key),
        prioritize_verb=prioritize,
        preempt_verb=_str(raw, "preemptVerb", key),
        bind_verb=_str(raw, "bindVerb", key),
        weight=weight,
        enable_https=_bool(raw, "enableHTTPS", key),
        tls=_tls(raw["tlsConfig"], f"{key}.tlsConfig") if raw.get("tlsConfig") is not None else None,
        http_timeout=timeout,
        node_cache_capable=_bool(raw, "nodeCacheCapable", key),
        managed_resources=tuple(managed),
        ignorable=_bool(raw, "ignorable", key),
    )


def parse_scheduler_config(doc: Mapping[str, Any], *, source: str = "config") -> SchedulerConfig:
    """A :class:`SchedulerConfig` from one decoded ``KubeSchedulerConfiguration`` document."""
    if doc.get("kind") != KIND:
        raise ConfigError(f"{source}.kind", f"expected {KIND!r}, got {doc.get('kind')!r}")
    if doc.get("apiVersion") != API_VERSION:
        raise ConfigError(f"{source}.apiVersion", f"expected {API_VERSION!r}, got {doc.get('apiVersion')!r}")
    names: list[str] = []
    for i, profile in enumerate(doc.get("profiles") or []):
        if not isinstance(profile, Mapping):
            raise ConfigError(f"{source}.profiles[{i}]", "expected a mapping")
        name = _str(profile, "schedulerName", f"{source}.profiles[{i}]") or DEFAULT_SCHEDULER_NAME
        if name in names:
            raise ConfigError(f"{source}.profiles[{i}].schedulerName", f"duplicate profile {name!r}")
        names.append(name)
    extenders = tuple(
        _extender(raw, f"{source}.extenders[{i}]") for i, raw in enumerate(doc.get("extenders") or [])
    )
    if sum(1 for e in extenders if e.bind_verb) > 1:
        raise ConfigError(f"{source}.extenders", "only one extender can implement bind")
    defaults = SchedulerConfig()
    initial = doc.get("podInitialBackoffSeconds", defaults.pod_initial_backoff)
    maximum = doc.get("podMaxBackoffSeconds", defaults.pod_max_backoff)
    for field, value in (("podInitialBackoffSeconds", initial), ("podMaxBackoffSeconds", maximum)):
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{source}.{field}", f"must be greater than 0, got {value!r}")
    if maximum < initial:
        raise ConfigError(
            f"{source}.podMaxBackoffSeconds", "must be greater than or equal to podInitialBackoffSeconds"
        )
    return SchedulerConfig(
        scheduler_names=tuple(names) or (DEFAULT_SCHEDULER_NAME,),
        extenders=extenders,
        pod_initial_backoff=float(initial),
        pod_max_backoff=float(maximum),
    )


def _find_configuration(doc: object) -> Mapping[str, Any] | None:
    if not isinstance(doc, Mapping):
        return None
    if doc.get("kind") == KIND:
        return doc
    if doc.get("kind") == "ConfigMap":
        for value in (doc.get("data") or {}).values():
            if isinstance(value, str):
                try:
                    inner = yaml.safe_load(value)
                except yaml.YAMLError:
                    continue
                if isinstance(inner, Mapping) and inner.get("kind") == KIND:
                    return inner
    return None


def load_scheduler_config(path: Path) -> SchedulerConfig:
    """Read a ``KubeSchedulerConfiguration`` from a file (bare, multi-document, or inside a ConfigMap)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}") from exc
    for doc in docs:
        found = _find_configuration(doc)
        if found is not None:
            return parse_scheduler_config(found, source=str(path))
    raise ConfigError(str(path), f"no {KIND} document (bare or inside a ConfigMap) found")
