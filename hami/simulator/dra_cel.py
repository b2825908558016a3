"""CEL for DRA selectors (k8s-apis.md §3.10): the ``device`` variable and a compiled-program cache.

Expressions are evaluated with cel-python over ``device.driver``, ``device.attributes[<domain>]``,
``device.capacity[<domain>]`` and ``device.allowMultipleAllocations``; an unknown domain is an
empty map, so ``device.attributes["other.io"].x`` is an evaluation error rather than a crash.
Kubernetes' extension functions ``quantity()`` and ``semver()`` and the ``compareTo`` /
``isGreaterThan`` / ``isLessThan`` methods are provided; ``version`` attributes compare as
semantic versions. Not provided: ``cel.bind``, regex and string-library extensions beyond
cel-python's built-ins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import celpy
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, CELUnsupportedError

from hami.core.quantity import parse_quantity


class _DomainMap(celtypes.MapType):
    """``device.attributes`` / ``device.capacity``: a missing domain is an empty map (§3.10)."""

    def __getitem__(self, key: Any) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            return celtypes.MapType({})


class _Semver(celtypes.StringType):
    """A ``version`` attribute or ``semver()`` result: compares as a semantic version."""

    def key(self) -> tuple[Any, ...]:
        core, _, pre = str(self).partition("+")[0].partition("-")
        numbers = tuple(int(p) if p.isdigit() else 0 for p in core.split("."))
        return (*numbers, 0 if pre else 1, pre)


def _compare(a: Any, b: Any) -> celtypes.IntType:
    if isinstance(a, _Semver) or isinstance(b, _Semver):
        ka, kb = _Semver(str(a)).key(), _Semver(str(b)).key()
    else:
        ka, kb = a, b
    return celtypes.IntType((ka > kb) - (ka < kb))


def _quantity(text: Any) -> Any:
    value = parse_quantity(str(text))
    return celtypes.IntType(int(value)) if value.denominator == 1 else celtypes.DoubleType(float(value))


_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "quantity": _quantity,
    "semver": lambda text: _Semver(str(text)),
    "compareTo": _compare,
    "isGreaterThan": lambda a, b: celtypes.BoolType(_compare(a, b) > 0),
    "isLessThan": lambda a, b: celtypes.BoolType(_compare(a, b) < 0),
}


class CelSelectors:
    """Compiled-expression cache; one per scheduler (compilation costs ~10 ms)."""

    def __init__(self) -> None:
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}

    def _program(self, expression: str) -> Any:
        program = self._programs.get(expression)
        if program is None:
            try:
                program = self._env.program(self._env.compile(expression), functions=_FUNCTIONS)
            except (CELParseError, CELUnsupportedError) as e:
                raise ValueError(f"invalid CEL expression {expression!r}: {e}") from None
            self._programs[expression] = program
        return program

    def matches(self, expression: str, device: Any) -> bool:
        """True/False, or ValueError for a compile or evaluation error (or a non-boolean)."""
        try:
            result = self._program(expression).evaluate({"device": device})
        except (CELEvalError, CELUnsupportedError) as e:
            raise ValueError(f"CEL expression {expression!r} failed: {e.args[0] if e.args else e}") from None
        if isinstance(result, CELEvalError):
            raise ValueError(
                f"CEL expression {expression!r} failed: {result.args[0] if result.args else result}"
            )
        if not isinstance(result, celtypes.BoolType):
            raise ValueError(f"CEL expression {expression!r} returned {type(result).__name__}, not a bool")
        return bool(result)


def qualified_name(driver: str, name: str) -> tuple[str, str]:
    """``(domain, identifier)`` of an attribute or capacity name; unqualified names are the driver's."""
    domain, sep, ident = name.rpartition("/")
    return (domain, ident) if sep else (driver, name)


def _cel_attribute(value: Mapping[str, Any]) -> Any:
    if "bool" in value:
        return celtypes.BoolType(bool(value["bool"]))
    if "int" in value:
        return celtypes.IntType(int(value["int"]))
    if "version" in value:
        return _Semver(str(value["version"]))
    return celtypes.StringType(str(value.get("string", "")))


def cel_device(driver: str, device: Mapping[str, Any]) -> Any:
    """The CEL ``device`` variable for one slice device."""
    attributes: dict[Any, Any] = {}
    for name, value in (device.get("attributes") or {}).items():
        domain, ident = qualified_name(driver, name)
        attributes.setdefault(celtypes.StringType(domain), {})[celtypes.StringType(ident)] = _cel_attribute(
            value
        )
    capacity: dict[Any, Any] = {}
    for name, value in (device.get("capacity") or {}).items():
        domain, ident = qualified_name(driver, name)
        capacity.setdefault(celtypes.StringType(domain), {})[celtypes.StringType(ident)] = _quantity(
            value.get("value", "0")
        )
    return celtypes.MapType(
        {
            celtypes.StringType("driver"): celtypes.StringType(driver),
            celtypes.StringType("attributes"): _DomainMap(
                {k: celtypes.MapType(v) for k, v in attributes.items()}
            ),
            celtypes.StringType("capacity"): _DomainMap(
                {k: celtypes.MapType(v) for k, v in capacity.items()}
            ),
            celtypes.StringType("allowMultipleAllocations"): celtypes.BoolType(
                bool(device.get("allowMultipleAllocations"))
            ),
        }
    )
