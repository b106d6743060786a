"""Unit tests of ledger/money.py: decimal strings in, integer minor units inside, strings out."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidAmount, LedgerError
from ledger.money import AMOUNT_MINOR_MAX, DEFAULT_CURRENCIES, Currency, format_amount, parse_amount, to_decimal

CNY = DEFAULT_CURRENCIES["CNY"]
HKD = DEFAULT_CURRENCIES["HKD"]
JPY = Currency("JPY", 0)  # a currency without a minor unit
BHD = Currency("BHD", 3)  # three decimals


# -- parsing: what is accepted ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("128.50", CNY, 12_850),
        ("128.5", CNY, 12_850),
        ("1", CNY, 100),
        ("1.00", CNY, 100),
        ("0.01", CNY, 1),
        ("0.10", HKD, 10),
        ("100", JPY, 100),
        ("1", JPY, 1),
        ("1.234", BHD, 1_234),
        ("0.001", BHD, 1),
    ],
)
def test_parse_amount_turns_a_decimal_string_into_exact_minor_units(text, currency, minor):
    assert parse_amount(text, currency) == minor


def test_parse_amount_returns_an_int_not_a_decimal_or_float():
    assert type(parse_amount("128.50", CNY)) is int


def test_parse_amount_accepts_a_finite_decimal_with_at_most_the_currencys_decimals():
    assert parse_amount(Decimal("128.50"), CNY) == 12_850
    assert parse_amount(Decimal("7"), JPY) == 7


def test_parse_amount_accepts_exactly_the_maximum():
    assert parse_amount(format_amount(AMOUNT_MINOR_MAX, CNY), CNY) == AMOUNT_MINOR_MAX
    assert parse_amount("10000000000000", CNY) == AMOUNT_MINOR_MAX


def test_parse_amount_honours_a_lower_caller_maximum():
    assert parse_amount("5.00", CNY, max_minor=500) == 500
    with pytest.raises(InvalidAmount, match=r"above the maximum of 5\.00"):
        parse_amount("5.01", CNY, max_minor=500)


# -- parsing: what is refused, and what the message says ----------------------------------------


def test_parse_amount_refuses_a_float_because_binary_fractions_are_inexact():
    with pytest.raises(InvalidAmount, match=r"decimal string .* not a float"):
        parse_amount(128.5, CNY)


def test_parse_amount_refuses_a_bool():
    with pytest.raises(InvalidAmount, match="not a bool"):
        parse_amount(True, CNY)


def test_parse_amount_refuses_an_int_so_units_are_never_ambiguous():
    # 100 could mean 100 yuan or 100 fen: the edge takes text only.
    with pytest.raises(InvalidAmount, match="not a int"):
        parse_amount(100, CNY)


def test_parse_amount_refuses_none():
    with pytest.raises(InvalidAmount, match="not a NoneType"):
        parse_amount(None, CNY)


@pytest.mark.parametrize("text", ["1.505", "1.500", "0.001"])
def test_parse_amount_refuses_more_decimals_than_the_currency_has_even_trailing_zeros(text):
    with pytest.raises(InvalidAmount, match=re.escape(f"CNY has 2 decimal places; {text!r} has 3")):
        parse_amount(text, CNY)


def test_parse_amount_refuses_any_decimals_in_an_exponent_zero_currency():
    with pytest.raises(InvalidAmount, match=re.escape("JPY has 0 decimal places; '100.0' has 1")):
        parse_amount("100.0", JPY)


def test_parse_amount_refuses_a_decimal_with_too_many_decimals():
    with pytest.raises(InvalidAmount, match="CNY has 2 decimal places"):
        parse_amount(Decimal("1.505"), CNY)


@pytest.mark.parametrize("text", ["0", "0.00", "0.0", "000"])
def test_parse_amount_refuses_zero(text):
    with pytest.raises(InvalidAmount, match="must be greater than zero"):
        parse_amount(text, CNY)


@pytest.mark.parametrize("value", ["-1", "-0.01", "-128.50", Decimal("-5"), Decimal("-0")])
def test_parse_amount_refuses_a_negative_amount_saying_it_must_be_positive(value):
    with pytest.raises(InvalidAmount, match="must be positive"):
        parse_amount(value, CNY)


@pytest.mark.parametrize("text", ["1e3", "1E3", "1.5e2", "+1", "0x10", "1_000", "1,000.00", "NaN", "Infinity"])
def test_parse_amount_refuses_anything_but_plain_digits(text):
    with pytest.raises(InvalidAmount, match="is not a plain decimal number"):
        parse_amount(text, CNY)


@pytest.mark.parametrize("text", [" 1.00", "1.00 ", "1 000", "1. 00", "\t1"])
def test_parse_amount_refuses_spaces(text):
    with pytest.raises(InvalidAmount, match="is not a plain decimal number"):
        parse_amount(text, CNY)


@pytest.mark.parametrize("text", ["", ".", "1.", ".5", "１"])  # the last is a full-width digit one
def test_parse_amount_refuses_empty_and_malformed_text(text):
    with pytest.raises(InvalidAmount, match="is not a plain decimal number"):
        parse_amount(text, CNY)


@pytest.mark.parametrize("text", ["128.50\n", "1\n"])
def test_parse_amount_refuses_a_trailing_newline(text):
    with pytest.raises(InvalidAmount):
        parse_amount(text, CNY)


def test_parse_amount_refuses_one_minor_unit_over_the_maximum_naming_the_maximum():
    with pytest.raises(InvalidAmount, match=r"above the maximum of 10000000000000\.00"):
        parse_amount("10000000000000.01", CNY)


def test_parse_amount_refuses_an_absurd_size_below_the_pattern_limit_as_over_the_maximum():
    with pytest.raises(InvalidAmount, match="above the maximum"):
        parse_amount("9" * 19, CNY)


def test_parse_amount_refuses_a_twenty_digit_amount_as_over_the_maximum():
    with pytest.raises(InvalidAmount, match="above the maximum"):
        parse_amount("1" + "0" * 19, CNY)


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_parse_amount_refuses_a_non_finite_decimal(value):
    with pytest.raises(InvalidAmount, match="must be a finite decimal"):
        parse_amount(value, CNY)


def test_invalid_amount_is_a_ledger_error_and_a_value_error_with_a_stable_code():
    with pytest.raises(InvalidAmount) as caught:
        parse_amount("0", CNY)
    assert isinstance(caught.value, LedgerError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "invalid_amount"


# -- formatting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (12_850, CNY, "128.50"),
        (100, CNY, "1.00"),
        (1, CNY, "0.01"),
        (0, CNY, "0.00"),
        (-12_850, CNY, "-128.50"),
        (-5, CNY, "-0.05"),
        (-100, CNY, "-1.00"),
        (100, JPY, "100"),
        (0, JPY, "0"),
        (-7, JPY, "-7"),
        (1_234, BHD, "1.234"),
        (-1, BHD, "-0.001"),
        (AMOUNT_MINOR_MAX, CNY, "10000000000000.00"),
    ],
)
def test_format_amount_writes_exactly_the_currencys_decimals(minor, currency, text):
    assert format_amount(minor, currency) == text


@pytest.mark.parametrize("value", [1.5, Decimal("1"), True, "100"])
def test_format_amount_refuses_anything_but_an_int(value):
    with pytest.raises(TypeError, match="integers of minor units"):
        format_amount(value, CNY)


def test_to_decimal_is_exact():
    assert to_decimal(12_850, CNY) == Decimal("128.50")
    assert to_decimal(1, BHD) == Decimal("0.001")
    assert to_decimal(7, JPY) == Decimal("7")


# -- currencies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["cny", "CN", "CNYY", "C1Y", ""])
def test_currency_code_must_be_three_capital_letters(code):
    with pytest.raises(ValueError, match="three capital letters"):
        Currency(code, 2)


@pytest.mark.parametrize("exponent", [-1, 7])
def test_currency_exponent_must_be_between_zero_and_six(exponent):
    with pytest.raises(ValueError, match="between 0 and 6"):
        Currency("XXX", exponent)


def test_default_currencies_are_cny_hkd_usd_with_two_decimals():
    assert {code: c.exponent for code, c in DEFAULT_CURRENCIES.items()} == {"CNY": 2, "HKD": 2, "USD": 2}


# -- round trips --------------------------------------------------------------------------------

currencies = st.builds(Currency, st.just("XTS"), st.integers(min_value=0, max_value=6))


@given(minor=st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX), currency=currencies)
def test_parse_of_format_gives_back_every_positive_amount_up_to_the_maximum(minor, currency):
    assert parse_amount(format_amount(minor, currency), currency) == minor


@given(minor=st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX), currency=currencies)
def test_format_of_a_negative_amount_is_the_positive_one_with_a_minus_sign(minor, currency):
    assert format_amount(-minor, currency) == "-" + format_amount(minor, currency)


@given(minor=st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX), currency=currencies)
def test_to_decimal_agrees_with_the_formatted_text(minor, currency):
    assert to_decimal(minor, currency) == Decimal(format_amount(minor, currency))
