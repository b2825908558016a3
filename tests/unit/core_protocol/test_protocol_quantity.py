from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.core.quantity import QuantityError, exact_integer, format_quantity, is_exact_integer, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Fraction(1)),
        ("3000", Fraction(3000)),
        ("4Gi", Fraction(4 * 2**30)),
        ("1Ki", Fraction(1024)),
        ("1.5Mi", Fraction(3 * 2**19)),
        ("500m", Fraction(1, 2)),
        ("1.5", Fraction(3, 2)),
        ("0.1", Fraction(1, 10)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("1k", Fraction(1000)),
        ("2M", Fraction(2_000_000)),
        ("1E", Fraction(10**18)),
        ("1e3", Fraction(1000)),
        ("1E-2", Fraction(1, 100)),
        ("5n", Fraction(5, 10**9)),
        ("-2", Fraction(-2)),
        ("+7u", Fraction(7, 10**6)),
        (12, Fraction(12)),
    ],
)
def test_parse(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text", ["", "abc", "1K", "1 ", " 1", "1.2.3", "1Gb", "--1", ".", "1e", "1e999", True, None, 1.5]
)
def test_parse_rejects(text):
    with pytest.raises(QuantityError):
        parse_quantity(text)  # type: ignore[arg-type]


def test_exact_integer_is_go_as_int64():
    assert exact_integer(parse_quantity("4Gi")) == 4 * 2**30
    assert exact_integer(parse_quantity("1.0")) == 1
    assert exact_integer(parse_quantity("500m")) is None
    assert exact_integer(parse_quantity("10E")) is None  # beyond int64
    assert exact_integer(Fraction(5), hi=4) is None
    assert is_exact_integer(parse_quantity("2k")) and not is_exact_integer(parse_quantity("1.5"))


@given(st.fractions().filter(lambda f: (f * 10**9).denominator == 1))
def test_format_roundtrip(value):
    assert parse_quantity(format_quantity(value)) == value


def test_format_examples():
    assert format_quantity(Fraction(3000)) == "3000"
    assert format_quantity(Fraction(1, 2)) == "500m"
    assert format_quantity(Fraction(1, 10**6)) == "1u"
    with pytest.raises(QuantityError):
        format_quantity(Fraction(1, 3))


@given(st.text(max_size=20))
def test_parse_raises_only_quantity_error(text):
    try:
        parse_quantity(text)
    except QuantityError:
        pass
