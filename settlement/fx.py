"""FX arithmetic for cross-border payments: customer rates, quote amounts, refunds, quote bytes.

Pure: no database, no clock, no I/O. Rates are ``Decimal`` on one fixed scale; amounts are ``int``
minor units (``ledger.money``); every rounding below is explicit, one-directional and tested.

Rates are **target currency per one unit of source currency** (CNY per HKD). The customer rate is
``mid_rate × (1 − spread_bps / 10,000)``: the payer's institution is the FX provider and keeps the
spread (``/work/shared/DOMAIN.md``).

Rounding rules, each in the institution's favour or neutral, never the payer's loss beyond a quote:

* the customer rate is rounded **down** to ``RATE_DECIMAL_PLACES``: fewer target units per source
  unit is the institution's side, and the rounded rate is the one the quote shows, so the payer is
  charged exactly the rate they see;
* given the target (the merchant's CNY price), the merchant gets exactly it and the source is
  ``target ÷ rate`` rounded **up** to the source's minor unit: the payer never pays less than the
  price at the quoted rate;
* given the source, the target is ``source × rate`` rounded **down**: the quote never promises more
  target than the source pays for;
* refunds go back at the payment's own ratio ``source ÷ target`` on the *cumulative* refunded
  target, rounded down, so a series of partial refunds that adds up to the whole returns exactly the
  original source amount (the last refund takes the remainder): no cent is created or lost.

To turn amounts to text and back use ``ledger.money``; nothing here parses or formats floats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from ledger.money import AMOUNT_MINOR_MAX, Currency, format_amount

# Rates carry at most 10 decimal places. Published mid rates have 4 to 6 (HKD/CNY 0.9213); a spread
# in basis points adds at most 4 more, so a customer rate computed from a 6-place mid is exact at 10
# places and the rounding below rarely bites. A fixed scale also means one value has one text
# ("0.9166935000"), so the signed quote's bytes do not depend on how a Decimal was built, and it
# bounds the integers the amount arithmetic multiplies.
RATE_DECIMAL_PLACES = 10
RATE_QUANTUM = Decimal(1).scaleb(-RATE_DECIMAL_PLACES)
_RATE_DENOMINATOR = 10**RATE_DECIMAL_PLACES
# No corridor rate is near a million target units per source unit (JPY per BHD is ~400); the bound
# refuses a rate typed in the wrong unit or direction before it prices a payment.
RATE_MAX = Decimal(1_000_000)
# A mid rate may have more places than a quote (it is rounded once, in customer_rate), but not
# without bound: 28 is Decimal's default precision, far more than any rate source publishes.
MID_RATE_DECIMAL_PLACES_MAX = 28
BPS_PER_UNIT = 10_000
SPREAD_BPS_MAX = BPS_PER_UNIT
# The domain's default quote lifetime; the service reads its own value from configuration.
QUOTE_TTL_DEFAULT = timedelta(seconds=60)


class FxError(ValueError):
    """Base of the FX input errors: each means the request is wrong, never that the ledger broke."""

    code = "invalid_request"


class InvalidRate(FxError):
    """A rate is not a finite Decimal above zero, is above ``RATE_MAX``, or has too many places."""


class InvalidSpread(FxError):
    """A spread is not a whole number of basis points between 0 and 10,000."""


class SameCurrency(FxError):
    """A quote's source and target currency are the same: there is nothing to convert."""


class InvalidQuoteAmount(FxError):
    """A quote's amounts: not exactly one given, not a positive int, or one side out of range."""


class InvalidRefund(FxError):
    """A refund is not positive, or would take back more than the payment's target amount."""


class InvalidQuote(FxError):
    """A quote's fields contradict each other (times, currencies, or amounts against the rate)."""


# -- rates -----------------------------------------------------------------------------------------


def customer_rate(mid_rate: Decimal, spread_bps: int) -> Decimal:
    """The rate the payer gets: ``mid_rate × (1 − spread_bps / 10,000)``, rounded **down** to
    ``RATE_DECIMAL_PLACES`` (the institution's side; the quote shows this rounded rate).

    Computed on the exact integer ratio of ``mid_rate``, so there is one rounding, not two. A spread
    of 10,000 bps (or a mid so small that the result rounds to zero) prices nothing and is refused.
    """
    _check_mid_rate(mid_rate)
    _check_spread(spread_bps)
    numerator, denominator = mid_rate.as_integer_ratio()
    rate_units = numerator * (BPS_PER_UNIT - spread_bps) * _RATE_DENOMINATOR // (denominator * BPS_PER_UNIT)
    if rate_units == 0:
        raise InvalidRate(
            f"customer rate for mid {mid_rate} at {spread_bps} bps rounds to zero at "
            f"{RATE_DECIMAL_PLACES} decimal places: no amount can be quoted"
        )
    return _rate_from_units(rate_units)


def _check_mid_rate(mid_rate: Decimal) -> None:
    _check_rate_value(mid_rate, "mid rate")
    exponent = mid_rate.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MID_RATE_DECIMAL_PLACES_MAX:
        raise InvalidRate(f"mid rate {mid_rate} has more than {MID_RATE_DECIMAL_PLACES_MAX} decimal places")


def _check_spread(spread_bps: int) -> None:
    if isinstance(spread_bps, bool) or not isinstance(spread_bps, int):
        raise InvalidSpread(f"spread must be a whole number of basis points, not {type(spread_bps).__name__}")
    if not 0 <= spread_bps <= SPREAD_BPS_MAX:
        raise InvalidSpread(f"spread must be between 0 and {SPREAD_BPS_MAX} bps, got {spread_bps}")


def _check_rate_value(rate: Decimal, what: str) -> None:
    # A float is refused, not converted: Decimal(0.92) is 0.92000000000000003996802888650563545525074005126953125.
    if not isinstance(rate, Decimal):
        raise InvalidRate(f"{what} must be a Decimal, not {type(rate).__name__}")
    if not rate.is_finite():
        raise InvalidRate(f"{what} must be a finite number, got {rate}")
    if rate <= 0:
        raise InvalidRate(f"{what} must be greater than zero, got {rate}")
    if rate > RATE_MAX:
        raise InvalidRate(f"{what} {rate} is above the maximum of {RATE_MAX}")


def rate_units(rate: Decimal) -> int:
    """``rate × 10^RATE_DECIMAL_PLACES`` as an exact int, after checking that ``rate`` is a quotable
    rate: positive, at most ``RATE_MAX``, on the fixed scale. A rate with more places is refused,
    not rounded: the quote must show the very rate its amounts were computed from."""
    _check_rate_value(rate, "rate")
    try:
        on_scale = rate.quantize(RATE_QUANTUM)
    except InvalidOperation as error:  # pragma: no cover - bounded by RATE_MAX, 17 digits < 28
        raise InvalidRate(f"rate {rate} cannot be put on the {RATE_DECIMAL_PLACES}-place scale") from error
    if on_scale != rate:
        raise InvalidRate(
            f"rate {rate} has more than {RATE_DECIMAL_PLACES} decimal places; round it with customer_rate()"
        )
    return int(on_scale.scaleb(RATE_DECIMAL_PLACES))


def _rate_from_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-RATE_DECIMAL_PLACES).quantize(RATE_QUANTUM)


# -- amounts ---------------------------------------------------------------------------------------


def quote_amounts(
    rate: Decimal,
    *,
    source_currency: Currency,
    target_currency: Currency,
    source_minor: int | None = None,
    target_minor: int | None = None,
) -> tuple[int, int]:
    """``(source_minor, target_minor)`` of a quote at ``rate`` (target per source unit).

    Give exactly one side. Given the target (the merchant's price), the merchant gets exactly it and
    the source is ``target ÷ rate`` rounded **up**: the payer never pays less than the price at the
    quoted rate. Given the source, the target is ``source × rate`` rounded **down**: the quote never
    promises more than the source pays for. Integer arithmetic on the exact rate, no Decimal context.
    """
    units = rate_units(rate)
    _check_currencies(source_currency, target_currency)
    if (source_minor is None) == (target_minor is None):
        raise InvalidQuoteAmount("give exactly one of source_minor and target_minor")
    # The ratio of minor units: 1 source minor = rate × 10^(target exp − source exp) target minor.
    scale_numerator = units * 10**target_currency.exponent
    scale_denominator = _RATE_DENOMINATOR * 10**source_currency.exponent
    if target_minor is not None:
        _check_amount_minor(target_minor, "target")
        source_minor = -(-target_minor * scale_denominator // scale_numerator)  # ceiling division
        _check_amount_minor(source_minor, "source (from the target at this rate)")
        return source_minor, target_minor
    if source_minor is None:  # pragma: no cover - excluded above; narrows the type for mypy
        raise InvalidQuoteAmount("give exactly one of source_minor and target_minor")
    _check_amount_minor(source_minor, "source")
    target_minor = source_minor * scale_numerator // scale_denominator  # floor division
    if target_minor == 0:
        raise InvalidQuoteAmount(
            f"{format_amount(source_minor, source_currency)} {source_currency.code} buys less than "
            f"one minor unit of {target_currency.code} at {rate}"
        )
    _check_amount_minor(target_minor, "target (from the source at this rate)")
    return source_minor, target_minor


def _check_currencies(source_currency: Currency, target_currency: Currency) -> None:
    if source_currency.code == target_currency.code:
        raise SameCurrency(f"source and target currency are both {source_currency.code}: nothing to convert")


def _check_amount_minor(amount_minor: int, what: str) -> None:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise InvalidQuoteAmount(f"{what} amount must be an int of minor units, not {type(amount_minor).__name__}")
    if amount_minor <= 0:
        raise InvalidQuoteAmount(f"{what} amount must be greater than zero, got {amount_minor}")
    if amount_minor > AMOUNT_MINOR_MAX:
        raise InvalidQuoteAmount(f"{what} amount {amount_minor} is above the maximum of {AMOUNT_MINOR_MAX} minor units")


# -- refunds ---------------------------------------------------------------------------------------


def refund_source_minor(
    original_source_minor: int,
    original_target_minor: int,
    refund_target_minor: int,
    *,
    refunded_target_minor: int = 0,
) -> int:
    """The source amount to give back for refunding ``refund_target_minor`` of a payment that took
    ``original_source_minor`` for ``original_target_minor``, when ``refunded_target_minor`` of its
    target has been refunded already.

    At the payment's own rate (source ÷ target, the rounding included), on the cumulative total:
    ``floor(refunded_after × source ÷ target) − floor(refunded_before × source ÷ target)``. The sum
    over any series telescopes, so refunds adding up to the whole target give back exactly the whole
    source, and the last refund takes the remainder. Rounding down keeps every partial refund at or
    under its exact share, never more than one minor unit short, and the shortfall is repaid by the
    end of the series.
    """
    _check_refund_amounts(original_source_minor, original_target_minor, refund_target_minor, refunded_target_minor)
    refunded_after = refunded_target_minor + refund_target_minor
    if refunded_after > original_target_minor:
        raise InvalidRefund(
            f"refund of {refund_target_minor} would bring the refunded total to {refunded_after}, "
            f"above the payment's {original_target_minor} minor units"
        )
    source_after = refunded_after * original_source_minor // original_target_minor
    source_before = refunded_target_minor * original_source_minor // original_target_minor
    return source_after - source_before


def _check_refund_amounts(source_minor: int, target_minor: int, refund_minor: int, refunded_minor: int) -> None:
    named = {"original source": source_minor, "original target": target_minor, "refund": refund_minor}
    for what, amount_minor in named.items():
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
            raise InvalidRefund(f"{what} amount must be a positive int of minor units, got {amount_minor!r}")
    if isinstance(refunded_minor, bool) or not isinstance(refunded_minor, int) or refunded_minor < 0:
        raise InvalidRefund(f"already refunded amount must be an int of minor units ≥ 0, got {refunded_minor!r}")


# -- quotes ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quote:
    """A priced conversion the ledger signs: valid from ``created_at`` until ``expires_at``, once.

    Checked when built: currencies differ, the rate is quotable, amounts are positive, the times
    are timezone-aware and in order, and ``source × rate ≥ target`` (the payer pays for at least
    what the merchant gets). Single use is the store's job, not this value's.
    """

    quote_id: str
    source_currency: Currency
    target_currency: Currency
    rate: Decimal
    source_minor: int
    target_minor: int
    created_at: datetime
    expires_at: datetime

    def __post_init__(self) -> None:
        if not self.quote_id:
            raise InvalidQuote("a quote needs an id")
        _check_currencies(self.source_currency, self.target_currency)
        units = rate_units(self.rate)
        _check_amount_minor(self.source_minor, "source")
        _check_amount_minor(self.target_minor, "target")
        for name in ("created_at", "expires_at"):
            if getattr(self, name).utcoffset() is None:
                raise InvalidQuote(f"{name} must be timezone-aware")
        if self.expires_at <= self.created_at:
            raise InvalidQuote("a quote must expire after it is created")
        paid_for = self.source_minor * units * 10**self.target_currency.exponent
        if paid_for < self.target_minor * _RATE_DENOMINATOR * 10**self.source_currency.exponent:
            raise InvalidQuote(
                f"source {self.source_minor} at rate {self.rate} does not pay for target {self.target_minor}"
            )

    def is_expired(self, now: datetime) -> bool:
        """True from ``expires_at`` on: the last usable instant is just before it."""
        return now >= self.expires_at


def new_quote(
    quote_id: str,
    rate: Decimal,
    *,
    source_currency: Currency,
    target_currency: Currency,
    created_at: datetime,
    source_minor: int | None = None,
    target_minor: int | None = None,
    ttl: timedelta = QUOTE_TTL_DEFAULT,
) -> Quote:
    """A :class:`Quote` priced by :func:`quote_amounts`, expiring ``ttl`` after ``created_at``."""
    source_minor, target_minor = quote_amounts(
        rate,
        source_currency=source_currency,
        target_currency=target_currency,
        source_minor=source_minor,
        target_minor=target_minor,
    )
    return Quote(
        quote_id=quote_id,
        source_currency=source_currency,
        target_currency=target_currency,
        rate=rate,
        source_minor=source_minor,
        target_minor=target_minor,
        created_at=created_at,
        expires_at=created_at + ttl,
    )


def canonical_quote_json(quote: Quote) -> bytes:
    """The bytes the ledger signs (Ed25519) for ``quote``: JSON with sorted keys, no spaces, ASCII
    only, amounts as decimal strings with the currency's places (``"128.50"``), the rate as a string
    on the fixed scale (``"0.9166935000"``), times as RFC 3339 UTC with microseconds
    (``"2025-06-22T08:00:00.000000Z"``): one quote, one byte string, in any language."""
    body = {
        "id": quote.quote_id,
        "source_currency": quote.source_currency.code,
        "target_currency": quote.target_currency.code,
        "rate": format(quote.rate.quantize(RATE_QUANTUM), "f"),
        "source_amount": format_amount(quote.source_minor, quote.source_currency),
        "target_amount": format_amount(quote.target_minor, quote.target_currency),
        "created_at": _rfc3339_utc(quote.created_at),
        "expires_at": _rfc3339_utc(quote.expires_at),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _rfc3339_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
