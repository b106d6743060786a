"""The registered currencies and their exponents: one table, read once and cached per process."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db import read_transaction
from ledger.errors import UnknownCurrency
from ledger.money import Currency
from ledger.schema import currencies


class CurrencyBook:
    """The currency half of a :class:`ledger.Ledger`; the ledger hands it its engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._cached: dict[str, Currency] | None = None

    async def currencies(self, *, refresh: bool = False) -> dict[str, Currency]:
        """The registered currencies, cached; ``refresh`` reads them again (another process may
        have added one)."""
        if self._cached is None or refresh:
            async with read_transaction(self.engine) as conn:
                rows = await conn.execute(sa.select(currencies))
                self._cached = {row.code: Currency(row.code, row.exponent) for row in rows}
        return self._cached

    async def currency(self, code: str) -> Currency:
        found = (await self.currencies()).get(code) or (await self.currencies(refresh=True)).get(code)
        if found is None:
            raise UnknownCurrency(f"unknown currency {code!r}")
        return found

    async def add_currency(self, currency: Currency) -> None:
        """Register a currency's exponent. Re-adding the same one is a no-op; changing one is refused."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(sa.select(currencies).where(currencies.c.code == currency.code))).first()
            if row is None:
                await conn.execute(currencies.insert().values(code=currency.code, exponent=currency.exponent))
            elif row.exponent != currency.exponent:
                raise ValueError(f"{currency.code} already has exponent {row.exponent}; exponents never change")
        self._cached = None
