"""Appending to the audit chain outside the batch path: blocks that seal account events.

The batch path (``ledger.store``) appends blocks of transfers and refusals in its own SQL; account
openings and changes are rare, so they append their blocks through SQLAlchemy Core here, in the
same transaction as the account rows they change. Both take the journal head row last, after any
account row, so the two paths take their locks in one order and cannot deadlock.

:class:`SigningKeyGuard` is shared by both: it checks, under the head lock, that this ledger's key
signed the chain's newest block, so that two processes started with different keys can never both
seal blocks (checked once per process outside the lock, two could pass on an empty chain).
"""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.audit import JournalBlock, seal_block
from ledger.errors import LedgerKeyMismatch
from ledger.model import AccountEvent
from ledger.schema import ACCOUNT_SETTING_COLUMNS, account_events, journal_blocks, journal_head
from ledger.store import JournalHead


class SigningKeyGuard:
    """Refuses to seal onto a block this ledger's key did not sign. The newest block is verified
    only when it is not the one this process sealed last, so a single writer pays nothing."""

    def __init__(self, signing_key: SigningKey) -> None:
        self.signing_key = signing_key
        self.verify_key = signing_key.verify_key
        self._last_sealed: bytes | None = None

    def check(self, head: JournalHead) -> None:
        if head.signature is None or head.hash == self._last_sealed:
            return
        try:
            self.verify_key.verify(head.hash, head.signature)
        except BadSignatureError:
            raise LedgerKeyMismatch(
                f"this ledger's signing key did not sign block {head.sequence}, the chain's newest; "
                "open the ledger with the key that signed the chain"
            ) from None
        self._last_sealed = head.hash

    def sealed(self, block: JournalBlock) -> None:
        self._last_sealed = block.hash


async def lock_head(conn: AsyncConnection) -> JournalHead:
    """The journal head and its block's signature, locked to the end of the transaction (on SQLite
    the transaction's BEGIN IMMEDIATE already holds the write lock)."""
    row = (
        await conn.execute(
            sa.select(
                journal_head.c.sequence,
                journal_head.c.hash,
                journal_head.c.last_transfer_seq,
                journal_blocks.c.signature,
            )
            .select_from(journal_head.outerjoin(journal_blocks, journal_blocks.c.sequence == journal_head.c.sequence))
            .where(journal_head.c.id == 1)
            .with_for_update(of=journal_head)
        )
    ).one()
    signature = None if row.signature is None else bytes(row.signature)
    return JournalHead(row.sequence, bytes(row.hash), row.last_transfer_seq, signature)


async def append_event_block(
    conn: AsyncConnection, guard: SigningKeyGuard, events: list[AccountEvent], now_us: int
) -> list[AccountEvent]:
    """Seal ``events`` in a block of their own and store them; returns them stamped with it.
    Call last in the transaction that changes the account rows (see the module's lock order)."""
    if not events:
        return []
    head = await lock_head(conn)
    guard.check(head)
    sequence = head.sequence + 1
    events = [dataclasses.replace(event, block_sequence=sequence) for event in events]
    block = seal_block(guard.signing_key, head.hash, sequence, head.last_transfer_seq + 1, now_us, [], None, events)
    await conn.execute(account_events.insert(), [_event_row(event) for event in events])
    await conn.execute(journal_blocks.insert().values(**dataclasses.asdict(block)))
    await conn.execute(
        journal_head.update().where(journal_head.c.id == 1).values(sequence=block.sequence, hash=block.hash)
    )
    guard.sealed(block)
    return events


def _event_row(event: AccountEvent) -> dict[str, object]:
    settings = event.settings.as_row()
    return dict(
        account_id=event.account_id, version=event.version, event=event.event.value, actor=event.actor,
        at_us=event.at_us, block_sequence=event.block_sequence,
        **{name: settings[name] for name in ACCOUNT_SETTING_COLUMNS},
    )  # fmt: skip
