"""The rate book: the HKD↔CNY rates operators set, kept as history (a new rate is a new row; the
current rate of a pair is its newest). Quotes price at the current rate's customer rate
(``settlement.fx.customer_rate``: mid less the spread, rounded in the institution's favour)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from ledger import Ledger
from ledger.db import read_transaction
from settlement import fx
from settlement.fx_errors import UnsupportedPair
from settlement.fx_tables import RATE_TEXT_LENGTH_MAX, fx_rates

# The corridor converts between these two, in either direction.
CORRIDOR_CURRENCIES = frozenset({"HKD", "CNY"})
HISTORY_PAGE_DEFAULT = 50
HISTORY_PAGE_MAX = 500


@dataclass(frozen=True, slots=True)
class Rate:
    """One rate as an operator set it. ``customer_rate`` is what quotes use."""

    id: int
    source_currency: str
    target_currency: str
    mid_rate: Decimal
    spread_bps: int
    set_at_us: int
    actor: str

    @property
    def customer_rate(self) -> Decimal:
        return fx.customer_rate(self.mid_rate, self.spread_bps)


def check_pair(source_currency: str, target_currency: str) -> None:
    """Raise UnsupportedPair unless the pair is HKD→CNY or CNY→HKD."""
    if source_currency == target_currency:
        raise UnsupportedPair(f"source and target currency are both {source_currency}: nothing to convert")
    if {source_currency, target_currency} != CORRIDOR_CURRENCIES:
        raise UnsupportedPair(
            f"the corridor converts HKD to CNY and CNY to HKD, not {source_currency} to {target_currency}"
        )


class RateBook:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def set_rate(
        self, source_currency: str, target_currency: str, mid_rate: Decimal, spread_bps: int, *, actor: str
    ) -> Rate:
        """Record the pair's rate from now on. Raises UnsupportedPair, or settlement.fx's InvalidRate
        or InvalidSpread (a mid rate that is not a positive finite Decimal within bounds, a spread
        outside 0..10,000 bps, or a customer rate that rounds to zero)."""
        check_pair(source_currency, target_currency)
        fx.customer_rate(mid_rate, spread_bps)  # the same checks a quote will make, before the write
        mid_text = format(mid_rate, "f")
        if len(mid_text) > RATE_TEXT_LENGTH_MAX:
            raise fx.InvalidRate(f"mid rate {mid_text} has more than {RATE_TEXT_LENGTH_MAX} characters")
        values = {
            "source_currency": source_currency, "target_currency": target_currency, "mid_rate": mid_text,
            "spread_bps": spread_bps, "set_at_us": self.ledger.clock(), "actor": actor,
        }  # fmt: skip
        async with self.ledger.engine.begin() as conn:
            rate_id = (await conn.execute(fx_rates.insert().values(**values).returning(fx_rates.c.id))).scalar_one()
        return _rate({"id": rate_id, **values})

    async def current(self, source_currency: str, target_currency: str) -> Rate | None:
        """The pair's newest rate, or None before any was set."""
        query = (
            sa.select(fx_rates)
            .where(fx_rates.c.source_currency == source_currency, fx_rates.c.target_currency == target_currency)
            .order_by(fx_rates.c.id.desc())
            .limit(1)
        )
        async with read_transaction(self.ledger.engine) as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _rate(row._mapping)

    async def current_rates(self) -> list[Rate]:
        """The newest rate of every pair that has one, by source then target currency."""
        newest = sa.select(sa.func.max(fx_rates.c.id)).group_by(fx_rates.c.source_currency, fx_rates.c.target_currency)
        query = (
            sa.select(fx_rates)
            .where(fx_rates.c.id.in_(newest))
            .order_by(fx_rates.c.source_currency, fx_rates.c.target_currency)
        )
        async with read_transaction(self.ledger.engine) as conn:
            return [_rate(row._mapping) for row in await conn.execute(query)]

    async def history(
        self, *, limit: int = HISTORY_PAGE_DEFAULT, cursor: int | None = None
    ) -> tuple[list[Rate], int | None]:
        """Every rate set, newest first: one page of at most ``limit`` (1..HISTORY_PAGE_MAX) and the
        cursor of the next page (None on the last). ``cursor`` is a next cursor this gave out."""
        if not 1 <= limit <= HISTORY_PAGE_MAX:
            raise ValueError(f"limit must be from 1 to {HISTORY_PAGE_MAX}, got {limit}")
        query = sa.select(fx_rates).order_by(fx_rates.c.id.desc()).limit(limit + 1)
        if cursor is not None:
            query = query.where(fx_rates.c.id < cursor)
        async with read_transaction(self.ledger.engine) as conn:
            rates = [_rate(row._mapping) for row in await conn.execute(query)]
        page = rates[:limit]
        return page, (page[-1].id if len(rates) > limit else None)


def _rate(row: Any) -> Rate:
    # Checked right after reading: a stored mid rate that is no longer a valid rate is refused here,
    # before anything is priced at it.
    try:
        mid_rate = Decimal(row["mid_rate"])
    except InvalidOperation:
        raise fx.InvalidRate(f"stored mid rate {row['mid_rate']!r} of rate {row['id']} is not a number") from None
    fx.customer_rate(mid_rate, int(row["spread_bps"]))
    return Rate(
        id=int(row["id"]), source_currency=row["source_currency"], target_currency=row["target_currency"],
        mid_rate=mid_rate, spread_bps=int(row["spread_bps"]), set_at_us=int(row["set_at_us"]), actor=row["actor"],
    )  # fmt: skip


__all__ = ["CORRIDOR_CURRENCIES", "Rate", "RateBook", "check_pair"]
