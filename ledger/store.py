"""The batch path's SQL, one class per database.

Each batch runs the same steps in one transaction: read the transfers it refers to, lock its
accounts in id order, (rules run in memory), lock the journal head, write all transfer rows in one
statement, update each touched account once, append the journal block, commit. The two classes
differ only in how each step is best said to their database: PostgreSQL takes arrays
(``unnest``); SQLite takes ``executemany`` inside ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from uuid import UUID

import aiosqlite
import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.audit import JournalBlock
from ledger.engine import AccountState
from ledger.errors import InvariantViolation
from ledger.model import Transfer, TransferKind
from ledger.schema import accounts

_ACCOUNT_STATE_COLUMNS = (
    accounts.c.id,
    accounts.c.currency,
    accounts.c.flags,
    accounts.c.status,
    accounts.c.debits_posted,
    accounts.c.credits_posted,
    accounts.c.debits_pending,
    accounts.c.credits_pending,
    accounts.c.balance_cap_minor,
    accounts.c.transfer_cap_minor,
    accounts.c.daily_debit_cap_minor,
    accounts.c.annual_debit_cap_minor,
    accounts.c.debit_day,
    accounts.c.debits_day_minor,
    accounts.c.debit_year,
    accounts.c.debits_year_minor,
)
_TRANSFER_COLUMNS = (
    "seq",
    "id",
    "kind",
    "debit_account_id",
    "credit_account_id",
    "amount_minor",
    "released_minor",
    "currency",
    "pending_id",
    "timeout_s",
    "expires_at_us",
    "linked",
    "user_data",
    "created_at_us",
)
_RESOLUTION_KINDS = (int(TransferKind.POST_PENDING), int(TransferKind.VOID_PENDING), int(TransferKind.EXPIRE_PENDING))


class ConnectionLost(Exception):
    """The connection died under a batch. Retrying the whole batch on a new connection is safe
    even if its COMMIT had reached the server: the retry finds its transfer ids stored and
    answers them as replays, so nothing is applied twice. ``commit_sent``: it died while the
    COMMIT was in flight, so until a retry gets through the batch may be committed."""

    def __init__(self, message: str, *, commit_sent: bool = False) -> None:
        super().__init__(message)
        self.commit_sent = commit_sent


# Class 08 (connection exception) arrives as asyncpg.PostgresConnectionError; these are the server
# ending the session: admin shutdown (pg_terminate_backend, a fast shutdown), crash shutdown,
# cannot connect now.
_SESSION_ENDED_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def _connection_lost(error: BaseException) -> bool:
    return isinstance(error, (asyncpg.PostgresConnectionError, ConnectionError)) or (
        isinstance(error, asyncpg.PostgresError) and error.sqlstate in _SESSION_ENDED_SQLSTATES
    )


@dataclass(frozen=True, slots=True)
class DatabaseFailure:
    """A database error as the batch path sees it: may the whole batch be retried, and did the
    database refuse data (a constraint) rather than fail to run."""

    retryable: bool
    integrity: bool
    reason: str


@dataclass(frozen=True, slots=True)
class JournalHead:
    sequence: int
    hash: bytes
    last_transfer_seq: int


def _transfer_from_record(record) -> Transfer:
    """A transfer from a driver row in ``_TRANSFER_COLUMNS`` order."""
    (
        seq,
        id_,
        kind,
        debit_account_id,
        credit_account_id,
        amount_minor,
        released_minor,
        currency,
        pending_id,
        timeout_s,
        expires_at_us,
        linked,
        user_data,
        created_at_us,
    ) = record
    return Transfer(
        id_,
        TransferKind(kind),
        debit_account_id,
        credit_account_id,
        amount_minor,
        released_minor,
        currency,
        pending_id,
        timeout_s,
        expires_at_us,
        linked,
        user_data,
        created_at_us,
        seq,
    )


class BatchStore:
    """The steps of the batch path that read or write; subclasses say them in their dialect.

    ``transaction(engine)`` opens the batch's one transaction and yields the handle every other
    step takes: the driver's own connection (asyncpg, aiosqlite), lent by SQLAlchemy's pool.
    """

    def transaction(self, engine: AsyncEngine):
        raise NotImplementedError

    async def load_transfers(self, conn, ids: Iterable[UUID]) -> dict[UUID, Transfer]:
        raise NotImplementedError

    async def load_resolutions(self, conn, pending_ids: Iterable[UUID]) -> dict[UUID, TransferKind]:
        raise NotImplementedError

    async def lock_accounts(self, conn, ids: Iterable[UUID]) -> dict[UUID, AccountState]:
        raise NotImplementedError

    async def write_batch(self, conn, batch: list[Transfer], touched: list[AccountState], block: JournalBlock) -> None:
        """Store the batch's transfers, each touched account's new balances, and its journal block."""
        raise NotImplementedError

    def classify(self, error: Exception) -> DatabaseFailure | None:
        """What a database error means for the batch, or None if it is no database error."""
        raise NotImplementedError

    async def lock_head(self, conn) -> JournalHead:
        """Read the journal head, locked until the batch commits."""
        raise NotImplementedError

    async def update_timeouts(self, conn, batch: list[Transfer]) -> None:
        """Track pending transfers with a timeout until they are resolved."""
        raise NotImplementedError

    @staticmethod
    def _timeout_changes(batch: list[Transfer]) -> tuple[list[Transfer], list[UUID]]:
        """The holds with a timeout this batch opens (and does not resolve itself), and the holds
        it resolves."""
        resolved = [t.pending_id for t in batch if t.pending_id is not None]
        resolved_set = set(resolved)
        added = [t for t in batch if t.expires_at_us is not None and t.id not in resolved_set]
        return added, resolved


class PostgresBatchStore(BatchStore):
    """Arrays instead of IN lists (one prepared statement whatever the batch size), and all of a
    batch's writes in one statement built on ``unnest``."""

    # Retry the whole batch on serialization failure, deadlock, or a unique violation (two
    # processes raced to store the same transfer id or resolve the same pending transfer; the
    # retry reads the winner and answers idempotently).
    RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505"})

    # Arrays travel as text literals ('{…}'): asyncpg's binary array encoder inspects every
    # element against the Iterable ABC, which cost more than the whole SQL statement here.
    # The ids arrive as one text parameter and are joined through ``unnest``, never compared with
    # ``= ANY($1::text::uuid[])``: when the planner turns that into a filter, it parses the whole
    # array again for every row it looks at (measured: 10 s to lock 2,000 of 10,000 accounts).
    _load = (
        f"SELECT {', '.join('t.' + column for column in _TRANSFER_COLUMNS)} FROM transfers AS t "
        "JOIN unnest($1::text::uuid[]) AS k(id) ON t.id = k.id"
    )
    _resolutions = (
        "SELECT t.pending_id, t.kind FROM transfers AS t JOIN unnest($1::text::uuid[]) AS k(id) ON t.pending_id = k.id"
    )
    # ORDER BY id: rows are locked in the order they are returned, so every batch in every process
    # takes its account locks in one global order and two batches can never deadlock on them.
    # (Reaching the locked rows again by ctid saved 4% of a batch, but ctid is PostgreSQL's
    # alone, and DESIGN.md keeps the hot path's SQL portable to CockroachDB and YugabyteDB.)
    _lock = (
        f"SELECT {', '.join('a.' + column.name for column in _ACCOUNT_STATE_COLUMNS)} FROM accounts AS a "
        "JOIN unnest($1::text::uuid[]) AS k(id) ON a.id = k.id ORDER BY a.id FOR UPDATE OF a"
    )
    _head = "SELECT sequence, hash, last_transfer_seq FROM journal_head WHERE id = 1 FOR UPDATE"
    _add_timeouts = (
        "INSERT INTO pending_timeouts (transfer_id, expires_at_us) "
        "SELECT * FROM unnest($1::text::uuid[], $2::text::bigint[])"
    )
    _drop_timeouts = (
        "DELETE FROM pending_timeouts AS p USING unnest($1::text::uuid[]) AS k(id) WHERE p.transfer_id = k.id"
    )
    # All of a batch's writes in one statement, one round trip: the transfer rows, each touched
    # account once, the journal block and the head. (COPY measured no faster than unnest here,
    # and could not share the round trip.)
    _write_batch = (
        "WITH new_transfers AS (INSERT INTO transfers (" + ", ".join(_TRANSFER_COLUMNS) + ") "
        "SELECT * FROM unnest($1::text::bigint[], $2::text::uuid[], $3::text::smallint[], $4::text::uuid[], "
        "$5::text::uuid[], $6::text::bigint[], $7::text::bigint[], $8::text::text[], $9::text::uuid[], "
        "$10::text::int[], $11::text::bigint[], $12::text::boolean[], $13::text::text[], $14::text::bigint[])), "
        "touched AS (UPDATE accounts SET debits_posted = v.dp, credits_posted = v.cp, debits_pending = v.dpe, "
        "credits_pending = v.cpe, debit_day = v.dd, debits_day_minor = v.ddm, debit_year = v.dy, "
        "debits_year_minor = v.dym "
        "FROM unnest($15::text::uuid[], $16::text::bigint[], $17::text::bigint[], $18::text::bigint[], "
        "$19::text::bigint[], $20::text::int[], $21::text::bigint[], $22::text::int[], $23::text::bigint[]) "
        "AS v(id, dp, cp, dpe, cpe, dd, ddm, dy, dym) WHERE accounts.id = v.id RETURNING 1), "
        "block AS (INSERT INTO journal_blocks (sequence, prev_hash, hash, signature, first_transfer_seq, "
        "transfer_count, created_at_us) VALUES ($24, $25, $26, $27, $28, $29, $30)) "
        "UPDATE journal_head SET sequence = $24, hash = $26, last_transfer_seq = $31 "
        "WHERE id = 1 AND (SELECT count(*) FROM touched) = $32"
    )

    @asynccontextmanager
    async def transaction(self, engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
        # The batch path talks to asyncpg directly, under asyncpg's own transaction: measured,
        # SQLAlchemy's per-row result handling was a third of a batch's Python time. SQLAlchemy
        # only lends the pooled connection; it never starts a transaction on it here, so its
        # reset on return has nothing to undo. A connection that died under the batch is taken
        # out of the pool, and the batch is retried on a fresh one (see ConnectionLost).
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            commit_sent = False
            try:
                async with driver.transaction():
                    yield driver
                    commit_sent = True  # leaving the block sends COMMIT
            except Exception as error:
                if driver.is_closed() or _connection_lost(error):
                    await conn.invalidate()
                    # One dead session usually means all of them (a restart, a failover): renew
                    # the whole pool, as SQLAlchemy does when a Core statement meets a
                    # disconnect. Meeting the dead ones one retry at a time would use up the
                    # batch's attempts; a test proves the next batch and read succeed.
                    await engine.dispose()
                    raise ConnectionLost(
                        f"the database connection was lost: {error!r}", commit_sent=commit_sent
                    ) from error
                raise

    async def load_transfers(self, driver, ids):
        return {record[1]: _transfer_from_record(record) for record in await driver.fetch(self._load, _uuid_array(ids))}

    async def load_resolutions(self, driver, pending_ids):
        return {
            record[0]: TransferKind(record[1])
            for record in await driver.fetch(self._resolutions, _uuid_array(pending_ids))
        }

    async def lock_accounts(self, driver, ids):
        return {record[0]: AccountState(*record) for record in await driver.fetch(self._lock, _uuid_array(ids))}

    async def lock_head(self, driver):
        record = await driver.fetchrow(self._head)
        return JournalHead(record[0], bytes(record[1]), record[2])

    async def update_timeouts(self, driver, batch):
        added, resolved = self._timeout_changes(batch)
        if added:
            await driver.execute(
                self._add_timeouts, _uuid_array([t.id for t in added]), _array_text([t.expires_at_us for t in added])
            )
        if resolved:
            await driver.execute(self._drop_timeouts, _uuid_array(resolved))

    async def write_batch(self, driver, batch, touched, block):
        status = await driver.execute(
            self._write_batch,
            _array_text([t.seq for t in batch]),
            _uuid_array([t.id for t in batch]),
            _array_text([int(t.kind) for t in batch]),
            _uuid_array([t.debit_account_id for t in batch]),
            _uuid_array([t.credit_account_id for t in batch]),
            _array_text([t.amount_minor for t in batch]),
            _array_text([t.released_minor for t in batch]),
            _array_text([t.currency for t in batch]),
            _uuid_array_nullable([t.pending_id for t in batch]),
            _array_text_nullable([t.timeout_s for t in batch]),
            _array_text_nullable([t.expires_at_us for t in batch]),
            _array_text(["t" if t.linked else "f" for t in batch]),
            _array_text_quoted([t.user_data for t in batch]),
            _array_text([t.created_at_us for t in batch]),
            _uuid_array([a.id for a in touched]),
            _array_text([a.debits_posted for a in touched]),
            _array_text([a.credits_posted for a in touched]),
            _array_text([a.debits_pending for a in touched]),
            _array_text([a.credits_pending for a in touched]),
            _array_text([a.debit_day for a in touched]),
            _array_text([a.debits_day_minor for a in touched]),
            _array_text([a.debit_year for a in touched]),
            _array_text([a.debits_year_minor for a in touched]),
            block.sequence,
            block.prev_hash,
            block.hash,
            block.signature,
            block.first_transfer_seq,
            block.transfer_count,
            block.created_at_us,
            block.first_transfer_seq + block.transfer_count - 1,
            len(touched),
        )
        if status != "UPDATE 1":
            raise InvariantViolation(f"the batch's account updates did not reach all {len(touched)} locked accounts")

    def classify(self, error):
        # The batch path raises asyncpg's own errors (driver calls) as well as SQLAlchemy's
        # wrappers of them (Core calls); both carry the SQLSTATE.
        if isinstance(error, DBAPIError):
            cause = getattr(error.orig, "__cause__", None)
            driver_error = cause if isinstance(cause, asyncpg.PostgresError) else None
            state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
            name = type(driver_error).__name__ if driver_error is not None else type(error.orig).__name__
        elif isinstance(error, ConnectionLost):
            return DatabaseFailure(retryable=True, integrity=False, reason=f"connection lost ({error.__cause__!r})")
        elif isinstance(error, asyncpg.PostgresError):
            state, name = error.sqlstate, type(error).__name__
        elif isinstance(error, (OSError, asyncpg.InterfaceError)):
            return DatabaseFailure(retryable=False, integrity=False, reason=type(error).__name__)
        else:
            return None
        reason = f"{name} ({state})" if state else name
        return DatabaseFailure(
            retryable=state in self.RETRYABLE_SQLSTATES, integrity=bool(state) and state.startswith("23"), reason=reason
        )


class SqliteBatchStore(BatchStore):
    """``BEGIN IMMEDIATE`` takes the database's write lock first, so reads see the final word and
    ``executemany`` writes the rows. The batch talks to aiosqlite directly: SQLAlchemy's per-row
    result handling (a UUID built from every id) cost more than SQLite's own work. Ids are stored
    as SQLAlchemy's Uuid type stores them on SQLite (32 hex digits; a round-trip test guards
    this) and travel to ``IN`` as one JSON array, so every statement's text stays the same."""

    _lock = (
        f"SELECT {', '.join(column.name for column in _ACCOUNT_STATE_COLUMNS)} FROM accounts "
        "WHERE id IN (SELECT value FROM json_each(?))"
    )
    _load = f"SELECT {', '.join(_TRANSFER_COLUMNS)} FROM transfers WHERE id IN (SELECT value FROM json_each(?))"
    _resolutions = "SELECT pending_id, kind FROM transfers WHERE pending_id IN (SELECT value FROM json_each(?))"
    _head = "SELECT sequence, hash, last_transfer_seq FROM journal_head WHERE id = 1"
    _insert = (
        f"INSERT INTO transfers ({', '.join(_TRANSFER_COLUMNS)}) VALUES ({', '.join('?' for _ in _TRANSFER_COLUMNS)})"
    )
    _update = (
        "UPDATE accounts SET debits_posted = ?, credits_posted = ?, debits_pending = ?, credits_pending = ?, "
        "debit_day = ?, debits_day_minor = ?, debit_year = ?, debits_year_minor = ? WHERE id = ?"
    )
    _block = (
        "INSERT INTO journal_blocks (sequence, prev_hash, hash, signature, first_transfer_seq, transfer_count, "
        "created_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    _head_update = "UPDATE journal_head SET sequence = ?, hash = ?, last_transfer_seq = ? WHERE id = 1"
    _add_timeout = "INSERT INTO pending_timeouts (transfer_id, expires_at_us) VALUES (?, ?)"
    _drop_timeout = "DELETE FROM pending_timeouts WHERE transfer_id = ?"

    @asynccontextmanager
    async def transaction(self, engine: AsyncEngine) -> AsyncIterator[aiosqlite.Connection]:
        # SQLAlchemy lends the pooled connection and never begins a transaction on it here (its
        # own BEGIN IMMEDIATE hook is for Core work), so its reset on return has nothing to undo.
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
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

    async def load_transfers(self, driver, ids):
        rows = await driver.execute_fetchall(self._load, (_json_hex_array(ids),))
        return {transfer.id: transfer for transfer in map(_transfer_from_sqlite, rows)}

    async def load_resolutions(self, driver, pending_ids):
        rows = await driver.execute_fetchall(self._resolutions, (_json_hex_array(pending_ids),))
        return {UUID(hex=pending_id): TransferKind(kind) for pending_id, kind in rows}

    async def lock_accounts(self, driver, ids):
        # The write lock is already ours (BEGIN IMMEDIATE); this only reads.
        by_hex = {account_id.hex: account_id for account_id in ids}
        rows = await driver.execute_fetchall(self._lock, (_json_hex_array(by_hex.values()),))
        return {by_hex[row[0]]: AccountState(by_hex[row[0]], *row[1:]) for row in rows}

    async def lock_head(self, driver):
        [(sequence, hash_, last_transfer_seq)] = await driver.execute_fetchall(self._head)
        return JournalHead(sequence, bytes(hash_), last_transfer_seq)

    async def write_batch(self, driver, batch, touched, block):
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
            [
                (
                    a.debits_posted,
                    a.credits_posted,
                    a.debits_pending,
                    a.credits_pending,
                    a.debit_day,
                    a.debits_day_minor,
                    a.debit_year,
                    a.debits_year_minor,
                    a.id.hex,
                )
                for a in touched
            ],
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
            ),
        )
        await driver.execute(
            self._head_update, (block.sequence, block.hash, block.first_transfer_seq + block.transfer_count - 1)
        )

    async def update_timeouts(self, driver, batch):
        added, resolved = self._timeout_changes(batch)
        if added:
            await driver.executemany(self._add_timeout, [(t.id.hex, t.expires_at_us) for t in added])
        if resolved:
            await driver.executemany(self._drop_timeout, [(pending_id.hex,) for pending_id in resolved])

    def classify(self, error):
        if isinstance(error, DBAPIError):  # from SQLAlchemy, e.g. while lending the connection
            error = error.orig
        if not isinstance(error, sqlite3.Error):
            return None
        message = str(error)
        # Another process held the write lock past busy_timeout: nothing was written, try again.
        busy = "database is locked" in message or "database is busy" in message
        return DatabaseFailure(
            retryable=busy,
            integrity=isinstance(error, sqlite3.IntegrityError),
            reason=f"{type(error).__name__}: {message}" if busy else type(error).__name__,
        )


def _transfer_from_sqlite(row) -> Transfer:
    """As ``_transfer_from_record``, from SQLite's forms: ids as 32 hex digits, ``linked`` as 0/1."""
    (
        seq,
        id_,
        kind,
        debit_account_id,
        credit_account_id,
        amount_minor,
        released_minor,
        currency,
        pending_id,
        timeout_s,
        expires_at_us,
        linked,
        user_data,
        created_at_us,
    ) = row
    return _transfer_from_record(
        (
            seq,
            UUID(hex=id_),
            kind,
            UUID(hex=debit_account_id),
            UUID(hex=credit_account_id),
            amount_minor,
            released_minor,
            currency,
            None if pending_id is None else UUID(hex=pending_id),
            timeout_s,
            expires_at_us,
            bool(linked),
            user_data,
            created_at_us,
        )
    )


def _json_hex_array(ids: Iterable[UUID]) -> str:
    return '["' + '","'.join([value.hex for value in ids]) + '"]'


def store_for(dialect_name: str) -> BatchStore:
    if dialect_name == "postgresql":
        return PostgresBatchStore()
    if dialect_name == "sqlite":
        return SqliteBatchStore()
    raise ValueError(f"no batch store for the {dialect_name} dialect")


def _array_text(values: Iterable) -> str:
    """A PostgreSQL array literal of integers or currency codes, which need no quoting."""
    return "{" + ",".join(map(str, values)) + "}"


def _uuid_array(values: Iterable[UUID]) -> str:
    """A PostgreSQL uuid[] literal. ``bytes.hex()`` is six times faster than ``str(uuid)``, and
    PostgreSQL reads 32 hex digits without dashes as a UUID."""
    return "{" + ",".join([value.bytes.hex() for value in values]) + "}"


def _uuid_array_nullable(values: list[UUID | None]) -> str:
    return "{" + ",".join(["NULL" if value is None else value.bytes.hex() for value in values]) + "}"


def _array_text_nullable(values: list) -> str:
    return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"


def _array_text_quoted(values: list[str | None]) -> str:
    """An array literal of arbitrary text: each element double-quoted with \\ and \" escaped."""
    return (
        "{"
        + ",".join(
            "NULL" if value is None else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values
        )
        + "}"
    )
