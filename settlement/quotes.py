"""The quote desk: prices a conversion at the pair's current customer rate, signs it with the
ledger's Ed25519 key (the audit chain's key, published by ``GET /v1/audit/head``), stores it, and
hands it back to its institution, and to the payment desk while it is unexpired.

What is signed is ``settlement.fx.canonical_quote_json`` of the quote: anyone holding the ledger's
public key can check a quote from its fields alone. Every read checks the stored signature again,
so a row changed behind the ledger's back (a better rate, a smaller source amount) is found before
anything is paid at it.

A quote is not marked used here: a payment's first leg has an id derived from the quote, so the
ledger itself refuses a second payment under it (``settlement.payments``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from nacl.exceptions import BadSignatureError

from ledger import Ledger
from ledger.db import read_transaction
from ledger.ids import uuid7
from settlement import fx
from settlement.fx_errors import NoRate, QuoteExpired, QuoteNotFound, QuoteSignatureInvalid
from settlement.fx_tables import fx_quotes
from settlement.rates import RateBook, check_pair

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A quote lives at least a second and at most ten minutes: long enough to show a customer, short
# enough that a rate change reaches payments soon.
QUOTE_TTL_MIN = timedelta(seconds=1)
QUOTE_TTL_MAX = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class SignedQuote:
    """A stored quote and the ledger's signature over its canonical JSON. Has the fields the payment
    desk reads (``settlement.payments.UsableQuote``)."""

    id: UUID
    institution_id: str
    source_currency: str
    target_currency: str
    rate: Decimal
    source_minor: int
    target_minor: int
    created_at_us: int
    expires_at_us: int
    signature: bytes

    def is_expired(self, now_us: int) -> bool:
        """True from ``expires_at`` on (the last usable instant is just before it), as fx.Quote says."""
        return now_us >= self.expires_at_us


def moment_from_us(timestamp_us: int) -> datetime:
    """A UTC datetime from microseconds since the epoch (exact: no float in between)."""
    return _EPOCH + timedelta(microseconds=timestamp_us)


def us_from_moment(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


class QuoteDesk:
    def __init__(self, ledger: Ledger, rates: RateBook, *, ttl: timedelta = fx.QUOTE_TTL_DEFAULT) -> None:
        _check_ttl(ttl)
        self.ledger = ledger
        self.rates = rates
        self.ttl = ttl

    async def issue(
        self,
        institution_id: str,
        source_currency: str,
        target_currency: str,
        *,
        source_minor: int | None = None,
        target_minor: int | None = None,
        ttl: timedelta | None = None,
    ) -> SignedQuote:
        """Price, sign and store a quote for ``institution_id``: give exactly one of the amounts.

        Raises UnsupportedPair, NoRate (no rate set for the pair), or settlement.fx's
        InvalidQuoteAmount (neither or both amounts, or one that prices to nothing or too much)."""
        check_pair(source_currency, target_currency)
        ttl = self.ttl if ttl is None else ttl
        _check_ttl(ttl)
        rate = await self.rates.current(source_currency, target_currency)
        if rate is None:
            raise NoRate(
                f"no {source_currency}→{target_currency} rate has been set: an operator sets one "
                "(POST /v1/fx/rates) before quotes can be given"
            )
        quote = fx.new_quote(
            str(uuid7()), rate.customer_rate,
            source_currency=await self.ledger.currency(source_currency),
            target_currency=await self.ledger.currency(target_currency),
            created_at=moment_from_us(self.ledger.clock()),
            source_minor=source_minor, target_minor=target_minor, ttl=ttl,
        )  # fmt: skip
        signed = _signed(institution_id, quote, self.ledger.signing_key.sign(fx.canonical_quote_json(quote)).signature)
        async with self.ledger.engine.begin() as conn:
            await conn.execute(fx_quotes.insert().values(**_row_values(signed)))
        return signed

    async def get(self, institution_id: str, quote_id: UUID) -> SignedQuote:
        """The institution's quote, expired or not, its signature checked. QuoteNotFound for an
        unknown id and for another institution's quote alike."""
        async with read_transaction(self.ledger.engine) as conn:
            row = (await conn.execute(sa.select(fx_quotes).where(fx_quotes.c.id == quote_id))).first()
        if row is None or row.institution_id != institution_id:
            raise QuoteNotFound(f"no quote {quote_id}")
        return await self._verified(row._mapping)

    async def lookup(self, institution_id: str, quote_id: UUID, now_us: int) -> SignedQuote:
        """The payment desk's ``QuoteLookup``: the institution's quote if still usable at ``now_us``.
        Raises QuoteNotFound, or QuoteExpired from its ``expires_at`` on."""
        quote = await self.get(institution_id, quote_id)
        if quote.is_expired(now_us):
            raise QuoteExpired(
                f"quote {quote_id} expired at {moment_from_us(quote.expires_at_us).isoformat()}: ask for a new one"
            )
        return quote

    async def _verified(self, row: Any) -> SignedQuote:
        """The stored row as a SignedQuote, after checking that it is a consistent quote and that the
        ledger signed exactly these fields (QuoteSignatureInvalid otherwise: tampered or corrupt)."""
        try:
            signed = SignedQuote(
                id=row["id"], institution_id=row["institution_id"], source_currency=row["source_currency"],
                target_currency=row["target_currency"], rate=Decimal(row["rate"]),
                source_minor=int(row["source_minor"]), target_minor=int(row["target_minor"]),
                created_at_us=int(row["created_at_us"]), expires_at_us=int(row["expires_at_us"]),
                signature=bytes(row["signature"]),
            )  # fmt: skip
            quote = await self.as_fx_quote(signed)
            self.ledger.verify_key.verify(fx.canonical_quote_json(quote), signed.signature)
        except (BadSignatureError, ArithmeticError, ValueError) as error:  # fx.FxError is a ValueError
            raise QuoteSignatureInvalid(f"stored quote {row['id']} fails its signature check: {error}") from None
        return signed

    async def as_fx_quote(self, signed: SignedQuote) -> fx.Quote:
        """The settlement.fx Quote of ``signed`` (what its signature covers)."""
        return fx.Quote(
            quote_id=str(signed.id),
            source_currency=await self.ledger.currency(signed.source_currency),
            target_currency=await self.ledger.currency(signed.target_currency),
            rate=signed.rate,
            source_minor=signed.source_minor,
            target_minor=signed.target_minor,
            created_at=moment_from_us(signed.created_at_us),
            expires_at=moment_from_us(signed.expires_at_us),
        )


def _check_ttl(ttl: timedelta) -> None:
    if not QUOTE_TTL_MIN <= ttl <= QUOTE_TTL_MAX:
        raise ValueError(f"a quote's lifetime must be from {QUOTE_TTL_MIN} to {QUOTE_TTL_MAX}, got {ttl}")


def _signed(institution_id: str, quote: fx.Quote, signature: bytes) -> SignedQuote:
    return SignedQuote(
        id=UUID(quote.quote_id), institution_id=institution_id, source_currency=quote.source_currency.code,
        target_currency=quote.target_currency.code, rate=quote.rate, source_minor=quote.source_minor,
        target_minor=quote.target_minor, created_at_us=us_from_moment(quote.created_at),
        expires_at_us=us_from_moment(quote.expires_at), signature=signature,
    )  # fmt: skip


def _row_values(signed: SignedQuote) -> dict[str, Any]:
    return {
        "id": signed.id, "institution_id": signed.institution_id, "source_currency": signed.source_currency,
        "target_currency": signed.target_currency, "rate": format(signed.rate.quantize(fx.RATE_QUANTUM), "f"),
        "source_minor": signed.source_minor, "target_minor": signed.target_minor,
        "created_at_us": signed.created_at_us, "expires_at_us": signed.expires_at_us, "signature": signed.signature,
    }  # fmt: skip


__all__ = ["QUOTE_TTL_MAX", "QUOTE_TTL_MIN", "QuoteDesk", "SignedQuote", "moment_from_us"]
