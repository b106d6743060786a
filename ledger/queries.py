"""Reading what the batch path stored: a transfer, a remembered refusal, how a hold was resolved,
an account's statement, and the journal's head and newest block. Nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.audit import JournalBlock, block_from_row, refusal_from_row, transfer_from_row
from ledger.db import read_transaction
from ledger.model import Balances, Refusal, Transfer, TransferKind
from ledger.schema import accounts, journal_blocks, journal_head, transfer_refusals, transfers
from ledger.store import JournalHead

STATEMENT_PAGE_MAX = 500
STATEMENT_PAGE_DEFAULT = 50


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One transfer as the account saw it, and the account's balances right after it."""

    transfer: Transfer
    side: str  # "debit" or "credit": which side of the transfer this account was on
    balances_after: Balances


@dataclass(frozen=True, slots=True)
class StatementPage:
    items: list[StatementLine]
    next_cursor: int | None  # pass back as ``before_seq`` for the next (older) page


class LedgerQueries:
    """The reading half of a :class:`ledger.Ledger`; the ledger hands it its engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def get_refusal(self, transfer_id: UUID) -> Refusal | None:
        """The remembered refusal stored under this id, if the id was refused."""
        async with read_transaction(self.engine) as conn:
            row = (
                await conn.execute(sa.select(transfer_refusals).where(transfer_refusals.c.id == transfer_id))
            ).first()
        return None if row is None else refusal_from_row(row)

    async def get_transfer(self, transfer_id: UUID) -> Transfer | None:
        async with read_transaction(self.engine) as conn:
            row = (await conn.execute(sa.select(transfers).where(transfers.c.id == transfer_id))).first()
        return None if row is None else transfer_from_row(row)

    async def pending_status(self, pending_id: UUID) -> TransferKind | None:
        """How a pending transfer was resolved (post, void, expiry), or None while it is pending."""
        async with read_transaction(self.engine) as conn:
            kind = (
                await conn.execute(sa.select(transfers.c.kind).where(transfers.c.pending_id == pending_id))
            ).scalar()
        return None if kind is None else TransferKind(kind)

    async def statement(
        self, account_id: UUID, *, limit: int = STATEMENT_PAGE_DEFAULT, before_seq: int | None = None
    ) -> StatementPage:
        """The account's transfers, newest first, each with the account's balances right after it.

        Balances are walked back from the account's current balances inside one read snapshot, so
        a page is consistent even while batches commit.
        """
        if not 1 <= limit <= STATEMENT_PAGE_MAX:
            raise ValueError(f"limit must be between 1 and {STATEMENT_PAGE_MAX}")
        async with read_transaction(self.engine, snapshot=True) as conn:
            row = (
                await conn.execute(
                    sa.select(
                        accounts.c.debits_posted,
                        accounts.c.credits_posted,
                        accounts.c.debits_pending,
                        accounts.c.credits_pending,
                    ).where(accounts.c.id == account_id)
                )
            ).first()
            if row is None:
                return StatementPage([], None)
            balance = list(row)
            if before_seq is not None:
                # Undo everything newer than the page, summed in the database, to stand where
                # the page starts.
                for side, (posted, pending) in (await _effects_since(conn, account_id, before_seq)).items():
                    balance[side] -= posted
                    balance[side + 2] -= pending
            page = await _account_transfers(conn, account_id, before_seq=before_seq, limit=limit + 1)
        lines: list[StatementLine] = []
        for transfer in page[:limit]:
            lines.append(
                StatementLine(
                    transfer, "debit" if transfer.debit_account_id == account_id else "credit", Balances(*balance)
                )
            )
            _undo_effect(balance, transfer, account_id)
        next_cursor = page[limit - 1].seq if len(page) > limit else None
        return StatementPage(lines, next_cursor)

    async def audit_head(self) -> JournalHead:
        async with read_transaction(self.engine) as conn:
            row = (await conn.execute(sa.select(journal_head))).one()
        return JournalHead(row.sequence, bytes(row.hash), row.last_transfer_seq)

    async def newest_block(self) -> JournalBlock | None:
        """The newest journal block with its signature, or None before the first batch."""
        async with read_transaction(self.engine) as conn:
            row = (
                await conn.execute(
                    sa.select(journal_blocks).join(journal_head, journal_blocks.c.sequence == journal_head.c.sequence)
                )
            ).first()
        if row is None:
            return None
        return block_from_row(row)


async def _account_transfers(
    conn: AsyncConnection, account_id: UUID, *, before_seq: int | None, limit: int
) -> list[Transfer]:
    found: dict[int, Transfer] = {}
    for column in (transfers.c.debit_account_id, transfers.c.credit_account_id):
        query = sa.select(transfers).where(column == account_id).order_by(transfers.c.seq.desc()).limit(limit)
        if before_seq is not None:
            query = query.where(transfers.c.seq < before_seq)
        found.update((row.seq, transfer_from_row(row)) for row in await conn.execute(query))
    return sorted(found.values(), key=lambda transfer: transfer.seq, reverse=True)[:limit]


async def _effects_since(conn: AsyncConnection, account_id: UUID, since_seq: int) -> dict[int, tuple[int, int]]:
    """The summed posted and pending effect on the account of its transfers from ``since_seq``
    on, keyed 0 for its debit side and 1 for its credit side."""
    posted = sa.func.coalesce(
        sa.func.sum(
            sa.case(
                (
                    transfers.c.kind.in_((int(TransferKind.POSTED), int(TransferKind.POST_PENDING))),
                    transfers.c.amount_minor,
                ),
                else_=0,
            )
        ),
        0,
    )
    pending = sa.func.coalesce(
        sa.func.sum(
            sa.case(
                (transfers.c.kind == int(TransferKind.PENDING), transfers.c.amount_minor),
                else_=-transfers.c.released_minor,
            )
        ),
        0,
    )
    effects = {}
    for side, column in enumerate((transfers.c.debit_account_id, transfers.c.credit_account_id)):
        row = (
            await conn.execute(sa.select(posted, pending).where(column == account_id, transfers.c.seq >= since_seq))
        ).one()
        effects[side] = (int(row[0]), int(row[1]))
    return effects


def _undo_effect(balance: list[int], transfer: Transfer, account_id: UUID) -> None:
    if transfer.debit_account_id == account_id:
        balance[0] -= transfer.posted_delta
        balance[2] -= transfer.pending_delta
    else:
        balance[1] -= transfer.posted_delta
        balance[3] -= transfer.pending_delta
