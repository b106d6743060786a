"""What the console's pages show, read with indexed, bounded queries (no page reads a whole table
that grows with the ledger):

- windows: ``settlement_windows`` by primary key, newest first, a page at a time (``before`` cursor);
  the open one through its partial unique index ``uq_settlement_windows_open``;
- a window's positions: ``window_positions`` by its primary key (window id first), then the
  accounts by primary key; its obligations counted on ``ix_transfers_debit_account_id_seq``
  (every obligation debits exactly one position account of its window);
- an institution's wallets counted on ``ix_wallets_institution_id_id``; its open-window position
  account by primary key (the id is derived); what closed windows still owe through
  ``WindowBook.unsettled_debit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import sqlalchemy as sa

from ledger import Ledger, format_amount
from ledger.db import read_transaction
from ledger.schema import transfers
from settlement.tables import settlement_windows
from settlement.windows import SETTLEMENT_CURRENCY, Window, WindowBook, position_account_id
from wallets.model import Institution
from wallets.schema import wallets

WINDOWS_PAGE_SIZE_DEFAULT = 20
WINDOWS_PAGE_SIZE_MAX = 100


@dataclass(frozen=True, slots=True)
class CurrencyTotal:
    currency: str
    obligations: int
    gross: str


@dataclass(frozen=True, slots=True)
class PositionRow:
    institution_id: str
    currency: str
    account_id: UUID
    paid: str  # obligations it owes (debits of its position account)
    received: str  # obligations owed to it (credits)
    net: str  # received less paid: positive receives, negative pays
    net_minor: int
    direction: str  # "receive", "pay" or "flat"


@dataclass(frozen=True, slots=True)
class WindowFigures:
    obligations: int
    totals: list[CurrencyTotal]
    positions: list[PositionRow]


@dataclass(frozen=True, slots=True)
class WindowsPage:
    windows: list[Window]
    next_before: int | None  # the cursor of the next (older) page


@dataclass(frozen=True, slots=True)
class CapUsage:
    cap: str | None  # the net debit cap as registered, with its currency
    used: str  # open-window net debit plus what closed windows still owe, in the settlement currency
    open_window_debit: str
    unsettled_debit: str
    ratio: float | None  # used / cap (display only: never money arithmetic), None without a cap
    same_currency: bool


async def windows_page(ledger: Ledger, before: int | None, size: int) -> WindowsPage:
    size = max(1, min(size, WINDOWS_PAGE_SIZE_MAX))
    query = sa.select(settlement_windows).order_by(settlement_windows.c.id.desc()).limit(size + 1)
    if before is not None:
        query = query.where(settlement_windows.c.id < before)
    async with read_transaction(ledger.engine) as conn:
        rows = (await conn.execute(query)).all()
    windows = [Window(row.id, row.status, row.opened_at_us, row.closed_at_us) for row in rows[:size]]
    return WindowsPage(windows, windows[-1].id if len(rows) > size else None)


async def open_window(ledger: Ledger) -> Window | None:
    """The open window, or None; unlike ``WindowBook.open_window`` it never opens one (a page
    read must not write)."""
    async with read_transaction(ledger.engine) as conn:
        row = (await conn.execute(sa.select(settlement_windows).where(settlement_windows.c.status == "open"))).first()
    return None if row is None else Window(row.id, row.status, row.opened_at_us, row.closed_at_us)


async def window_figures(ledger: Ledger, book: WindowBook, window_id: int) -> WindowFigures:
    """The window's obligations (count and gross per currency) and each participant's position,
    from its position accounts: live for the open window."""
    owners = await book.positions(window_id)
    accounts = await ledger.get_accounts(list(owners))
    obligations = await _obligations_count(ledger, list(owners))
    gross: dict[str, int] = {}
    positions = []
    for account_id, institution_id in sorted(owners.items(), key=lambda item: item[1]):
        account = accounts.get(account_id)
        if account is None:  # registered but not yet created by a racing payment: nothing in it
            continue
        currency = await ledger.currency(account.currency)
        balances = account.balances
        gross[account.currency] = gross.get(account.currency, 0) + balances.debits_posted
        net_minor = balances.credits_posted - balances.debits_posted
        positions.append(
            PositionRow(
                institution_id,
                account.currency,
                account_id,
                format_amount(balances.debits_posted, currency),
                format_amount(balances.credits_posted, currency),
                format_amount(net_minor, currency),
                net_minor,
                "receive" if net_minor > 0 else "pay" if net_minor < 0 else "flat",
            )
        )
    totals = [
        CurrencyTotal(code, obligations, format_amount(minor, await ledger.currency(code)))
        for code, minor in sorted(gross.items())
    ]
    return WindowFigures(obligations, totals, positions)


async def _obligations_count(ledger: Ledger, account_ids: Sequence[UUID]) -> int:
    if not account_ids:
        return 0
    async with read_transaction(ledger.engine) as conn:
        return (
            await conn.execute(
                sa.select(sa.func.count()).select_from(transfers).where(transfers.c.debit_account_id.in_(account_ids))
            )
        ).scalar_one()


async def wallets_count(ledger: Ledger, institution_id: str) -> int:
    async with read_transaction(ledger.engine) as conn:
        return (
            await conn.execute(
                sa.select(sa.func.count()).select_from(wallets).where(wallets.c.institution_id == institution_id)
            )
        ).scalar_one()


async def cap_usage(ledger: Ledger, book: WindowBook, institution: Institution) -> CapUsage:
    """Net-debit-cap usage as settlement counts it: the open window's net debit plus what closed
    windows not yet settled still owe (``WindowBook.unsettled_debit``)."""
    window = await open_window(ledger)
    open_debit = 0
    if window is not None:
        account = await ledger.get_account(position_account_id(window.id, institution.id, SETTLEMENT_CURRENCY))
        if account is not None:
            b = account.balances
            open_debit = max(0, b.debits_posted + b.debits_pending - b.credits_posted)
    unsettled = await book.unsettled_debit(institution.id)
    settlement_currency = await ledger.currency(SETTLEMENT_CURRENCY)
    used = open_debit + unsettled
    cap_text, ratio, same_currency = None, None, True
    if institution.net_debit_cap is not None:
        cap_minor, cap_code = institution.net_debit_cap
        cap_text = f"{format_amount(cap_minor, await ledger.currency(cap_code))} {cap_code}"
        same_currency = cap_code == SETTLEMENT_CURRENCY
        ratio = (used / cap_minor if cap_minor else (1.0 if used else 0.0)) if same_currency else None
    return CapUsage(
        cap_text,
        f"{format_amount(used, settlement_currency)} {SETTLEMENT_CURRENCY}",
        f"{format_amount(open_debit, settlement_currency)} {SETTLEMENT_CURRENCY}",
        f"{format_amount(unsettled, settlement_currency)} {SETTLEMENT_CURRENCY}",
        ratio,
        same_currency,
    )
