"""The parts of Go's ``encoding/json`` behaviour that HAMi's wire formats depend on.

HAMi marshals node annotations with ``json.Marshal`` and reads them with ``json.Unmarshal``; to be
byte-identical on write and to accept exactly what HAMi accepts on read we reproduce:

* string escaping: ``<``, ``>``, ``&``, U+2028 and U+2029 as ``\\u003c``-style escapes, ``\\b \\f \\n \\r
  \\t`` short forms, other control characters as lowercase ``\\u00XX``, everything else raw UTF-8;
* map keys sorted (byte order of UTF-8 == code point order), compact separators;
* on read: object keys match struct fields case-insensitively (the last match wins), ``null`` leaves
  a field at its zero value, numbers must fit the Go integer type exactly (``1.0`` is not an int),
  ``NaN``/``Infinity`` are not JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Final

_GO_ESCAPES: Final = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_ESCAPE_RE: Final = re.compile("[<>&\u2028\u2029]")
_SURROGATE_RE: Final = re.compile("[\ud800-\udfff]")


class GoJsonError(ValueError):
    """The text is not JSON Go would accept for the target type (message says where)."""


def go_string(text: str) -> str:
    """A JSON string literal exactly as Go ``json.Marshal`` writes it."""
    # Go strings are UTF-8 bytes: a lone surrogate cannot exist there and is written as U+FFFD.
    text = _SURROGATE_RE.sub("\ufffd", text)
    encoded = json.dumps(text, ensure_ascii=False)
    return _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES[m.group()], encoded)


def go_int_map(mapping: Mapping[str, int]) -> str:
    """A ``map[string]int`` as Go marshals it (keys sorted)."""
    items = sorted(mapping.items(), key=lambda kv: _SURROGATE_RE.sub("\ufffd", kv[0]))
    return "{" + ",".join(f"{go_string(k)}:{int(v)}" for k, v in items) + "}"


def _reject_constant(name: str) -> object:
    raise GoJsonError(f"invalid JSON literal {name}")


def loads(text: str) -> object:
    """``json.loads`` restricted to what Go accepts; objects come back as lists of (key, value) pairs
    wrapped in :class:`Pairs`, so callers can apply Go's case-insensitive, last-wins field matching."""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=Pairs)
    except GoJsonError:
        raise
    except (ValueError, RecursionError) as e:
        raise GoJsonError(f"invalid JSON: {e}") from None


class Pairs(list[tuple[str, object]]):
    """A JSON object as its ordered (key, value) pairs."""

    def field(self, name: str) -> tuple[bool, object]:
        """Go field lookup: (found, value). Go assigns every key that matches the field, exactly or
        case-insensitively, in document order, so the last matching key wins."""
        folded = name.casefold()
        found: tuple[bool, object] = (False, None)
        for key, value in self:
            if key == name or key.casefold() == folded:
                found = (True, value)
        return found

    def as_dict(self) -> dict[str, object]:
        return {key: unwrap(value) for key, value in self}


def unwrap(value: object) -> object:
    """Pairs → plain dicts, recursively (for ``interface{}`` fields such as custominfo)."""
    if isinstance(value, Pairs):
        return value.as_dict()
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def go_int(value: object, where: str, lo: int, hi: int, type_name: str) -> int:
    """A JSON number decoded into a Go integer type (bools, floats and out-of-range values fail)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise GoJsonError(f"{where}: cannot unmarshal {_json_kind(value)} into Go value of type {type_name}")
    if value < lo or value > hi:
        raise GoJsonError(f"{where}: cannot unmarshal number {value} into Go value of type {type_name}")
    return value


def go_str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise GoJsonError(f"{where}: cannot unmarshal {_json_kind(value)} into Go value of type string")
    return _SURROGATE_RE.sub("\ufffd", value)


def go_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise GoJsonError(f"{where}: cannot unmarshal {_json_kind(value)} into Go value of type bool")
    return value


def go_object(value: object, where: str) -> Pairs:
    if not isinstance(value, Pairs):
        raise GoJsonError(f"{where}: cannot unmarshal {_json_kind(value)} into Go struct or map")
    return value


def go_array(value: object, where: str) -> list[object]:
    if not isinstance(value, list) or isinstance(value, Pairs):
        raise GoJsonError(f"{where}: cannot unmarshal {_json_kind(value)} into Go slice")
    return value


def optional(
    obj: Pairs, name: str, convert: Callable[[object, str], object], where: str
) -> tuple[bool, object]:
    """(present-and-not-null, converted) for one struct field."""
    found, raw = obj.field(name)
    if not found or raw is None:
        return False, None
    return True, convert(raw, f"{where}.{name}")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Pairs):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
