"""Load a Settings tree once at startup: CLI > env (``HAMI_*``) > file > defaults.

Only the composition root (``hami.cli``) calls this; nothing else reads ``os.environ``.
Every problem raises ``ConfigError`` naming the flag (and where the bad value came from),
so a typo fails the process at start instead of at the first watch timeout.

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, SchedulerSettings)
    args = parser.parse_args(argv)
    settings = load_settings(SchedulerSettings, args=args, environ=os.environ)

Value syntax: booleans ``true/false/1/0/yes/no/on/off`` (a bare ``--leader-elect`` means
true); durations (fields with unit ``s``) are seconds or Go-style strings (``800ms``,
``1m30s``, ``2h``); ``None``-able fields accept an empty string for "unset"; tuples are
comma separated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from hami.config.settings import InvalidSetting, Settings
from hami.core.errors import ConfigError

S = TypeVar("S", bound=Settings)

CONFIG_FLAG = "--config"
CONFIG_ENV = "HAMI_CONFIG"
ENV_PREFIX = "HAMI_"
_DEST_PREFIX = "hami_setting__"


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingSpec:
    """One leaf of the tree: where it lives and how users name it."""

    path: tuple[str, ...]
    hint: Any
    flag: str
    env: str
    help: str
    unit: str

    @property
    def file_key(self) -> str:
        return ".".join(self.path)

    @property
    def dest(self) -> str:
        return _DEST_PREFIX + "__".join(self.path)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def setting_specs(settings_type: type[Settings]) -> list[SettingSpec]:
    """Every leaf setting of ``settings_type`` in declaration order."""
    specs: list[SettingSpec] = []

    def walk(cls: type, prefix: tuple[str, ...]) -> None:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            path = (*prefix, f.name)
            if _is_section(hint):
                walk(hint, path)
                continue
            flag = f.metadata.get("flag") or "--" + "-".join(path).replace("_", "-")
            env = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
            specs.append(
                SettingSpec(
                    path=path,
                    hint=hint,
                    flag=flag,
                    env=env,
                    help=str(f.metadata.get("help", "")),
                    unit=str(f.metadata.get("unit", "")),
                )
            )

    walk(settings_type, ())
    flags = [s.flag for s in specs]
    dupes = {f for f in flags if flags.count(f) > 1}
    if dupes:
        raise ConfigError(", ".join(sorted(dupes)), "flag declared by more than one setting")
    return specs


def add_settings_arguments(parser: argparse.ArgumentParser, settings_type: type[Settings] = Settings) -> None:
    """Add ``--config`` and one flag per setting. Absent flags stay absent (so env and
    file values are not shadowed by argparse defaults)."""
    group = parser.add_argument_group("settings (also HAMI_* env vars and --config file)")
    group.add_argument(
        CONFIG_FLAG,
        dest=_DEST_PREFIX + "config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"YAML/JSON settings file (env {CONFIG_ENV})",
    )
    defaults = settings_type()
    for spec in setting_specs(settings_type):
        default = _get_path(defaults, spec.path)
        unit = f" [{spec.unit}]" if spec.unit else ""
        text = f"{spec.help}{unit} (default {default!r}; env {spec.env})"
        if _base_type(spec.hint) is bool:
            group.add_argument(
                spec.flag,
                dest=spec.dest,
                nargs="?",
                const="true",
                default=argparse.SUPPRESS,
                metavar="BOOL",
                help=text,
            )
        else:
            group.add_argument(
                spec.flag, dest=spec.dest, default=argparse.SUPPRESS, metavar="VALUE", help=text
            )


def load_settings(
    settings_type: type[S] = Settings,  # type: ignore[assignment]
    *,
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> S:
    """Build and validate the tree. ``config_file`` wins over ``--config``/``HAMI_CONFIG``."""
    environ = environ or {}
    specs = setting_specs(settings_type)
    by_path = {s.path: s for s in specs}
    cli = vars(args) if args is not None else {}

    if config_file is None:
        config_file = cli.get(_DEST_PREFIX + "config") or environ.get(CONFIG_ENV) or None

    raw: dict[tuple[str, ...], tuple[object, str]] = {}
    if config_file is not None:
        for path, value in _read_file(Path(config_file), settings_type):
            raw[path] = (value, f"{config_file}: {'.'.join(path)}")
    for spec in specs:
        if spec.env in environ:
            raw[spec.path] = (environ[spec.env], spec.env)
    for spec in specs:
        if spec.dest in cli:
            raw[spec.path] = (cli[spec.dest], spec.flag)

    values: dict[tuple[str, ...], object] = {}
    for path, (value, source) in raw.items():
        spec = by_path[path]
        try:
            values[path] = parse_value(value, spec.hint, duration=spec.unit == "s")
        except ValueError as exc:
            raise ConfigError(_where(spec, source), str(exc)) from None
    sources = {path: source for path, (_, source) in raw.items()}
    built: S = _build(settings_type, settings_type(), (), values, by_path, sources)
    return built


def _build(
    cls: type[Any],
    default: Any,
    prefix: tuple[str, ...],
    values: Mapping[tuple[str, ...], object],
    by_path: Mapping[tuple[str, ...], SettingSpec],
    sources: Mapping[tuple[str, ...], str],
) -> Any:
    hints = _hints(cls)
    changes: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        hint = hints[f.name]
        if _is_section(hint):
            if any(p[: len(path)] == path for p in values):
                changes[f.name] = _build(hint, getattr(default, f.name), path, values, by_path, sources)
        elif path in values:
            changes[f.name] = values[path]
    if not changes:
        return default
    try:
        return dataclasses.replace(default, **changes)
    except InvalidSetting as exc:
        spec = by_path.get((*prefix, exc.field))
        if spec is None:
            raise
        where = _where(spec, sources.get(spec.path))
        related = [by_path[(*prefix, r)].flag for r in exc.related if (*prefix, r) in by_path]
        reason = exc.reason + (f" (see also {', '.join(related)})" if related else "")
        raise ConfigError(where, reason) from None


def _where(spec: SettingSpec, source: str | None) -> str:
    if source is None or source == spec.flag:
        return spec.flag
    return f"{spec.flag} (from {source})"


def _get_path(obj: object, path: tuple[str, ...]) -> object:
    for part in path:
        obj = getattr(obj, part)
    return obj


def _read_file(path: Path, settings_type: type[Settings]) -> Iterator[tuple[tuple[str, ...], object]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(CONFIG_FLAG, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(CONFIG_FLAG, f"{path} is not valid {kind}: {exc}") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(CONFIG_FLAG, f"{path}: top level must be a mapping, got {type(data).__name__}")
    yield from _walk_file(data, settings_type, (), path)


def _walk_file(
    data: Mapping[Any, Any], cls: type, prefix: tuple[str, ...], file: Path
) -> Iterator[tuple[tuple[str, ...], object]]:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        dotted = ".".join((*prefix, str(key)))
        if name not in names:
            raise ConfigError(f"{file}: {dotted}", f"unknown setting (known: {', '.join(sorted(names))})")
        hint = hints[name]
        if _is_section(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{file}: {dotted}", "must be a mapping")
            yield from _walk_file(value, hint, (*prefix, name), file)
        else:
            yield (*prefix, name), value


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """Seconds from ``"2.5"``, ``"800ms"``, ``"1m30s"`` (Go ``time.ParseDuration`` units)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r} (examples: 15, 15s, 800ms, 1m30s)")
    return total


_TRUE = {"1", "true", "yes", "on", "t", "y"}
_FALSE = {"0", "false", "no", "off", "f", "n"}


def _base_type(hint: Any) -> Any:
    """``X | None`` → X; anything else unchanged."""
    if isinstance(hint, types.UnionType) or get_origin(hint) is typing.Union:
        rest = [a for a in get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def parse_value(value: object, hint: Any, *, duration: bool = False) -> object:
    """Coerce a CLI/env string (or a YAML scalar) to ``hint``; ``ValueError`` says why not."""
    optional = _base_type(hint) is not hint
    base = _base_type(hint)
    if value is None or (optional and isinstance(value, str) and value.strip() == ""):
        if optional:
            return None
        raise ValueError("a value is required")
    if get_origin(base) is Literal:
        allowed = get_args(base)
        text = str(value).strip().lower() if isinstance(value, str) else value
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return text
    if base is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"must be a boolean (true/false), got {value!r}")
    if base is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"must be an integer, got {value!r}")
        try:
            return int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ValueError(f"must be an integer, got {value!r}") from None
    if base is float:
        if isinstance(value, bool):
            raise ValueError(f"must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if duration:
            return parse_duration(str(value))
        try:
            return float(str(value))
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
    if base is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"must be a string, got {value!r}")
        return str(value)
    if get_origin(base) is tuple:
        item = get_args(base)[0]
        items = value if isinstance(value, list | tuple) else [p for p in str(value).split(",") if p.strip()]
        return tuple(
            parse_value(v.strip() if isinstance(v, str) else v, item, duration=duration) for v in items
        )
    raise ValueError(f"unsupported setting type {hint!r}")
