"""The batch path's SQL, one class per database.

Each batch runs the same steps in one transaction: read the transfers it refers to, lock its
accounts in id order, (rules run in memory), lock the journal head, write all transfer rows in one
statement, update each touched account once, append the journal block, commit. The two classes
differ only in how each step is best said to their database: PostgreSQL takes arrays
(``= ANY``, ``unnest``) and COPY; SQLite takes ``executemany`` inside ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.audit import JournalBlock, transfer_from_row
from ledger.engine import AccountState
from ledger.model import Transfer, TransferKind
from ledger.schema import accounts, journal_blocks, journal_head, pending_timeouts, transfers

# SQLite's default limit on bound variables is 32766; stay far below it per IN list.
SQLITE_IN_LIST_MAX = 900

_ACCOUNT_STATE_COLUMNS = (
    accounts.c.id, accounts.c.currency, accounts.c.flags, accounts.c.status,
    accounts.c.debits_posted, accounts.c.credits_posted, accounts.c.debits_pending, accounts.c.credits_pending,
    accounts.c.balance_cap_minor, accounts.c.transfer_cap_minor, accounts.c.daily_debit_cap_minor,
    accounts.c.annual_debit_cap_minor, accounts.c.debit_day, accounts.c.debits_day_minor,
    accounts.c.debit_year, accounts.c.debits_year_minor,
)
_TRANSFER_COLUMNS = (
    "seq", "id", "kind", "debit_account_id", "credit_account_id", "amount_minor", "released_minor", "currency",
    "pending_id", "timeout_s", "expires_at_us", "linked", "user_data", "created_at_us",
)
_RESOLUTION_KINDS = (int(TransferKind.POST_PENDING), int(TransferKind.VOID_PENDING), int(TransferKind.EXPIRE_PENDING))


@dataclass(frozen=True, slots=True)
class JournalHead:
    sequence: int
    hash: bytes
    last_transfer_seq: int


def _state(row: sa.Row) -> AccountState:
    return AccountState(*row)


class BatchStore:
    """The steps of the batch path that read or write; subclasses say them in their dialect."""

    async def load_transfers(self, conn: AsyncConnection, ids: Iterable[UUID]) -> dict[UUID, Transfer]:
        raise NotImplementedError

    async def load_resolutions(self, conn: AsyncConnection, pending_ids: Iterable[UUID]) -> dict[UUID, TransferKind]:
        raise NotImplementedError

    async def lock_accounts(self, conn: AsyncConnection, ids: Iterable[UUID]) -> dict[UUID, AccountState]:
        raise NotImplementedError

    async def insert_transfers(self, conn: AsyncConnection, batch: list[Transfer]) -> None:
        raise NotImplementedError

    async def update_accounts(self, conn: AsyncConnection, states: list[AccountState]) -> None:
        raise NotImplementedError

    def is_retryable(self, error: DBAPIError) -> bool:
        raise NotImplementedError

    async def lock_head(self, conn: AsyncConnection) -> JournalHead:
        row = (await conn.execute(sa.select(journal_head.c.sequence, journal_head.c.hash,
                                             journal_head.c.last_transfer_seq)
                                  .where(journal_head.c.id == 1).with_for_update())).one()
        return JournalHead(row.sequence, bytes(row.hash), row.last_transfer_seq)

    async def append_block(self, conn: AsyncConnection, block: JournalBlock) -> None:
        await conn.execute(journal_blocks.insert().values(
            sequence=block.sequence, prev_hash=block.prev_hash, hash=block.hash, signature=block.signature,
            first_transfer_seq=block.first_transfer_seq, transfer_count=block.transfer_count,
            created_at_us=block.created_at_us))
        await conn.execute(journal_head.update().where(journal_head.c.id == 1).values(
            sequence=block.sequence, hash=block.hash,
            last_transfer_seq=block.first_transfer_seq + block.transfer_count - 1))

    async def update_timeouts(self, conn: AsyncConnection, batch: list[Transfer]) -> None:
        """Track pending transfers with a timeout until they are resolved."""
        resolved = [t.pending_id for t in batch if t.pending_id is not None]
        resolved_set = set(resolved)
        added = [{"transfer_id": t.id, "expires_at_us": t.expires_at_us} for t in batch
                 if t.expires_at_us is not None and t.id not in resolved_set]
        if added:
            await conn.execute(pending_timeouts.insert(), added)
        if resolved:
            await conn.execute(pending_timeouts.delete().where(
                pending_timeouts.c.transfer_id == sa.bindparam("pending_id")), [{"pending_id": i} for i in resolved])


class PostgresBatchStore(BatchStore):
    """Arrays instead of IN lists (one prepared statement whatever the batch size), COPY for the
    transfer rows and one ``UPDATE … FROM unnest(…)`` for the accounts."""

    # Retry the whole batch on serialization failure, deadlock, or a unique violation (two
    # processes raced to store the same transfer id or resolve the same pending transfer; the
    # retry reads the winner and answers idempotently).
    RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505"})

    _by_ids = sa.bindparam("ids", type_=postgresql.ARRAY(sa.Uuid))
    _load = sa.select(transfers).where(transfers.c.id == sa.func.any(_by_ids))
    _resolutions = sa.select(transfers.c.pending_id, transfers.c.kind).where(
        transfers.c.pending_id == sa.func.any(_by_ids))
    _lock = sa.select(*_ACCOUNT_STATE_COLUMNS).where(accounts.c.id == sa.func.any(_by_ids)) \
        .order_by(accounts.c.id).with_for_update()
    _update_accounts = (
        "UPDATE accounts SET debits_posted = v.dp, credits_posted = v.cp, debits_pending = v.dpe, "
        "credits_pending = v.cpe, debit_day = v.dd, debits_day_minor = v.ddm, debit_year = v.dy, "
        "debits_year_minor = v.dym "
        "FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::int[], "
        "$7::bigint[], $8::int[], $9::bigint[]) AS v(id, dp, cp, dpe, cpe, dd, ddm, dy, dym) "
        "WHERE accounts.id = v.id"
    )

    async def load_transfers(self, conn, ids):
        rows = await conn.execute(self._load, {"ids": list(ids)})
        return {row.id: transfer_from_row(row) for row in rows}

    async def load_resolutions(self, conn, pending_ids):
        rows = await conn.execute(self._resolutions, {"ids": list(pending_ids)})
        return {row.pending_id: TransferKind(row.kind) for row in rows}

    async def lock_accounts(self, conn, ids):
        rows = await conn.execute(self._lock, {"ids": sorted(ids)})
        return {row[0]: _state(row) for row in rows}

    async def insert_transfers(self, conn, batch):
        driver = await _driver_connection(conn)
        await driver.copy_records_to_table(
            "transfers", columns=_TRANSFER_COLUMNS,
            records=[(t.seq, t.id, int(t.kind), t.debit_account_id, t.credit_account_id, t.amount_minor,
                      t.released_minor, t.currency, t.pending_id, t.timeout_s, t.expires_at_us, t.linked,
                      t.user_data, t.created_at_us) for t in batch])

    async def update_accounts(self, conn, states):
        driver = await _driver_connection(conn)
        await driver.execute(
            self._update_accounts,
            [s.id for s in states], [s.debits_posted for s in states], [s.credits_posted for s in states],
            [s.debits_pending for s in states], [s.credits_pending for s in states],
            [s.debit_day for s in states], [s.debits_day_minor for s in states],
            [s.debit_year for s in states], [s.debits_year_minor for s in states])

    def is_retryable(self, error):
        return sqlstate(error) in self.RETRYABLE_SQLSTATES


class SqliteBatchStore(BatchStore):
    """``BEGIN IMMEDIATE`` has already taken the database's write lock, so reads see the final
    word and ``executemany`` writes the rows without another round trip per row."""

    _insert = (f"INSERT INTO transfers ({', '.join(_TRANSFER_COLUMNS)}) "
               f"VALUES ({', '.join('?' for _ in _TRANSFER_COLUMNS)})")
    _update = ("UPDATE accounts SET debits_posted = ?, credits_posted = ?, debits_pending = ?, credits_pending = ?, "
               "debit_day = ?, debits_day_minor = ?, debit_year = ?, debits_year_minor = ? WHERE id = ?")

    async def load_transfers(self, conn, ids):
        found: dict[UUID, Transfer] = {}
        for chunk in _chunks(list(ids)):
            for row in await conn.execute(sa.select(transfers).where(transfers.c.id.in_(chunk))):
                found[row.id] = transfer_from_row(row)
        return found

    async def load_resolutions(self, conn, pending_ids):
        found: dict[UUID, TransferKind] = {}
        for chunk in _chunks(list(pending_ids)):
            rows = await conn.execute(sa.select(transfers.c.pending_id, transfers.c.kind)
                                      .where(transfers.c.pending_id.in_(chunk)))
            found.update((row.pending_id, TransferKind(row.kind)) for row in rows)
        return found

    async def lock_accounts(self, conn, ids):
        found: dict[UUID, AccountState] = {}
        for chunk in _chunks(sorted(ids)):
            for row in await conn.execute(sa.select(*_ACCOUNT_STATE_COLUMNS).where(accounts.c.id.in_(chunk))):
                found[row[0]] = _state(row)
        return found

    async def insert_transfers(self, conn, batch):
        # Rows in the exact form SQLAlchemy's Uuid type stores on SQLite (32 hex digits), so that
        # Core reads them back as UUIDs; a round-trip test guards this.
        await conn.exec_driver_sql(self._insert, [
            (t.seq, t.id.hex, int(t.kind), t.debit_account_id.hex, t.credit_account_id.hex, t.amount_minor,
             t.released_minor, t.currency, None if t.pending_id is None else t.pending_id.hex, t.timeout_s,
             t.expires_at_us, int(t.linked), t.user_data, t.created_at_us) for t in batch])

    async def update_accounts(self, conn, states):
        await conn.exec_driver_sql(self._update, [
            (s.debits_posted, s.credits_posted, s.debits_pending, s.credits_pending, s.debit_day,
             s.debits_day_minor, s.debit_year, s.debits_year_minor, s.id.hex) for s in states])

    def is_retryable(self, error):
        # Another process held the write lock past busy_timeout: nothing was written, try again.
        return "database is locked" in str(error.orig) or "database is busy" in str(error.orig)


def store_for(dialect_name: str) -> BatchStore:
    if dialect_name == "postgresql":
        return PostgresBatchStore()
    if dialect_name == "sqlite":
        return SqliteBatchStore()
    raise ValueError(f"no batch store for the {dialect_name} dialect")


def sqlstate(error: DBAPIError) -> str | None:
    orig = error.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


async def _driver_connection(conn: AsyncConnection):
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _chunks(items: list, size: int = SQLITE_IN_LIST_MAX):
    for start in range(0, len(items), size):
        yield items[start:start + size]
