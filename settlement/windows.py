"""Settlement windows and the position accounts of each.

Exactly one window is open. A payment records its obligation as a transfer between the payer's and
the acquirer's position accounts of the open window, in the same linked chain as the payment, so
the books and the window agree by construction. Closing a window opens the next and then locks the
closed window's position accounts against new debits: each account's overdraft cap is set to the
debit it holds (an account event, taken under the account's lock). A payment racing the close
either committed before that lock (it is in the closed window) or is refused by it and retried in
the new window: it lands in exactly one window.

A payer's position account carries its net debit cap as the overdraft cap, less what it still owes
from closed windows not yet settled, so payments cannot jointly pass the cap: the ledger checks it
under the account's lock.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ledger import AccountResultCode, AccountSpec, Ledger, Limits
from ledger.db import read_transaction
from ledger.errors import InvariantViolation
from settlement.tables import settlement_carried, settlement_window_events, settlement_windows, window_positions

SETTLEMENT_CURRENCY = "CNY"
_POSITION_NAMESPACE = uuid.UUID("0f3b8a52-7d4e-4c8e-9a61-3b5f2f0c9d17")
UNSETTLED_STATUSES = ("closed", "settling")


class WindowClosed(Exception):
    """The window closed while a payment was being recorded in it: retry in the open one."""


@dataclass(frozen=True, slots=True)
class Window:
    id: int
    status: str
    opened_at_us: int
    closed_at_us: int | None


def position_account_id(window_id: int, institution_id: str, currency: str) -> UUID:
    return uuid.uuid5(_POSITION_NAMESPACE, f"{window_id}/{institution_id}/{currency}")


class WindowBook:
    def __init__(self, ledger: Ledger, clock: Callable[[], int]) -> None:
        self.ledger = ledger
        self.clock = clock
        # For the money paths only (payments, refunds, transfers between institutions): the open
        # window as last seen, and the position accounts this process saw registered while their
        # window was open. Stale is safe there: a closed window's positions are locked against
        # debits, so a leg aimed at one is refused, the caller reads the window (``get`` forgets a
        # closed one here) and runs again in the new window.
        self._open_seen: Window | None = None
        self._positions_seen: set[UUID] = set()

    async def open_window(self) -> Window:
        """The open window, opening window 1 on a ledger that has none."""
        window = await self._find_open()
        if window is not None:
            return window
        try:
            async with self.ledger.engine.begin() as conn:
                if (await conn.execute(sa.select(sa.func.count()).select_from(settlement_windows))).scalar_one() == 0:
                    await self._insert_open(conn, 1, actor="system")
        except IntegrityError:
            pass  # another process opened it first
        window = await self._find_open()
        if window is None:
            raise RuntimeError("no open settlement window")
        return window

    async def open_window_for_money(self) -> Window:
        """:meth:`open_window`, remembered until a caller finds it closed (see ``__init__``)."""
        if self._open_seen is None:
            self._open_seen = await self.open_window()
        return self._open_seen

    def known_position(self, window: Window, institution_id: str, currency: str = SETTLEMENT_CURRENCY) -> UUID | None:
        """The institution's position account in ``window`` if this process saw it registered."""
        account_id = position_account_id(window.id, institution_id, currency)
        return account_id if account_id in self._positions_seen else None

    async def _find_open(self) -> Window | None:
        async with read_transaction(self.ledger.engine) as conn:
            row = (
                await conn.execute(sa.select(settlement_windows).where(settlement_windows.c.status == "open"))
            ).first()
        return None if row is None else _window(row)

    async def get(self, window_id: int) -> Window | None:
        async with read_transaction(self.ledger.engine) as conn:
            row = (
                await conn.execute(sa.select(settlement_windows).where(settlement_windows.c.id == window_id))
            ).first()
        window = None if row is None else _window(row)
        if window is not None and window.status != "open" and self._open_seen and self._open_seen.id == window.id:
            self._open_seen = None  # a money path found it closed: the next asks afresh
        return window

    async def list(self) -> list[Window]:
        async with read_transaction(self.ledger.engine) as conn:
            rows = await conn.execute(sa.select(settlement_windows).order_by(settlement_windows.c.id))
            return [_window(row) for row in rows]

    async def history(self, window_id: int) -> list[tuple[str, int, str | None]]:
        """(status, at_us, actor) for each change of the window's status, oldest first."""
        async with read_transaction(self.ledger.engine) as conn:
            rows = await conn.execute(
                sa.select(settlement_window_events)
                .where(settlement_window_events.c.window_id == window_id)
                .order_by(settlement_window_events.c.position)
            )
            return [(row.status, row.at_us, row.actor) for row in rows]

    async def close(self, window_id: int, *, actor: str) -> tuple[Window, Window]:
        """Close the open window ``window_id`` and open the next; then lock the closed window's
        position accounts against new debits. Raises ValueError if it is not the open window."""
        async with self.ledger.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(settlement_windows).where(settlement_windows.c.id == window_id).with_for_update()
                )
            ).first()
            if row is None or row.status != "open":
                raise ValueError(f"window {window_id} is not the open window")
            now_us = self.clock()
            await conn.execute(
                settlement_windows.update()
                .where(settlement_windows.c.id == window_id)
                .values(status="closed", closed_at_us=now_us)
            )
            await self.record_change(conn, window_id, "closed", actor)
            await self._insert_open(conn, window_id + 1, actor=actor)
        for account_id in await self.position_accounts(window_id):
            await self.lock_debits(account_id, actor)
        return await self.require(window_id), await self.require(window_id + 1)

    async def set_status(self, window_id: int, status: str, *, actor: str, expected: tuple[str, ...]) -> Window:
        async with self.ledger.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(settlement_windows).where(settlement_windows.c.id == window_id).with_for_update()
                )
            ).first()
            if row is None or row.status not in expected:
                raise ValueError(
                    f"window {window_id} is {row.status if row else 'unknown'}, not {' or '.join(expected)}"
                )
            await conn.execute(
                settlement_windows.update().where(settlement_windows.c.id == window_id).values(status=status)
            )
            await self.record_change(conn, window_id, status, actor)
        return await self.require(window_id)

    async def require(self, window_id: int) -> Window:
        """A window known to exist (one just written): its absence is a broken invariant."""
        window = await self.get(window_id)
        if window is None:
            raise InvariantViolation(f"settlement window {window_id} vanished")
        return window

    async def refresh_cap(
        self, institution_id: str, cap_minor: int | None, *, actor: str, currency: str = SETTLEMENT_CURRENCY
    ) -> None:
        """Give the institution's position in the open window (if it has one yet) the cap
        ``cap_minor`` less what it owes from windows not yet settled: after prefunding, a settlement
        or an unwind. Lowering it below what the position holds stops further debits."""
        window = await self._find_open()
        if window is None:
            return
        account_id = position_account_id(window.id, institution_id, currency)
        account = await self.ledger.get_account(account_id)
        if account is None:
            return  # opened later with the cap in force then
        owed = await self.unsettled_debit(institution_id, currency)
        cap = None if cap_minor is None else max(0, cap_minor - owed)
        await self.ledger.set_limits(
            account_id, dataclasses.replace(account.limits, debit_balance_cap_minor=cap), actor=actor
        )
        current = await self.get(window.id)
        if current is None or current.status != "open":
            await self.lock_debits(account_id, actor)  # the window closed meanwhile: as the close would

    async def lock_debits(self, account_id: UUID, actor: str) -> None:
        """No further debit: the overdraft cap becomes the debit the account holds now (under its lock)."""
        account = await self.ledger.get_account(account_id)
        if account is None:
            return
        held = max(
            0, account.balances.debits_posted + account.balances.debits_pending - account.balances.credits_posted
        )
        limits = dataclasses.replace(account.limits, debit_balance_cap_minor=held)
        result = await self.ledger.set_limits(account_id, limits, actor=actor)
        if result.code is AccountResultCode.OK and result.account is not None:
            # A debit may have landed between our read and the lock: lock again at what it holds.
            again = result.account.balances
            now_held = max(0, again.debits_posted + again.debits_pending - again.credits_posted)
            if now_held != held:
                await self.lock_debits(account_id, actor)

    async def position_accounts(self, window_id: int) -> list[UUID]:
        async with read_transaction(self.ledger.engine) as conn:
            rows = await conn.execute(
                sa.select(window_positions.c.account_id).where(window_positions.c.window_id == window_id)
            )
            return list(rows.scalars())

    async def positions(self, window_id: int) -> dict[UUID, str]:
        """account id -> institution id, for the window's position accounts."""
        async with read_transaction(self.ledger.engine) as conn:
            rows = await conn.execute(sa.select(window_positions).where(window_positions.c.window_id == window_id))
            return {row.account_id: row.institution_id for row in rows}

    async def position_for_payment(
        self,
        window: Window,
        institution_id: str,
        net_debit_cap_minor: int | None,
        *,
        actor: str,
        currency: str = SETTLEMENT_CURRENCY,
    ) -> UUID:
        """The institution's position account in ``window`` (opened on first use, its overdraft cap
        the net debit cap less what it owes from windows not yet settled). Raises WindowClosed if the
        window closed meanwhile (the account is then locked here, as the close would have)."""
        account_id = position_account_id(window.id, institution_id, currency)
        async with read_transaction(self.ledger.engine) as conn:
            known = (
                await conn.execute(
                    sa.select(window_positions.c.account_id).where(window_positions.c.account_id == account_id)
                )
            ).first()
        if known is None:
            cap = (
                None
                if net_debit_cap_minor is None
                else max(0, net_debit_cap_minor - await self.unsettled_debit(institution_id, currency))
            )
            owner = f"{institution_id}/window-{window.id}"
            spec = AccountSpec(
                account_id, currency, "settlement:position", owner_ref=owner,
                limits=Limits(debit_balance_cap_minor=cap),
            )  # fmt: skip
            [result] = await self.ledger.create_accounts([spec], actor=actor)
            # Another payment may have opened it a moment earlier (with the cap it computed then).
            if result.code not in (AccountResultCode.OK, AccountResultCode.EXISTS_WITH_DIFFERENT_FIELDS):
                raise RuntimeError(f"position account {account_id}: {result.code}")
            try:
                async with self.ledger.engine.begin() as conn:
                    await conn.execute(
                        window_positions.insert().values(
                            window_id=window.id,
                            institution_id=institution_id,
                            currency=currency,
                            account_id=account_id,
                        )
                    )
            except IntegrityError:
                pass  # another caller registered it first
        current = await self.get(window.id)
        if current is None or current.status != "open":
            await self.lock_debits(account_id, actor)
            raise WindowClosed(f"window {window.id} closed")
        self._positions_seen.add(account_id)
        return account_id

    async def net_in(self, window_id: int, institution_id: str, currency: str = SETTLEMENT_CURRENCY) -> int:
        """The institution's net in the window's settlement currency: what it is owed less what it
        owes (negative for a net debtor); 0 if it has no position there."""
        account = await self.ledger.get_account(position_account_id(window_id, institution_id, currency))
        return 0 if account is None else account.balances.credits_posted - account.balances.debits_posted

    async def unsettled_debit(self, institution_id: str, currency: str = SETTLEMENT_CURRENCY) -> int:
        """What the institution owes, net, from closed windows not yet settled, and in obligations
        an unwound batch carried into a window not yet settled."""
        async with read_transaction(self.ledger.engine) as conn:
            rows = await conn.execute(
                sa.select(window_positions.c.account_id)
                .join(settlement_windows, settlement_windows.c.id == window_positions.c.window_id)
                .where(window_positions.c.institution_id == institution_id)
                .where(window_positions.c.currency == currency)
                .where(settlement_windows.c.status.in_(UNSETTLED_STATUSES))
            )
            account_ids = list(rows.scalars())
            carried = await _carried_net_debit(conn, institution_id, currency)
        accounts = await self.ledger.get_accounts(account_ids)
        return carried + sum(
            max(0, a.balances.debits_posted + a.balances.debits_pending - a.balances.credits_posted)
            for a in accounts.values()
        )

    async def _insert_open(self, conn, window_id: int, *, actor: str) -> None:
        await conn.execute(settlement_windows.insert().values(id=window_id, status="open", opened_at_us=self.clock()))
        await self.record_change(conn, window_id, "open", actor)

    async def record_change(self, conn, window_id: int, status: str, actor: str | None) -> None:
        position = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(settlement_window_events)
                .where(settlement_window_events.c.window_id == window_id)
            )
        ).scalar_one()
        await conn.execute(
            settlement_window_events.insert().values(
                window_id=window_id, position=position + 1, status=status, at_us=self.clock(), actor=actor
            )
        )


async def _carried_net_debit(conn, institution_id: str, currency: str) -> int:
    """The institution's net debit in carried obligations, per window they were carried into that is
    not settled yet (open, closed or settling)."""
    carried = settlement_carried
    pending = sa.select(settlement_windows.c.id).where(settlement_windows.c.status.in_(("open", *UNSETTLED_STATUSES)))
    signed = sa.case((carried.c.debtor == institution_id, carried.c.amount_minor), else_=-carried.c.amount_minor)
    rows = await conn.execute(
        sa.select(carried.c.to_window_id, sa.func.sum(signed))
        .where(sa.or_(carried.c.debtor == institution_id, carried.c.creditor == institution_id))
        .where(carried.c.currency == currency)
        .where(carried.c.to_window_id.in_(pending))
        .group_by(carried.c.to_window_id)
    )
    return sum(max(0, int(net)) for _window_id, net in rows)


def _window(row) -> Window:
    return Window(row.id, row.status, row.opened_at_us, row.closed_at_us)


__all__ = ["SETTLEMENT_CURRENCY", "Window", "WindowBook", "WindowClosed", "position_account_id"]
