"""Settlement batches: closing a window, netting it, settling or unwinding it.

A window's batch is read from the books, never copied: its obligations are the transfers between
the window's position accounts (payments one way, refunds the other), summed per pair, plus the
obligations an earlier unwound batch carried into it. Netting them (``settlement.netting``) gives
each participant's multilateral net per currency and the hub-and-spoke instructions. The batch id
is its window's id.

Settling (closed -> settling -> settled | unwound):

1. **Plan**, in one transaction under the window's row lock: a net debtor whose settlement account
   (its prefunded liquidity) cannot pay its net debit is excluded, the rest re-netted, until every
   remaining net debit is funded. Excluded participants leave with every obligation they are party
   to; those obligations are **carried, unchanged, into the window open at that moment** (recorded
   in ``settlement_carried``), so they settle in a later batch: the payments stand (merchants were
   paid, customers debited), only the institutions' settlement of them moves on, and the carried
   debit keeps counting against the excluded institution's net debit cap until it settles. The
   window becomes ``settling``; the plan never changes after that.
2. **Post** the instructions as one linked chain between settlement accounts through the
   settlement bank's, pay-ins first, all or nothing. Leg ids derive from (window, currency, payer,
   payee), so a settle cut off after its chain committed and run again meets its own legs as
   replays and finishes, rather than paying twice.
3. **Finish**: ``settled``, or ``unwound`` when someone was excluded; the participants' caps in the
   open window are refreshed (a settled window no longer counts against them).

Windows settle oldest first: a batch's plan reads liquidity that an older unsettled batch would
spend.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass
from uuid import UUID

import sqlalchemy as sa

from ledger import Batcher, Ledger, ResultCode, TransferCommand, TransferKind
from ledger.db import read_transaction
from ledger.schema import transfers
from settlement.errors import BatchNotSettleable, WindowNotOpen
from settlement.liquidity import LiquidityDesk
from settlement.netting import NettingResult, Obligation, SettlementInstruction, net, unwind
from settlement.tables import settlement_carried, settlement_exclusions, settlement_windows
from settlement.windows import UNSETTLED_STATUSES, Window, WindowBook
from wallets.errors import NotFound
from wallets.model import AccountRole, Institution, InstitutionKind
from wallets.service import WalletBook

_LEG_NAMESPACE = uuid.UUID("6c1d2e4a-93b0-4f7e-8d5a-2b7c9e0f1a34")
SETTLEABLE_STATUSES = ("closed", "settling")
FINAL_STATUSES = ("settled", "unwound")


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A participant the batch left out: its net debit and the liquidity that could not fund it."""

    institution_id: str
    currency: str
    net_debit_minor: int
    liquidity_minor: int
    at_us: int


@dataclass(frozen=True, slots=True)
class StatusChange:
    status: str
    at_us: int
    actor: str | None


@dataclass(frozen=True, slots=True)
class Batch:
    window: Window
    settlement_bank_id: str
    obligations: tuple[Obligation, ...]  # everything the window holds, carried-in included
    carried_in: tuple[Obligation, ...]
    exclusions: tuple[Exclusion, ...]
    netting: NettingResult  # of what settles: the obligations less the excluded participants'
    history: tuple[StatusChange, ...]

    @property
    def id(self) -> int:
        return self.window.id

    @property
    def status(self) -> str:
        return self.window.status

    @property
    def carried_out(self) -> tuple[Obligation, ...]:
        return unwind(self.obligations, {e.institution_id for e in self.exclusions})[1]

    def involves(self, institution_id: str) -> bool:
        return any(o.involves({institution_id}) for o in self.obligations)


class SettlementDesk:
    def __init__(self, ledger: Ledger, batcher: Batcher, wallets: WalletBook, liquidity: LiquidityDesk) -> None:
        self.ledger = ledger
        self.batcher = batcher
        self.wallets = wallets
        self.liquidity = liquidity
        self.windows: WindowBook = liquidity.windows

    # -- reading ---------------------------------------------------------------------------------

    async def batch(self, window_id: int, *, open_ok: bool = False) -> Batch:
        """The window's batch (NotFound for an unknown window, or the open one unless ``open_ok``:
        an open window has running totals, not a batch)."""
        window = await self.windows.get(window_id)
        if window is None or (window.status == "open" and not open_ok):
            raise NotFound(f"no settlement batch {window_id}")
        bank_id = await self._settlement_bank_id_or_default()
        obligations, carried_in = await self._obligations(window_id)
        exclusions = await self._exclusions(window_id)
        kept, _ = unwind(obligations, {e.institution_id for e in exclusions})
        history = tuple(StatusChange(*change) for change in await self.windows.history(window_id))
        return Batch(
            window, bank_id, obligations, carried_in, exclusions, net(kept, settlement_bank_id=bank_id), history
        )

    async def _obligations(self, window_id: int) -> tuple[tuple[Obligation, ...], tuple[Obligation, ...]]:
        positions = await self.windows.positions(window_id)
        async with read_transaction(self.ledger.engine) as conn:
            sums: dict[tuple[str, str, str], int] = defaultdict(int)
            if positions:
                rows = await conn.execute(
                    sa.select(transfers.c.debit_account_id, transfers.c.credit_account_id, transfers.c.currency,
                              sa.func.sum(transfers.c.amount_minor))
                    .where(transfers.c.debit_account_id.in_(list(positions)))
                    .where(transfers.c.credit_account_id.in_(list(positions)))
                    .where(transfers.c.kind == TransferKind.POSTED.value)
                    .group_by(transfers.c.debit_account_id, transfers.c.credit_account_id, transfers.c.currency)
                )  # fmt: skip
                for debit, credit, currency, amount in rows:
                    sums[positions[debit], positions[credit], currency] += int(amount)
            carried_rows = await conn.execute(
                sa.select(settlement_carried).where(settlement_carried.c.to_window_id == window_id)
            )
            carried: dict[tuple[str, str, str], int] = defaultdict(int)
            for row in carried_rows:
                carried[row.debtor, row.creditor, row.currency] += row.amount_minor
        for key, amount in carried.items():
            sums[key] += amount
        return _obligation_list(sums), _obligation_list(carried)

    async def _exclusions(self, window_id: int) -> tuple[Exclusion, ...]:
        async with read_transaction(self.ledger.engine) as conn:
            rows = await conn.execute(
                sa.select(settlement_exclusions)
                .where(settlement_exclusions.c.window_id == window_id)
                .order_by(settlement_exclusions.c.institution_id)
            )
            return tuple(
                Exclusion(r.institution_id, r.currency, r.net_debit_minor, r.liquidity_minor, r.at_us) for r in rows
            )

    async def _settlement_bank(self) -> Institution | None:
        banks = [i for i in await self.wallets.list_institutions() if i.kind is InstitutionKind.SETTLEMENT_BANK]
        return min(banks, key=lambda bank: bank.id) if banks else None

    async def _settlement_bank_id_or_default(self) -> str:
        bank = await self._settlement_bank()
        return bank.id if bank is not None else "settlement-bank"

    # -- acting ----------------------------------------------------------------------------------

    async def close(self, window_id: int, *, actor: str) -> Batch:
        """Close the open window ``window_id`` (the next opens) and answer its batch."""
        try:
            await self.windows.close(window_id, actor=actor)
        except ValueError as refused:
            raise WindowNotOpen(str(refused)) from None
        return await self.batch(window_id)

    async def settle(self, window_id: int, *, actor: str) -> Batch:
        """Settle the batch (see the module docstring); a settled or unwound batch answers as it is."""
        window = await self.windows.get(window_id)
        if window is None:
            raise NotFound(f"no settlement batch {window_id}")
        if window.status in FINAL_STATUSES:
            return await self.batch(window_id)
        if window.status not in SETTLEABLE_STATUSES:
            raise BatchNotSettleable(f"batch {window_id} is {window.status}: only a closed batch settles")
        bank = await self._settlement_bank()
        if bank is None:
            raise BatchNotSettleable("no settlement bank is registered to settle through")
        await self._check_oldest(window_id)
        if window.status == "closed":
            await self._plan(window_id, bank, actor)
        batch = await self.batch(window_id)
        await self._post(batch, bank)
        final = "unwound" if batch.exclusions else "settled"
        try:
            await self.windows.set_status(window_id, final, actor=actor, expected=("settling",))
        except ValueError:
            if (await self.windows.require(window_id)).status not in FINAL_STATUSES:
                raise
            return await self.batch(window_id)  # a concurrent settle of the same plan finished it
        await self._refresh_caps(batch, actor)
        return await self.batch(window_id)

    async def _check_oldest(self, window_id: int) -> None:
        older = [w for w in await self.windows.list() if w.id < window_id and w.status in UNSETTLED_STATUSES]
        if older:
            raise BatchNotSettleable(f"settle batch {older[0].id} first: batches settle oldest first")

    async def _plan(self, window_id: int, bank: Institution, actor: str) -> None:
        obligations, _ = await self._obligations(window_id)
        excluded = await self._short_participants(obligations, bank.id)
        now_us = self.ledger.clock()
        async with self.ledger.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(settlement_windows.c.status).where(settlement_windows.c.id == window_id).with_for_update()
                )
            ).first()
            if row is None or row.status != "closed":
                return  # another settle planned it first: its plan stands
            if excluded:
                await _record_unwind(conn, window_id, obligations, excluded, now_us)
            await conn.execute(
                settlement_windows.update().where(settlement_windows.c.id == window_id).values(status="settling")
            )
            await self.windows.record_change(conn, window_id, "settling", actor)

    async def _short_participants(self, obligations: tuple[Obligation, ...], bank_id: str) -> dict[str, Exclusion]:
        """Net debtors the liquidity cannot fund, excluded one round at a time until none is left."""
        excluded: dict[str, Exclusion] = {}
        while True:
            kept, _ = unwind(obligations, set(excluded))
            short = [
                Exclusion(p.participant, p.currency, p.net_debit_minor, liquidity, self.ledger.clock())
                for netting in net(kept, settlement_bank_id=bank_id).currencies
                for p in netting.positions
                if p.direction == "pay"
                and (liquidity := await self._liquidity(p.participant, p.currency)) < p.net_debit_minor
            ]
            if not short:
                return excluded
            excluded.update((e.institution_id, e) for e in short)

    async def _liquidity(self, institution_id: str, currency: str) -> int:
        return await self.liquidity.liquidity_minor(await self.wallets.get_institution(institution_id), currency)

    async def _post(self, batch: Batch, bank: Institution) -> None:
        instructions = [i for netting in batch.netting.currencies for i in netting.instructions]
        if not instructions:
            return
        accounts = {
            i: await self._settlement_accounts(i) for i in {p for x in instructions for p in (x.payer, x.payee)}
        }
        chain = [
            _leg(batch.id, instruction, accounts, linked=n < len(instructions) - 1)
            for n, instruction in enumerate(instructions)
        ]
        results = await self.batcher.submit_many(chain)
        failed = [r for r in results if not r.ok and r.code is not ResultCode.LINKED_EVENT_FAILED]
        if failed:
            raise BatchNotSettleable(
                f"batch {batch.id}: the settlement chain was refused ({failed[0].code.value}); nothing moved"
            )

    async def _settlement_accounts(self, institution_id: str) -> dict[str, UUID]:
        institution = await self.wallets.get_institution(institution_id)
        return {
            currency: account
            for (currency, role), account in institution.accounts.items()
            if role is AccountRole.SETTLEMENT
        }

    async def _refresh_caps(self, batch: Batch, actor: str) -> None:
        for participant in sorted({p for o in batch.obligations for p in (o.debtor, o.creditor)}):
            await self.liquidity.refresh_cap(await self.wallets.get_institution(participant), actor=actor)


async def _record_unwind(
    conn, window_id: int, obligations: tuple[Obligation, ...], excluded: dict[str, Exclusion], now_us: int
) -> None:
    for exclusion in excluded.values():
        await conn.execute(
            settlement_exclusions.insert().values(
                window_id=window_id, institution_id=exclusion.institution_id, currency=exclusion.currency,
                net_debit_minor=exclusion.net_debit_minor, liquidity_minor=exclusion.liquidity_minor, at_us=now_us,
            )
        )  # fmt: skip
    # The open window's row lock orders this against a close: the carried obligations land in the
    # window that is open when they are written, and in its batch.
    open_window = (
        await conn.execute(
            sa.select(settlement_windows.c.id).where(settlement_windows.c.status == "open").with_for_update()
        )
    ).scalar_one()
    _, removed = unwind(obligations, set(excluded))
    for obligation in removed:
        await conn.execute(
            settlement_carried.insert().values(
                from_window_id=window_id, debtor=obligation.debtor, creditor=obligation.creditor,
                currency=obligation.currency, to_window_id=open_window, amount_minor=obligation.amount_minor,
            )
        )  # fmt: skip


def _leg(
    window_id: int, instruction: SettlementInstruction, accounts: dict[str, dict[str, UUID]], *, linked: bool
) -> TransferCommand:
    payer, payee, currency = instruction.payer, instruction.payee, instruction.currency
    leg_id = uuid.uuid5(_LEG_NAMESPACE, f"{window_id}/{currency}/{payer}/{payee}")
    user_data = json.dumps({"op": "settlement", "window": window_id}, sort_keys=True, separators=(",", ":"))
    return TransferCommand.posted(
        leg_id, accounts[payer][currency], accounts[payee][currency], instruction.amount_minor, currency,
        linked=linked, user_data=user_data,
    )  # fmt: skip


def _obligation_list(sums: dict[tuple[str, str, str], int]) -> tuple[Obligation, ...]:
    return tuple(sorted(Obligation(d, c, cur, amount) for (d, c, cur), amount in sums.items() if amount > 0))


__all__ = ["Batch", "Exclusion", "SettlementDesk", "StatusChange"]
