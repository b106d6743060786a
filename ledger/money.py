"""Money at the edge: decimal strings in, integer minor units inside, decimal strings out.

This is the only module that turns text into amounts or amounts into text. Inside the ledger an
amount is always an ``int`` count of the currency's minor unit (fen, cents); a float never gets in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ledger.errors import InvalidAmount

# The largest single amount the edge accepts, in minor units: 10^15 fen is 10 trillion yuan, far
# above any real payment, and far enough below 2^63 that sums of many such amounts cannot wrap a
# BIGINT balance before the per-transfer overflow check refuses them.
AMOUNT_MINOR_MAX = 10**15

# Digits and an optional fraction; no sign, no exponent, no spaces. Lengths are checked after the
# match so that a long amount is told it is too large, not that it is malformed.
_DECIMAL_TEXT = re.compile(r"(?P<whole>[0-9]+)(?:\.(?P<fraction>[0-9]+))?")
# Longer text is refused before any digit is converted (int() of huge strings is slow).
_AMOUNT_TEXT_LENGTH_MAX = 64


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency and the number of decimals of its minor unit."""

    code: str
    exponent: int

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z]{3}", self.code):
            raise ValueError(f"currency code must be three capital letters, got {self.code!r}")
        if not 0 <= self.exponent <= 6:
            raise ValueError(f"currency exponent must be between 0 and 6, got {self.exponent}")


# The defaults seeded by the first migration; more are added with Ledger.add_currency().
DEFAULT_CURRENCIES: dict[str, Currency] = {
    "CNY": Currency("CNY", 2),
    "HKD": Currency("HKD", 2),
    "USD": Currency("USD", 2),
}


def parse_amount(text: str | Decimal, currency: Currency, *, max_minor: int = AMOUNT_MINOR_MAX) -> int:
    """Parse a positive decimal amount (``"128.50"``) into minor units of ``currency``.

    Refuses floats (binary fractions cannot hold 0.10 exactly), signs, exponents, more decimals
    than the currency has, zero, and anything above ``max_minor``.
    """
    if isinstance(text, bool) or isinstance(text, float):
        raise InvalidAmount(f'amount must be a decimal string such as "128.50", not a {type(text).__name__}')
    if isinstance(text, Decimal):
        if not text.is_finite():
            raise InvalidAmount("amount must be a finite decimal")
        text = format(text, "f")
    if not isinstance(text, str):
        raise InvalidAmount(f'amount must be a decimal string such as "128.50", not a {type(text).__name__}')
    if len(text) > _AMOUNT_TEXT_LENGTH_MAX:
        raise InvalidAmount(f"amount is {len(text)} characters long; at most {_AMOUNT_TEXT_LENGTH_MAX} are accepted")
    match = _DECIMAL_TEXT.fullmatch(text)
    if match is None:
        if text.startswith("-"):
            raise InvalidAmount(f"amount must be positive, got {text!r}")
        raise InvalidAmount(f'amount {text!r} is not a plain decimal number such as "128.50"')
    fraction = match["fraction"] or ""
    if len(fraction) > currency.exponent:
        # "1.50" in a 2-decimal currency is fine; "1.505" is not, and "1.500" is refused as well:
        # the edge takes at most the currency's decimals, so no amount is ever rounded silently.
        raise InvalidAmount(f"{currency.code} has {currency.exponent} decimal places; {text!r} has {len(fraction)}")
    if len(match["whole"].lstrip("0")) > len(str(max_minor)):
        raise InvalidAmount(
            f"amount {text} {currency.code} is above the maximum of {format_amount(max_minor, currency)}"
        )
    # Annotated: int ** int is Any to mypy (a negative exponent would give a float; none is).
    minor: int = int(match["whole"]) * 10**currency.exponent + int(fraction.ljust(currency.exponent, "0") or "0")
    if minor == 0:
        raise InvalidAmount("amount must be greater than zero")
    if minor > max_minor:
        raise InvalidAmount(
            f"amount {text} {currency.code} is above the maximum of {format_amount(max_minor, currency)}"
        )
    return minor


def format_amount(minor: int, currency: Currency) -> str:
    """Format minor units as a decimal string with exactly the currency's decimals."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"amounts are integers of minor units, not {type(minor).__name__}")
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**currency.exponent)
    if currency.exponent == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{currency.exponent}d}"


def to_decimal(minor: int, currency: Currency) -> Decimal:
    """The exact Decimal value of ``minor`` units, for FX arithmetic that must not use floats."""
    try:
        return Decimal(minor).scaleb(-currency.exponent)
    except InvalidOperation as error:  # pragma: no cover - Decimal(int) cannot fail
        raise InvalidAmount(str(error)) from error
