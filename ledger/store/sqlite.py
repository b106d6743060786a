"""The batch path's SQL for SQLite (aiosqlite): ``BEGIN IMMEDIATE`` and ``executemany``."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import aiosqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.audit import JournalBlock
from ledger.model import Refusal, Transfer, TransferKind
from ledger.rules import AccountState
from ledger.schema import ACCOUNT_BALANCE_COLUMNS, ACCOUNT_STATE_COLUMNS, REFUSAL_COLUMNS, TRANSFER_COLUMNS
from ledger.store.base import BatchStore, DatabaseFailure, JournalHead, _split_known, driver_connection


class SqliteBatchStore(BatchStore):
    """``BEGIN IMMEDIATE`` takes the database's write lock first, so reads see the final word and
    ``executemany`` writes the rows. The batch talks to aiosqlite directly: SQLAlchemy's per-row
    result handling (a UUID built from every id) cost more than SQLite's own work. Ids are stored
    as SQLAlchemy's Uuid type stores them on SQLite (32 hex digits; a round-trip test guards
    this) and travel to ``IN`` as one JSON array, so every statement's text stays the same."""

    _lock = f"SELECT {', '.join(ACCOUNT_STATE_COLUMNS)} FROM accounts WHERE id IN (SELECT value FROM json_each(?))"
    _load = (
        f"SELECT {', '.join(TRANSFER_COLUMNS)}, NULL FROM transfers WHERE id IN (SELECT value FROM json_each(?)) "
        "UNION ALL SELECT NULL, id, kind, debit_account_id, credit_account_id, amount_minor, NULL, currency, "
        "pending_id, timeout_s, NULL, linked, user_data, created_at_us, code FROM transfer_refusals "
        "WHERE id IN (SELECT value FROM json_each(?))"
    )
    _resolutions = "SELECT pending_id, kind FROM transfers WHERE pending_id IN (SELECT value FROM json_each(?))"
    _head = (
        "SELECT h.sequence, h.hash, h.last_transfer_seq, b.signature FROM journal_head AS h "
        "LEFT JOIN journal_blocks AS b ON b.sequence = h.sequence WHERE h.id = 1"
    )
    _insert = (
        f"INSERT INTO transfers ({', '.join(TRANSFER_COLUMNS)}) VALUES ({', '.join('?' for _ in TRANSFER_COLUMNS)})"
    )
    _insert_refusal = (
        f"INSERT INTO transfer_refusals ({', '.join(REFUSAL_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in REFUSAL_COLUMNS)})"
    )
    _update = f"UPDATE accounts SET {', '.join(f'{c} = ?' for c in ACCOUNT_BALANCE_COLUMNS)} WHERE id = ?"
    _block = (
        "INSERT INTO journal_blocks (sequence, prev_hash, hash, signature, first_transfer_seq, transfer_count, "
        "created_at_us, refusal_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    _head_update = "UPDATE journal_head SET sequence = ?, hash = ?, last_transfer_seq = ? WHERE id = 1"
    _add_timeout = "INSERT INTO pending_timeouts (transfer_id, expires_at_us) VALUES (?, ?)"
    _drop_timeout = "DELETE FROM pending_timeouts WHERE transfer_id = ?"

    @asynccontextmanager
    async def transaction(self, engine: AsyncEngine) -> AsyncIterator[aiosqlite.Connection]:
        # SQLAlchemy lends the pooled connection and never begins a transaction on it here (its
        # own BEGIN IMMEDIATE hook is for Core work), so its reset on return has nothing to undo.
        async with engine.connect() as conn:
            driver: aiosqlite.Connection = await driver_connection(conn)
            await driver.execute("BEGIN IMMEDIATE")
            try:
                yield driver
                await driver.execute("COMMIT")
            except BaseException:
                # The original error goes on. A cancellation may arrive while COMMIT is still queued
                # in aiosqlite's thread and then lands: the ROLLBACK queued behind it finds no
                # transaction, which must not replace the cancellation with a "not committed".
                if driver.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        await driver.execute("ROLLBACK")
                raise

    async def load_known(
        self, driver: aiosqlite.Connection, ids: Iterable[UUID]
    ) -> tuple[dict[UUID, Transfer], dict[UUID, Refusal]]:
        # SQLite holds no write lock of another process here (BEGIN IMMEDIATE is ours), so an id
        # can never be a transfer and a refusal at once: the two sides need no guard.
        ids_json = _json_hex_array(ids)
        rows = await driver.execute_fetchall(self._load, (ids_json, ids_json))
        return _split_known([_record_from_sqlite(row) for row in rows])

    async def load_resolutions(
        self, driver: aiosqlite.Connection, pending_ids: Iterable[UUID]
    ) -> dict[UUID, TransferKind]:
        rows = await driver.execute_fetchall(self._resolutions, (_json_hex_array(pending_ids),))
        return {UUID(hex=pending_id): TransferKind(kind) for pending_id, kind in rows}

    async def lock_accounts(self, driver: aiosqlite.Connection, ids: Iterable[UUID]) -> dict[UUID, AccountState]:
        # The write lock is already ours (BEGIN IMMEDIATE); this only reads.
        by_hex = {account_id.hex: account_id for account_id in ids}
        rows = await driver.execute_fetchall(self._lock, (_json_hex_array(by_hex.values()),))
        return {by_hex[row[0]]: AccountState(by_hex[row[0]], *row[1:]) for row in rows}

    async def lock_head(self, driver: aiosqlite.Connection) -> JournalHead:
        [(sequence, hash_, last_transfer_seq, signature)] = await driver.execute_fetchall(self._head)
        return JournalHead(sequence, bytes(hash_), last_transfer_seq, None if signature is None else bytes(signature))

    async def write_batch(
        self,
        driver: aiosqlite.Connection,
        batch: list[Transfer],
        refusals: list[Refusal],
        touched: list[AccountState],
        block: JournalBlock,
    ) -> None:
        if refusals:
            await driver.executemany(self._insert_refusal, [_refusal_to_sqlite(r, block.sequence) for r in refusals])
        await driver.executemany(
            self._insert,
            [
                (
                    t.seq,
                    t.id.hex,
                    int(t.kind),
                    t.debit_account_id.hex,
                    t.credit_account_id.hex,
                    t.amount_minor,
                    t.released_minor,
                    t.currency,
                    None if t.pending_id is None else t.pending_id.hex,
                    t.timeout_s,
                    t.expires_at_us,
                    int(t.linked),
                    t.user_data,
                    t.created_at_us,
                )
                for t in batch
            ],
        )
        await driver.executemany(
            self._update,
            [(*(getattr(a, column) for column in ACCOUNT_BALANCE_COLUMNS), a.id.hex) for a in touched],
        )
        await driver.execute(
            self._block,
            (
                block.sequence,
                block.prev_hash,
                block.hash,
                block.signature,
                block.first_transfer_seq,
                block.transfer_count,
                block.created_at_us,
                len(refusals),
            ),
        )
        await driver.execute(
            self._head_update, (block.sequence, block.hash, block.first_transfer_seq + block.transfer_count - 1)
        )

    async def update_timeouts(self, driver: aiosqlite.Connection, batch: list[Transfer]) -> None:
        added, resolved = self._timeout_changes(batch)
        if added:
            await driver.executemany(self._add_timeout, [(t.id.hex, t.expires_at_us) for t in added])
        if resolved:
            await driver.executemany(self._drop_timeout, [(pending_id.hex,) for pending_id in resolved])

    def classify(self, error: Exception) -> DatabaseFailure | None:
        # A SQLAlchemy wrapper (e.g. while lending the connection) is judged by the error it wraps.
        cause = error.orig if isinstance(error, DBAPIError) else error
        if not isinstance(cause, sqlite3.Error):
            return None
        message = str(cause)
        # Another process held the write lock past busy_timeout: nothing was written, try again.
        busy = "database is locked" in message or "database is busy" in message
        return DatabaseFailure(
            retryable=busy,
            integrity=isinstance(cause, sqlite3.IntegrityError),
            reason=f"{type(cause).__name__}: {message}" if busy else type(cause).__name__,
        )


def _record_from_sqlite(row: Sequence[Any]) -> tuple[Any, ...]:
    """A load-query row in the forms asyncpg gives: ids as UUIDs (SQLite has 32 hex digits),
    ``linked`` as a bool (SQLite has 0/1)."""
    (seq, id_, kind, debit_account_id, credit_account_id, amount_minor, released_minor, currency, pending_id,
     timeout_s, expires_at_us, linked, user_data, created_at_us, code) = row  # fmt: skip
    return (seq, UUID(hex=id_), kind, _uuid_or_none(debit_account_id), _uuid_or_none(credit_account_id),
            amount_minor, released_minor, currency, _uuid_or_none(pending_id), timeout_s, expires_at_us,
            bool(linked), user_data, created_at_us, code)  # fmt: skip


def _refusal_to_sqlite(refusal: Refusal, block_sequence: int) -> tuple[object, ...]:
    r = refusal
    return (r.id.hex, r.code.value, int(r.kind), _hex_or_none(r.debit_account_id), _hex_or_none(r.credit_account_id),
            r.amount_minor, r.currency, _hex_or_none(r.pending_id), r.timeout_s, int(r.linked), r.user_data,
            r.created_at_us, block_sequence)  # fmt: skip


def _uuid_or_none(value: str | None) -> UUID | None:
    return None if value is None else UUID(hex=value)


def _hex_or_none(value: UUID | None) -> str | None:
    return None if value is None else value.hex


def _json_hex_array(ids: Iterable[UUID]) -> str:
    return '["' + '","'.join([value.hex for value in ids]) + '"]'
