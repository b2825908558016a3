"""Typed field parsers for HAMi's configuration files (YAML via PyYAML, JSON via the stdlib).

Each parser takes ``(raw value, dotted key, warnings sink)`` and returns the typed value or raises
:class:`ConfigError` naming the dotted key. Dataclass fields declare their file key and parser with
:func:`field_meta`; :func:`parse_section` builds the dataclass and keeps unknown keys in ``extra``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from hami.core.errors import ConfigError

INT32_MAX: Final = 2**31 - 1
INT32_MIN: Final = -(2**31)
UINT32_MAX: Final = 2**32 - 1

T = TypeVar("T")

# A field parser takes (raw YAML value, dotted key, warnings sink) and returns the typed value.
Parser = Callable[[object, str, list[str]], Any]


def describe(value: object) -> str:
    return repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__


def str_field(raw: object, where: str, warnings: list[str]) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str | int | float):
        return str(raw)
    raise ConfigError(where, f"expected string, got {describe(raw)}")


def integer_field(lo: int, hi: int) -> Parser:
    def parse(raw: object, where: str, warnings: list[str]) -> int:
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(where, f"expected integer, got {describe(raw)}")
        if not lo <= raw <= hi:
            raise ConfigError(where, f"integer {raw} out of range [{lo}, {hi}]")
        return raw

    return parse


int32_field = integer_field(INT32_MIN, INT32_MAX)
uint_field = integer_field(0, UINT32_MAX)


def float_field(raw: object, where: str, warnings: list[str]) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ConfigError(where, f"expected number, got {describe(raw)}")
    value = float(raw)
    if not math.isfinite(value):
        raise ConfigError(where, f"expected a finite number, got {raw!r}")
    return value


def bool_field(raw: object, where: str, warnings: list[str]) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(where, f"expected boolean, got {describe(raw)}")
    return raw


def str_list_field(raw: object, where: str, warnings: list[str]) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise ConfigError(where, f"expected list of strings, got {describe(raw)}")
    return tuple(str_field(item, f"{where}[{i}]", warnings) for i, item in enumerate(raw))


def field_meta(key: str, parser: Parser) -> dict[str, object]:
    """Field metadata: read from YAML/JSON key ``key`` with ``parser``."""
    return {"key": key, "parser": parser}


def setting(key: str, default: T, parser: Parser = str_field) -> T:
    """A dataclass field read from key ``key`` with ``parser`` (a string by default), ``default``
    when absent. Typed as its value so that ``name: str = setting("resourceName", "x")`` checks."""
    return dataclasses.field(default=default, metadata=field_meta(key, parser))


def section_field(cls: type[Any]) -> Parser:
    """Parser for a mapping into dataclass ``cls`` whose fields were declared with :func:`field_meta`."""

    def parse(raw: object, where: str, warnings: list[str]) -> Any:
        return parse_section(cls, raw, where, warnings)

    return parse


def list_field(item: Parser) -> Parser:
    def parse(raw: object, where: str, warnings: list[str]) -> tuple[Any, ...]:
        if not isinstance(raw, list):
            raise ConfigError(where, f"expected list, got {describe(raw)}")
        return tuple(item(entry, f"{where}[{i}]", warnings) for i, entry in enumerate(raw))

    return parse


def parse_section(cls: type[Any], raw: object, where: str, warnings: list[str]) -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys go to its ``extra`` field and to ``warnings``."""
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"expected mapping, got {describe(raw)}")
    by_key = {f.metadata["key"]: f for f in dataclasses.fields(cls) if "key" in f.metadata}
    values: dict[str, Any] = {}
    extra: dict[str, object] = {}
    for key, value in raw.items():
        spec = by_key.get(key) if isinstance(key, str) else None
        dotted = f"{where}.{key}" if where else str(key)
        if spec is None:
            extra[str(key)] = value
            warnings.append(f"{dotted}: unknown key (kept, not used)")
            continue
        if value is None:
            continue  # null = absent: the chart default applies
        values[spec.name] = spec.metadata["parser"](value, dotted, warnings)
    if extra:
        values["extra"] = extra
    return cls(**values)
