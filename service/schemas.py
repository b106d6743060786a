"""Edge models shared by every resource: money fields, pages, problems, health answers.

Pydantic checks syntax only (Cosmic Python: syntax at the edge, meaning in the service layer). An
amount here is text that *looks* like a positive decimal; whether it fits its currency (decimals,
zero, the maximum) is for ``ledger.money.parse_amount``, which turns it into integer minor units.
No float ever holds an amount: a JSON number is refused outright, even ``1.5``.
"""

from __future__ import annotations

import re
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ledger.money import Currency, parse_amount

# Digits with an optional fraction: no sign, no exponent, no spaces, not empty.
AMOUNT_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
# Longer text is refused before any digit is read (as parse_amount does); generous for any amount.
AMOUNT_TEXT_LENGTH_MAX = 64
_AMOUNT_TEXT = re.compile(AMOUNT_PATTERN)


def _amount_text(value: object) -> object:
    """Refuse anything but a plain decimal string, with the error type ``invalid_amount`` so that
    the problem's code says what is wrong (see ``problems.validation_problem``)."""
    if not isinstance(value, str):
        raise PydanticCustomError(
            "invalid_amount",
            'an amount is a decimal string such as "128.50", not a JSON {kind}',
            {"kind": _json_kind(value)},
        )
    if len(value) > AMOUNT_TEXT_LENGTH_MAX:
        raise PydanticCustomError(
            "invalid_amount", "an amount has at most {limit} characters", {"limit": AMOUNT_TEXT_LENGTH_MAX}
        )
    if not _AMOUNT_TEXT.fullmatch(value):
        raise PydanticCustomError(
            "invalid_amount",
            'an amount is digits with an optional fraction such as "128.50": no sign, exponent or spaces',
        )
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return "array" if isinstance(value, list) else "object"


# The validator comes last so that it wraps the constrained string and runs first; the Field's
# pattern then still lands in the JSON schema (placed after the validator, pydantic drops it).
AmountStr = Annotated[
    str,
    Field(
        pattern=AMOUNT_PATTERN,
        max_length=AMOUNT_TEXT_LENGTH_MAX,
        examples=["128.50"],
        description="A positive decimal string with at most the currency's decimals; never a JSON number.",
    ),
    BeforeValidator(_amount_text),
]

CurrencyCode = Annotated[
    str,
    Field(pattern=r"^[A-Z]{3}$", examples=["CNY", "HKD"], description="ISO 4217 code, three capital letters."),
]


class RequestModel(BaseModel):
    """Base of request bodies: strict types (no ``"1"`` for ``1``; JSON strings still give UUIDs and
    datetimes) and unknown fields refused, so a misspelt ``ammount`` is an error, not ignored."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ResponseModel(BaseModel):
    """Base of response bodies."""

    model_config = ConfigDict(frozen=True)


class Money(RequestModel):
    """An amount beside its currency, as in ``net_debit_cap``."""

    amount: AmountStr
    currency: CurrencyCode

    def minor_units(self, currency: Currency) -> int:
        """The amount in integer minor units of ``currency`` (which the caller looked up for
        ``self.currency``); raises ``InvalidAmount`` for too many decimals, zero or too much."""
        if currency.code != self.currency:
            raise ValueError(f"looked up {currency.code} for an amount in {self.currency}")
        return parse_amount(self.amount, currency)


ItemT = TypeVar("ItemT")

PAGE_LIMIT_DEFAULT = 50
PAGE_LIMIT_MAX = 500


class Page(ResponseModel, Generic[ItemT]):
    """One page of a list; ``next_cursor`` is null on the last page."""

    items: list[ItemT]
    next_cursor: str | None = None


class FieldProblem(ResponseModel):
    pointer: str = Field(description="JSON Pointer (RFC 6901) into the request body, as a URI fragment: '#/amount'.")
    detail: str


class Problem(ResponseModel):
    """RFC 9457 problem details. Match on ``code``; ``detail`` is for people."""

    type: str = Field(examples=["urn:sz-hk-ledger:problem:invalid_amount"])
    title: str
    status: int
    detail: str
    code: str = Field(examples=["invalid_amount"])
    errors: list[FieldProblem] | None = Field(default=None, description="Field problems of a validation failure.")
    request_id: str | None = Field(default=None, description="The X-Request-Id of the request, to quote to support.")


class HealthStatus(ResponseModel):
    status: Literal["ok"] = "ok"


class ReadinessStatus(ResponseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, str] = Field(examples=[{"database": "ok", "batcher": "ok"}])
