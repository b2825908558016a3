"""Kubernetes resource quantities (``resource.Quantity``) as exact fractions.

Grammar (apimachinery ``resource.ParseQuantity``)::

    <quantity>  ::= <signedNumber><suffix>
    <suffix>    ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>  ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI> ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>

Values are kept as :class:`fractions.Fraction` so that ``"0.1"`` or ``"500m"`` never go through a
binary float. HAMi reads device quantities with ``Quantity.AsInt64()``, which only succeeds for
exact integers inside int64: :func:`exact_integer` mirrors that test.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Final

_BINARY: Final = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: Final = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY_RE: Final = re.compile(
    r"(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?"
    r"(?:(?P<bin>Ki|Mi|Gi|Ti|Pi|Ei)|[eE](?P<exp>[+-]?[0-9]+)|(?P<dec>[numkMGTPE]?))"
)
# Decimal exponents beyond this are rejected: apimachinery cannot represent them either, and an
# attacker-sized exponent would otherwise make Fraction arithmetic arbitrarily slow.
_MAX_EXPONENT: Final = 64
_MAX_LEN: Final = 128

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1


class QuantityError(ValueError):
    """A string is not a Kubernetes quantity (callers wrap it into a domain error naming the field)."""


def parse_quantity(value: str | int) -> Fraction:
    """Parse a quantity string (or a JSON integer) into its exact value.

    >>> parse_quantity("4Gi") == 4 * 2**30, parse_quantity("500m"), parse_quantity("1.5")
    (True, Fraction(1, 2), Fraction(3, 2))
    """
    if isinstance(value, bool):
        raise QuantityError(f"expected a quantity, got boolean {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    if not isinstance(value, str):
        raise QuantityError(f"expected a quantity string, got {type(value).__name__}")
    text = value  # apimachinery does not trim: neither do we
    if not text or len(text) > _MAX_LEN:
        raise QuantityError(f"quantity {value!r} is empty or too long")
    match = _QUANTITY_RE.fullmatch(text)
    if match is None or not (match["int"] or match["frac"]):
        raise QuantityError(f"{value!r} is not a Kubernetes quantity (e.g. 1, 3000, 500m, 4Gi, 1e3)")
    digits = (match["int"] or "") + (match["frac"] or "")
    number = Fraction(int(digits or "0"), 10 ** len(match["frac"] or ""))
    if match["bin"] is not None:
        number *= _BINARY[match["bin"]]
    elif match["exp"] is not None:
        exponent = int(match["exp"])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(f"quantity exponent out of range: {value!r}")
        number *= Fraction(10) ** exponent
    else:
        number *= _DECIMAL[match["dec"] or ""]
    return -number if match["sign"] == "-" else number


def exact_integer(value: Fraction, *, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int | None:
    """The integer ``value`` is, if it is one within ``[lo, hi]`` (Go ``Quantity.AsInt64``), else None."""
    if value.denominator != 1:
        return None
    number = value.numerator
    if number < lo or number > hi:
        return None
    return number


def is_exact_integer(value: Fraction) -> bool:
    """True when HAMi would accept the quantity (``AsInt64`` succeeds)."""
    return exact_integer(value) is not None


def format_quantity(value: Fraction) -> str:
    """A canonical decimal rendering that :func:`parse_quantity` reads back exactly.

    Integers print as plain digits (``"3000"``); other values use the milli suffix when exact
    (``"500m"``) and otherwise a plain decimal with as many digits as needed (``"0.0005"`` → ``"500u"``).
    """
    if value.denominator == 1:
        return str(value.numerator)
    for suffix in ("m", "u", "n"):
        scaled = value / _DECIMAL[suffix]
        if scaled.denominator == 1:
            return f"{scaled.numerator}{suffix}"
    raise QuantityError(f"{value} has no exact Kubernetes quantity form (finer than nano units)")
