"""Prefunded settlement liquidity and the net debit cap in force.

An institution's liquidity is real money in its settlement account (one per currency, opened with
the institution; it can never go below zero). Prefunding moves money from the institution's funding
account (its money outside the ledger) into it. Settlement pays net debits out of it.

The cap in force on an institution's net debit position is its registered net debit cap bounded by
its liquidity in the settlement currency (Mojaloop's NDC: a cap beyond the collateral behind it
protects nobody), unless the operator explicitly allowed the cap beyond liquidity. An institution
with no registered cap is bounded by its liquidity alone.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import sqlalchemy as sa

from ledger import Batcher, Ledger, TransferCommand, TransferResult
from ledger.db import read_transaction
from settlement.tables import settlement_cap_overrides
from settlement.windows import SETTLEMENT_CURRENCY, Window, WindowBook
from wallets.errors import InvalidRequest
from wallets.ids import Origin, scoped_id
from wallets.model import AccountRole, Institution
from wallets.service import WalletBook

# The currencies institutions hold positions in: the corridor's system currencies.
POSITION_CURRENCIES = ("CNY", "HKD")


class LiquidityDesk:
    def __init__(
        self, ledger: Ledger, batcher: Batcher, wallets: WalletBook, windows: WindowBook, clock: Callable[[], int]
    ) -> None:
        self.ledger = ledger
        self.batcher = batcher
        self.wallets = wallets
        self.windows = windows
        self._institutions: dict[str, Institution] = {}
        self.clock = clock

    async def prefund(
        self, institution_id: str, request_id: UUID, amount_minor: int, currency: str, *, actor: str
    ) -> TransferResult:
        """Move ``amount_minor`` from the institution's funding account into its settlement account,
        idempotently under ``request_id``; the cap in force on its open-window position follows."""
        institution = await self.wallets.get_institution(institution_id)
        result = await self.batcher.submit(self._command(institution, request_id, amount_minor, currency, actor=actor))
        if result.ok and not result.replayed:
            await self.refresh_cap(institution, actor=actor)
        return result

    async def refresh_cap(self, institution: Institution, *, actor: str) -> None:
        """Give the institution's positions in the open window (each currency) the cap in force now."""
        for currency in POSITION_CURRENCIES:
            cap = await self.cap_in_force(institution, currency)
            await self.windows.refresh_cap(institution.id, cap, actor=actor, currency=currency)

    def _command(
        self, institution: Institution, request_id: UUID, amount_minor: int, currency: str, *, actor: str
    ) -> TransferCommand:
        funding = institution.accounts.get((currency, AccountRole.FUNDING))
        settlement = institution.accounts.get((currency, AccountRole.SETTLEMENT))
        if funding is None or settlement is None:
            raise InvalidRequest(f"{institution.id} holds no {currency}")
        origin = Origin(actor, request_id, "liquidity", {"institution": institution.id})
        return TransferCommand.posted(
            scoped_id(institution.id, request_id, "liquidity"), funding, settlement, amount_minor, currency,
            user_data=origin.encode(),
        )  # fmt: skip

    async def institution(self, institution_id: str) -> Institution:
        """The institution, remembered: what settlement reads of it (its system accounts and its
        registered net debit cap) never changes once it is registered."""
        institution = self._institutions.get(institution_id)
        if institution is None:
            institution = await self.wallets.get_institution(institution_id)
            self._institutions[institution_id] = institution
        return institution

    async def position(
        self, window: Window, institution_id: str, *, actor: str, currency: str = SETTLEMENT_CURRENCY
    ) -> UUID:
        """The institution's position account in ``window`` for a money path: known ones without a
        read; a new one opened with the cap in force now (``WindowBook.position_for_payment``)."""
        known = self.windows.known_position(window, institution_id, currency)
        if known is not None:
            return known
        cap = await self.cap_in_force(await self.institution(institution_id), currency)
        return await self.windows.position_for_payment(window, institution_id, cap, actor=actor, currency=currency)

    async def liquidity_minor(self, institution: Institution, currency: str = SETTLEMENT_CURRENCY) -> int:
        account_id = institution.accounts.get((currency, AccountRole.SETTLEMENT))
        account = None if account_id is None else await self.ledger.get_account(account_id)
        return 0 if account is None else account.balances.posted_minor

    async def beyond_liquidity(self, institution_id: str) -> bool:
        async with read_transaction(self.ledger.engine) as conn:
            row = (
                await conn.execute(
                    sa.select(settlement_cap_overrides.c.beyond_liquidity).where(
                        settlement_cap_overrides.c.institution_id == institution_id
                    )
                )
            ).first()
        return bool(row and row.beyond_liquidity)

    async def allow_beyond_liquidity(self, institution_id: str, allowed: bool, *, actor: str) -> None:
        """The operator's explicit word: ``institution_id``'s cap may (or may no longer) pass its liquidity."""
        await self.wallets.get_institution(institution_id)  # NotFound for an unknown one
        values = {"beyond_liquidity": allowed, "set_at_us": self.clock(), "actor": actor}
        async with self.ledger.engine.begin() as conn:
            done = await conn.execute(
                settlement_cap_overrides.update()
                .where(settlement_cap_overrides.c.institution_id == institution_id)
                .values(**values)
            )
            if done.rowcount == 0:
                await conn.execute(settlement_cap_overrides.insert().values(institution_id=institution_id, **values))
        await self.refresh_cap(await self.wallets.get_institution(institution_id), actor=actor)

    async def cap_in_force(self, institution: Institution, currency: str = SETTLEMENT_CURRENCY) -> int | None:
        """The cap on the institution's net debit in ``currency`` (None: no cap): its registered cap
        if registered in that currency, bounded by its liquidity in that currency."""
        cap = institution.net_debit_cap
        registered = cap[0] if cap is not None and cap[1] == currency else None
        if await self.beyond_liquidity(institution.id):
            return registered
        liquidity = await self.liquidity_minor(institution, currency)
        return liquidity if registered is None else min(registered, liquidity)


__all__ = ["LiquidityDesk"]
