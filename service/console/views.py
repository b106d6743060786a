"""What the console's pages show, read with indexed, bounded queries (no page reads a whole table
that grows with the ledger):

- windows: ``settlement_windows`` by primary key, newest first, a page at a time (``before`` cursor);
  the open one through its partial unique index ``uq_settlement_windows_open``;
- a window's positions: ``window_positions`` by its primary key (window id first), then the
  accounts by primary key; its obligations counted on ``ix_transfers_debit_account_id_seq``
  (every obligation debits exactly one position account of its window);
- institutions by primary key, a page at a time (``after`` cursor);
- an institution's wallets counted on ``ix_wallets_institution_id_id``; its open-window position
  account by primary key (the id is derived); what unsettled windows still owe through
  ``WindowBook.unsettled_debit`` (``window_positions`` on ``ix_window_positions_institution_id``);
- a batch (``service.console.batches``): ``SettlementDesk.batch`` sums the transfers between the
  window's position accounts on ``ix_transfers_debit_account_id_seq``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import sqlalchemy as sa

from ledger import Ledger, format_amount
from ledger.db import read_transaction
from ledger.schema import transfers
from settlement.desks import Settlement
from settlement.tables import settlement_windows
from settlement.windows import SETTLEMENT_CURRENCY, Window, WindowBook
from wallets.model import Institution
from wallets.schema import institutions, wallets

WINDOWS_PAGE_SIZE_DEFAULT = 20
WINDOWS_PAGE_SIZE_MAX = 100
INSTITUTIONS_PAGE_SIZE_DEFAULT = 50
INSTITUTIONS_PAGE_SIZE_MAX = 200


@dataclass(frozen=True, slots=True)
class CurrencyTotal:
    currency: str
    obligations: int
    gross: str


@dataclass(frozen=True, slots=True)
class PositionRow:
    institution_id: str
    currency: str
    account_id: UUID | None  # None on a batch's rows (netted, not one account)
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
    """Net-debit-cap usage as ``GET /v1/institutions/{id}/position`` and the ledger count it, in the
    settlement currency: the cap in force (``LiquidityDesk.cap_in_force``: the registered cap
    bounded by prefunded liquidity unless the operator allowed beyond it; None: no cap) against the
    open window's net debit plus what unsettled windows still owe (``WindowBook.unsettled_debit``)."""

    registered_cap: str | None
    cap_in_force: str | None
    liquidity: str
    beyond_liquidity: bool
    used: str
    open_window_net: str
    unsettled_debit: str
    ratio: float | None  # used / cap in force (display only: never money arithmetic), None without a cap


@dataclass(frozen=True, slots=True)
class InstitutionRow:
    id: str
    name: str
    kind: str
    cap: str | None
    created_at_us: int


@dataclass(frozen=True, slots=True)
class InstitutionsPage:
    institutions: list[InstitutionRow]
    next_after: str | None  # the cursor of the next page


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


async def cap_usage(ledger: Ledger, desks: Settlement, institution: Institution) -> CapUsage:
    """The figures of ``GET /v1/institutions/{id}/position``, read the same way (but a page never
    opens window 1: without an open window the open net is 0)."""
    window = await open_window(ledger)
    open_net = 0 if window is None else await desks.windows.net_in(window.id, institution.id)
    unsettled = await desks.windows.unsettled_debit(institution.id)
    cap = await desks.liquidity.cap_in_force(institution)
    cny = await ledger.currency(SETTLEMENT_CURRENCY)
    used = max(0, -open_net) + unsettled
    ratio = None if cap is None else (used / cap if cap else (1.0 if used else 0.0))
    registered = institution.net_debit_cap

    def text(minor: int) -> str:
        return f"{format_amount(minor, cny)} {SETTLEMENT_CURRENCY}"

    return CapUsage(
        None
        if registered is None
        else f"{format_amount(registered[0], await ledger.currency(registered[1]))} {registered[1]}",
        None if cap is None else text(cap),
        text(await desks.liquidity.liquidity_minor(institution)),
        await desks.liquidity.beyond_liquidity(institution.id),
        text(used),
        text(open_net),
        text(unsettled),
        ratio,
    )


async def institutions_page(ledger: Ledger, after: str | None, size: int) -> InstitutionsPage:
    """Institutions by id (the primary key), a page at a time from the ``after`` cursor."""
    size = max(1, min(size, INSTITUTIONS_PAGE_SIZE_MAX))
    query = sa.select(institutions).order_by(institutions.c.id).limit(size + 1)
    if after is not None:
        query = query.where(institutions.c.id > after)
    async with read_transaction(ledger.engine) as conn:
        rows = (await conn.execute(query)).all()
    page = []
    for row in rows[:size]:
        cap = None
        if row.net_debit_cap_minor is not None:
            currency = await ledger.currency(row.net_debit_cap_currency)
            cap = f"{format_amount(row.net_debit_cap_minor, currency)} {row.net_debit_cap_currency}"
        page.append(InstitutionRow(row.id, row.name, row.kind, cap, row.created_at_us))
    return InstitutionsPage(page, page[-1].id if len(rows) > size else None)
