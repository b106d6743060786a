"""Unit and property tests of settlement/fx.py: customer rates, quote amounts, refunds, quote bytes.

Exact expectations are worked out by hand in the comments with fractions, never with floats.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.money import AMOUNT_MINOR_MAX, DEFAULT_CURRENCIES, Currency
from settlement.fx import (
    MID_RATE_DECIMAL_PLACES_MAX,
    QUOTE_TTL_DEFAULT,
    RATE_DECIMAL_PLACES,
    RATE_MAX,
    FxError,
    InvalidQuote,
    InvalidQuoteAmount,
    InvalidRate,
    InvalidRefund,
    InvalidSpread,
    Quote,
    SameCurrency,
    canonical_quote_json,
    customer_rate,
    new_quote,
    quote_amounts,
    rate_units,
    refund_source_minor,
)

CNY = DEFAULT_CURRENCIES["CNY"]
HKD = DEFAULT_CURRENCIES["HKD"]
JPY = Currency("JPY", 0)
BHD = Currency("BHD", 3)
# 0.9213 CNY per HKD at 50 bps: 0.9213 × 0.995 = 0.9166935 exactly (7 places, no rounding needed).
HKD_CNY = Decimal("0.9166935000")
NOON = datetime(2025, 6, 22, 8, 0, tzinfo=UTC)


def hkd_to_cny(rate: Decimal = HKD_CNY, **amounts: int) -> tuple[int, int]:
    return quote_amounts(rate, source_currency=HKD, target_currency=CNY, **amounts)


# -- customer_rate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mid_rate", "spread_bps", "expected"),
    [
        ("0.9213", 50, "0.9166935000"),  # 0.9213 × 9950 / 10000, exact
        ("0.92", 50, "0.9154000000"),  # 0.92 × 0.995 = 0.9154
        ("1", 1, "0.9999000000"),
        ("0.9213", 0, "0.9213000000"),  # no spread: the mid on the fixed scale
        ("0.9213", 9_999, "0.0000921300"),  # one basis point left
        # 0.123456789012345678901234 × 0.995 = 0.12283950506728395050672783: rounded DOWN at the 10th
        # place to 0.1228395050 (half-up would give …051): the institution's side.
        ("0.123456789012345678901234", 50, "0.1228395050"),
        # 1/3 is not a Decimal, but 0.33333333333333 × 1 keeps only 10 places, truncated.
        ("0.33333333333333", 0, "0.3333333333"),
        ("0.00000000019", 0, "0.0000000001"),  # the smallest rate on the scale, rounded down
        ("1000000", 0, "1000000.0000000000"),  # RATE_MAX itself
    ],
)
def test_customer_rate_is_mid_less_spread_rounded_down_to_ten_places(mid_rate, spread_bps, expected):
    rate = customer_rate(Decimal(mid_rate), spread_bps)
    assert rate == Decimal(expected)
    assert format(rate, "f") == expected  # on the fixed scale, always 10 places
    assert rate.as_tuple().exponent == -RATE_DECIMAL_PLACES


@given(
    mid_rate=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(1000), places=12),
    spread_bps=st.integers(min_value=0, max_value=9_999),
)
def test_customer_rate_is_never_above_the_exact_rate_and_less_than_one_step_below(mid_rate, spread_bps):
    exact = Fraction(mid_rate) * Fraction(10_000 - spread_bps, 10_000)
    rate = Fraction(customer_rate(mid_rate, spread_bps))
    assert rate <= exact < rate + Fraction(1, 10**RATE_DECIMAL_PLACES)


def test_a_spread_of_10000_bps_leaves_no_rate_and_is_refused():
    with pytest.raises(InvalidRate, match="rounds to zero"):
        customer_rate(Decimal("0.9213"), 10_000)


def test_a_mid_so_small_that_the_customer_rate_rounds_to_zero_is_refused():
    with pytest.raises(InvalidRate, match="rounds to zero"):
        customer_rate(Decimal("0.00000000009"), 0)


@pytest.mark.parametrize("spread_bps", [-1, 10_001, 1_000_000])
def test_a_spread_outside_0_to_10000_is_refused(spread_bps):
    with pytest.raises(InvalidSpread, match="between 0 and 10000"):
        customer_rate(Decimal("0.9213"), spread_bps)


@pytest.mark.parametrize("spread_bps", [50.0, Decimal(50), "50", True])
def test_a_spread_that_is_not_an_int_is_refused(spread_bps):
    with pytest.raises(InvalidSpread, match="whole number of basis points"):
        customer_rate(Decimal("0.9213"), spread_bps)


@pytest.mark.parametrize(
    ("mid_rate", "message"),
    [
        (Decimal(0), "greater than zero"),
        (Decimal("-0.92"), "greater than zero"),
        (Decimal("NaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        (Decimal("1000000.0000000001"), "above the maximum"),
        (0.92, "must be a Decimal, not float"),
        ("0.92", "must be a Decimal, not str"),
        (Decimal("0." + "1" * (MID_RATE_DECIMAL_PLACES_MAX + 1)), "more than 28 decimal places"),
    ],
)
def test_a_mid_rate_that_is_not_a_positive_bounded_decimal_is_refused(mid_rate, message):
    with pytest.raises(InvalidRate, match=message):
        customer_rate(mid_rate, 50)


def test_fx_errors_are_value_errors_with_a_code():
    for error in (InvalidRate, InvalidSpread, SameCurrency, InvalidQuoteAmount, InvalidRefund, InvalidQuote):
        assert issubclass(error, FxError)
        assert issubclass(error, ValueError)
    assert FxError.code == "invalid_request"


# -- rate_units: what quote_amounts accepts as a rate ----------------------------------------------


def test_rate_units_is_the_rate_on_the_fixed_scale_as_an_int():
    assert rate_units(HKD_CNY) == 9_166_935_000
    assert rate_units(Decimal("0.9166935")) == 9_166_935_000  # same value, fewer written places
    assert rate_units(Decimal("0.916693500000000")) == 9_166_935_000  # trailing zeros are on the scale
    assert rate_units(RATE_MAX) == 10**16


def test_a_rate_with_more_than_ten_places_is_refused_not_rounded():
    # The quote must show the very rate its amounts come from; customer_rate() does the rounding.
    with pytest.raises(InvalidRate, match="more than 10 decimal places"):
        hkd_to_cny(Decimal("0.91669350001"), target_minor=100)


# -- quote_amounts: given the target (the merchant's price) ----------------------------------------


@pytest.mark.parametrize(
    ("rate", "target_minor", "source_minor"),
    [
        # 128.50 CNY at 0.9166935: 12850 / 0.9166935 = 14017.77… fen → 14018 (up).
        (HKD_CNY, 12_850, 14_018),
        # The smallest unit, 0.01 CNY: 1 / 0.9166935 = 1.09… → 2 fen of HKD (up, even from .09).
        (HKD_CNY, 1, 2),
        # Rate 0.8: 100 / 0.8 = 125 exactly: nothing to round.
        (Decimal("0.8"), 100, 125),
        # 101 / 0.8 = 126.25 → 127: up although the fraction is below a half.
        (Decimal("0.8"), 101, 127),
        # 103 / 0.8 = 128.75 → 129: up, as half-up would also say.
        (Decimal("0.8"), 103, 129),
        # A rate with all ten places used: 1 / 1.0909090909 = 0.91666… → 1.
        (Decimal("1.0909090909"), 1, 1),
        # 10^15 fen (the largest amount) at 2.0: exactly half.
        (Decimal(2), AMOUNT_MINOR_MAX, AMOUNT_MINOR_MAX // 2),
    ],
)
def test_given_the_target_the_merchant_gets_it_exactly_and_the_source_rounds_up(rate, target_minor, source_minor):
    assert hkd_to_cny(rate, target_minor=target_minor) == (source_minor, target_minor)


@given(
    rate=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(10_000), places=RATE_DECIMAL_PLACES),
    target_minor=st.integers(min_value=1, max_value=10**10),
)
def test_given_the_target_the_source_is_the_least_that_pays_for_it(rate, target_minor):
    source_minor, quoted_target_minor = hkd_to_cny(rate, target_minor=target_minor)
    assert quoted_target_minor == target_minor
    # Both currencies have 2 places, so minor units convert at the rate itself.
    assert source_minor * Fraction(rate) >= target_minor  # the payer never pays less than the price
    assert (source_minor - 1) * Fraction(rate) < target_minor  # and not one unit more than needed


# -- quote_amounts: given the source ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "source_minor", "target_minor"),
    [
        # 140.18 HKD at 0.9166935: 14018 × 0.9166935 = 12850.21… → 12850 (down).
        (HKD_CNY, 14_018, 12_850),
        # 2 fen × 0.9166935 = 1.83… → 1 fen: down although the fraction is above a half.
        (HKD_CNY, 2, 1),
        (Decimal("0.8"), 125, 100),  # exactly 100
        (Decimal("0.8"), 126, 100),  # 100.8 → 100
        (Decimal("0.8"), 127, 101),  # 101.6 → 101
    ],
)
def test_given_the_source_the_target_rounds_down(rate, source_minor, target_minor):
    assert hkd_to_cny(rate, source_minor=source_minor) == (source_minor, target_minor)


@given(
    rate=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(10_000), places=RATE_DECIMAL_PLACES),
    # At most 10**11: times the largest rate that is the largest amount a quote may hold (10**15);
    # beyond it the quote is refused (tested on its own), which is not this property.
    source_minor=st.integers(min_value=100, max_value=10**11),
)
def test_given_the_source_the_target_is_never_more_than_it_pays_for(rate, source_minor):
    quoted_source_minor, target_minor = hkd_to_cny(rate, source_minor=source_minor)
    assert quoted_source_minor == source_minor
    assert target_minor <= source_minor * Fraction(rate) < target_minor + 1
    # Quoting that target back asks for no more than the source the payer offered.
    assert hkd_to_cny(rate, target_minor=target_minor)[0] <= source_minor


def test_one_fen_of_hkd_buys_less_than_one_fen_of_cny_and_is_refused():
    # 1 × 0.9166935 = 0.92 fen → 0: a quote for nothing is refused, not answered with zero.
    with pytest.raises(InvalidQuoteAmount, match="buys less than one minor unit of CNY"):
        hkd_to_cny(source_minor=1)


def test_currencies_with_other_exponents_convert_by_their_minor_units():
    # 1,000 JPY (no minor unit) at 0.0477 CNY per JPY: 1000 × 0.0477 = 47.70 CNY = 4770 fen, exact.
    assert quote_amounts(Decimal("0.0477"), source_currency=JPY, target_currency=CNY, source_minor=1000) == (
        1000,
        4770,
    )
    # 1.00 CNY priced in JPY: 100 fen = 1 CNY, 1 / 0.0477 = 20.96… JPY → 21 (up, whole yen).
    assert quote_amounts(Decimal("0.0477"), source_currency=JPY, target_currency=CNY, target_minor=100) == (
        21,
        100,
    )
    # 1.000 BHD (3 places) at 20.7 CNY per BHD: 1000 fils → 20.70 CNY = 2070 fen.
    assert quote_amounts(Decimal("20.7"), source_currency=BHD, target_currency=CNY, source_minor=1000) == (
        1000,
        2070,
    )


@pytest.mark.parametrize("amounts", [{}, {"source_minor": 100, "target_minor": 92}])
def test_exactly_one_side_of_the_quote_must_be_given(amounts):
    with pytest.raises(InvalidQuoteAmount, match="exactly one"):
        hkd_to_cny(**amounts)


@pytest.mark.parametrize("side", ["source_minor", "target_minor"])
@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (0, "greater than zero"),
        (-100, "greater than zero"),
        (AMOUNT_MINOR_MAX + 1, "above the maximum"),
        (True, "must be an int"),
        (1.5, "must be an int"),
        (Decimal(100), "must be an int"),
    ],
)
def test_a_quote_amount_that_is_not_a_positive_bounded_int_is_refused(side, amount, message):
    with pytest.raises(InvalidQuoteAmount, match=message):
        hkd_to_cny(**{side: amount})


def test_a_target_whose_source_would_pass_the_maximum_is_refused():
    # 10^15 fen at 0.5 would need 2 × 10^15 fen of HKD.
    with pytest.raises(InvalidQuoteAmount, match=r"source .* above the maximum"):
        hkd_to_cny(Decimal("0.5"), target_minor=AMOUNT_MINOR_MAX)


def test_a_quote_between_one_currency_and_itself_is_refused():
    with pytest.raises(SameCurrency, match="both CNY"):
        quote_amounts(Decimal(1), source_currency=CNY, target_currency=CNY, target_minor=100)


@pytest.mark.parametrize("rate", [Decimal(0), Decimal("-1"), Decimal("NaN"), 0.92, RATE_MAX + 1])
def test_quote_amounts_refuses_a_rate_that_is_not_quotable(rate):
    with pytest.raises(InvalidRate):
        hkd_to_cny(rate, target_minor=100)


# -- refunds ---------------------------------------------------------------------------------------


def test_a_full_refund_gives_back_exactly_the_source():
    # 128.50 CNY paid with 140.18 HKD: refunding 128.50 CNY returns 140.18 HKD, the up-rounding too.
    assert refund_source_minor(14_018, 12_850, 12_850) == 14_018


def test_partial_refunds_round_down_and_the_last_takes_the_remainder():
    # Payment: 10 fen of CNY for 11 fen of HKD (ratio 1.1). Refund 3 + 3 + 4 fen of CNY:
    #   after 3:  floor(3 × 11 / 10) = 3            → refund 3
    #   after 6:  floor(6 × 11 / 10) = 6  minus 3   → refund 3
    #   after 10: floor(10 × 11 / 10) = 11 minus 6  → refund 5 (the remainder)
    refunds = []
    refunded = 0
    for part in (3, 3, 4):
        refunds.append(refund_source_minor(11, 10, part, refunded_target_minor=refunded))
        refunded += part
    assert refunds == [3, 3, 5]
    assert sum(refunds) == 11


def test_one_fen_refunds_of_a_whole_payment_add_up_to_the_source():
    # 3 fen of CNY for 7 fen of HKD, refunded a fen at a time: floor(7/3)=2, floor(14/3)=4 → 2, 7 → 3.
    refunds = [refund_source_minor(7, 3, 1, refunded_target_minor=done) for done in range(3)]
    assert refunds == [2, 2, 3]


@given(data=st.data())
def test_any_split_of_a_full_refund_gives_back_exactly_the_original_source(data):
    target_minor = data.draw(st.integers(min_value=1, max_value=10**9), label="target")
    source_minor = data.draw(st.integers(min_value=1, max_value=10**9), label="source")
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=target_minor), max_size=30), label="cuts")
    bounds = sorted({0, target_minor, *cuts})
    refunded = 0
    total = 0
    for start, end in pairwise(bounds):
        part = refund_source_minor(source_minor, target_minor, end - start, refunded_target_minor=refunded)
        # No partial refund is ahead of its exact share, and none is more than one unit behind.
        exact = Fraction(end * source_minor, target_minor)
        assert exact - 1 < total + part <= exact
        refunded = end
        total += part
    assert total == source_minor


@given(
    rate=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(100), places=RATE_DECIMAL_PLACES),
    target_minor=st.integers(min_value=1, max_value=10**10),
    data=st.data(),
)
def test_a_quoted_payment_refunded_in_parts_returns_what_the_payer_paid(rate, target_minor, data):
    source_minor, _ = hkd_to_cny(rate, target_minor=target_minor)
    first = data.draw(st.integers(min_value=1, max_value=target_minor))
    refunds = [refund_source_minor(source_minor, target_minor, first)]
    if first < target_minor:
        refunds.append(
            refund_source_minor(source_minor, target_minor, target_minor - first, refunded_target_minor=first)
        )
    assert sum(refunds) == source_minor


def test_a_refund_past_the_payment_is_refused():
    with pytest.raises(InvalidRefund, match="refunded total to 12851, above the payment's 12850"):
        refund_source_minor(14_018, 12_850, 1, refunded_target_minor=12_850)
    with pytest.raises(InvalidRefund, match="above the payment's"):
        refund_source_minor(14_018, 12_850, 12_851)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((14_018, 12_850, 0), "refund amount must be a positive int"),
        ((14_018, 12_850, -5), "refund amount must be a positive int"),
        ((0, 12_850, 100), "original source amount"),
        ((14_018, 0, 100), "original target amount"),
        ((14_018, 12_850, 1.5), "refund amount"),
        ((14_018, True, 1), "original target amount"),
    ],
)
def test_refund_amounts_must_be_positive_ints(arguments, message):
    with pytest.raises(InvalidRefund, match=message):
        refund_source_minor(*arguments)


def test_the_already_refunded_amount_cannot_be_negative():
    with pytest.raises(InvalidRefund, match="already refunded"):
        refund_source_minor(14_018, 12_850, 100, refunded_target_minor=-1)


# -- quotes and their canonical bytes --------------------------------------------------------------


def a_quote(**changes) -> Quote:
    fields = {
        "quote_id": "q-0001",
        "source_currency": HKD,
        "target_currency": CNY,
        "rate": HKD_CNY,
        "source_minor": 14_018,
        "target_minor": 12_850,
        "created_at": NOON,
        "expires_at": NOON + QUOTE_TTL_DEFAULT,
    }
    fields.update(changes)
    return Quote(**fields)


def test_canonical_quote_json_is_sorted_compact_and_exact():
    assert canonical_quote_json(a_quote()) == (
        b'{"created_at":"2025-06-22T08:00:00.000000Z","expires_at":"2025-06-22T08:01:00.000000Z",'
        b'"id":"q-0001","rate":"0.9166935000","source_amount":"140.18","source_currency":"HKD",'
        b'"target_amount":"128.50","target_currency":"CNY"}'
    )


def test_canonical_quote_json_does_not_depend_on_how_the_rate_or_times_were_written():
    hong_kong = timezone(timedelta(hours=8))
    same = a_quote(
        rate=Decimal("0.9166935"),
        created_at=datetime(2025, 6, 22, 16, 0, tzinfo=hong_kong),
        expires_at=datetime(2025, 6, 22, 16, 1, tzinfo=hong_kong),
    )
    assert canonical_quote_json(same) == canonical_quote_json(a_quote())


def test_canonical_quote_json_keeps_microseconds_and_small_amounts():
    quote = a_quote(source_minor=2, target_minor=1, created_at=NOON.replace(microsecond=123_456))
    body = json.loads(canonical_quote_json(quote))
    assert body["created_at"] == "2025-06-22T08:00:00.123456Z"
    assert (body["source_amount"], body["target_amount"]) == ("0.02", "0.01")


def test_new_quote_prices_the_quote_and_sets_its_expiry():
    quote = new_quote("q-0001", HKD_CNY, source_currency=HKD, target_currency=CNY, target_minor=12_850, created_at=NOON)
    assert quote == a_quote()
    assert quote.expires_at - quote.created_at == timedelta(seconds=60)


def test_a_quote_expires_at_its_expiry_instant():
    quote = a_quote()
    assert not quote.is_expired(NOON)
    assert not quote.is_expired(NOON + timedelta(seconds=59, microseconds=999_999))
    assert quote.is_expired(NOON + timedelta(seconds=60))


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"quote_id": ""}, InvalidQuote, "needs an id"),
        ({"target_currency": HKD}, SameCurrency, "both HKD"),
        ({"rate": Decimal("0.91669350001")}, InvalidRate, "more than 10"),
        ({"source_minor": 0}, InvalidQuoteAmount, "greater than zero"),
        ({"created_at": datetime(2025, 6, 22, 8, 0)}, InvalidQuote, "timezone-aware"),
        ({"expires_at": NOON}, InvalidQuote, "expire after"),
        # 14017 × 0.9166935 = 12849.3… < 12850: the payer would pay for less than the merchant gets.
        ({"source_minor": 14_017}, InvalidQuote, "does not pay for target"),
    ],
)
def test_a_quote_whose_fields_contradict_each_other_is_refused(changes, error, message):
    with pytest.raises(error, match=message):
        a_quote(**changes)
