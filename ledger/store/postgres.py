"""The batch path's SQL for PostgreSQL (asyncpg): arrays travel as text and are joined through
``unnest``, and all of a batch's writes go in one statement."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.audit import JournalBlock
from ledger.errors import InvariantViolation
from ledger.model import Refusal, Transfer, TransferKind
from ledger.rules import AccountState
from ledger.schema import ACCOUNT_BALANCE_COLUMNS, ACCOUNT_STATE_COLUMNS, REFUSAL_COLUMNS, TRANSFER_COLUMNS
from ledger.store.base import (
    BatchStore,
    ConnectionLost,
    DatabaseFailure,
    IdClash,
    JournalHead,
    _split_known,
    driver_connection,
)

# The refusal columns a batch writes: all but block_sequence, which the block gives.
_REFUSAL_WRITE_COLUMNS = REFUSAL_COLUMNS[:-1]

# Class 08 (connection exception) arrives as asyncpg.PostgresConnectionError; these are the server
# ending the session: admin shutdown (pg_terminate_backend, a fast shutdown), crash shutdown,
# cannot connect now.
_SESSION_ENDED_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def _connection_lost(error: BaseException) -> bool:
    return isinstance(error, (asyncpg.PostgresConnectionError, ConnectionError)) or (
        isinstance(error, asyncpg.PostgresError) and error.sqlstate in _SESSION_ENDED_SQLSTATES
    )


_POSTGRES_TYPES = {
    "seq": "bigint", "id": "uuid", "kind": "smallint", "debit_account_id": "uuid", "credit_account_id": "uuid",
    "amount_minor": "bigint", "released_minor": "bigint", "currency": "text", "pending_id": "uuid",
    "timeout_s": "int", "expires_at_us": "bigint", "linked": "boolean", "user_data": "text",
    "created_at_us": "bigint", "code": "text", "debits_posted": "bigint", "credits_posted": "bigint",
    "debits_pending": "bigint", "credits_pending": "bigint", "debit_day": "int", "debits_day_minor": "bigint",
    "debit_year": "int", "debits_year_minor": "bigint",
}  # fmt: skip


def _unnest(columns: tuple[str, ...], first_param: int) -> str:
    return "unnest(" + ", ".join(
        f"${first_param + offset}::text::{_POSTGRES_TYPES[column]}[]" for offset, column in enumerate(columns)
    ) + ")"  # fmt: skip


def _postgres_write_batch_sql(*, with_refusals: bool) -> str:
    """All of a batch's writes in one statement, one round trip: the transfer rows, the refusals,
    each touched account once, the journal block and the head. (COPY measured no faster than
    unnest here, and could not share the round trip.)

    The head moves only if every locked account was updated and no id of the batch is on the
    other side meanwhile (a transfer id refused, or a refused id stored as a transfer, by a batch of
    another process that held no common account lock). This statement runs after the head lock,
    so under READ COMMITTED it sees every batch that held the head before: "UPDATE 0" then means
    retry (``IdClash``) or a broken invariant."""
    transfer_params = len(TRANSFER_COLUMNS)  # $1..$14
    touched = ("id", *ACCOUNT_BALANCE_COLUMNS)  # $15..$23
    block = transfer_params + len(touched) + 1  # $24 onwards: the block, then counts
    refusal_params = block + 10  # $34 onwards
    sql = (
        f"WITH new_transfers AS (INSERT INTO transfers ({', '.join(TRANSFER_COLUMNS)}) "
        f"SELECT * FROM {_unnest(TRANSFER_COLUMNS, 1)}), "
        f"touched AS (UPDATE accounts SET {', '.join(f'{c} = v.{c}' for c in ACCOUNT_BALANCE_COLUMNS)} "
        f"FROM {_unnest(touched, transfer_params + 1)} AS v({', '.join(touched)}) "
        "WHERE accounts.id = v.id RETURNING 1), "
    )
    if with_refusals:
        sql += (
            f"new_refusals AS (INSERT INTO transfer_refusals ({', '.join(REFUSAL_COLUMNS)}) "
            f"SELECT *, ${block} FROM {_unnest(_REFUSAL_WRITE_COLUMNS, refusal_params)}), "
        )
    sql += (
        "block AS (INSERT INTO journal_blocks (sequence, prev_hash, hash, signature, first_transfer_seq, "
        f"transfer_count, created_at_us, refusal_count) VALUES (${block}, ${block + 1}, ${block + 2}, "
        f"${block + 3}, ${block + 4}, ${block + 5}, ${block + 6}, ${block + 9})) "
        f"UPDATE journal_head SET sequence = ${block}, hash = ${block + 2}, last_transfer_seq = ${block + 7} "
        f"WHERE id = 1 AND (SELECT count(*) FROM touched) = ${block + 8} "
        "AND NOT EXISTS (SELECT 1 FROM transfer_refusals AS r JOIN unnest($2::text::uuid[]) AS k(id) ON r.id = k.id)"
    )
    if with_refusals:
        sql += (
            " AND NOT EXISTS (SELECT 1 FROM transfers AS t "
            f"JOIN unnest(${refusal_params}::text::uuid[]) AS k(id) ON t.id = k.id)"
        )
    return sql


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
    # Transfers and remembered refusals of the same ids in one round trip: refusal rows come back
    # in the transfer columns' shape with seq NULL, and their code in the last column.
    _load = (
        f"SELECT {', '.join('t.' + column for column in TRANSFER_COLUMNS)}, NULL::text FROM transfers AS t "
        "JOIN unnest($1::text::uuid[]) AS k(id) ON t.id = k.id UNION ALL "
        "SELECT NULL::bigint, r.id, r.kind, r.debit_account_id, r.credit_account_id, r.amount_minor, NULL::bigint, "
        "r.currency, r.pending_id, r.timeout_s, NULL::bigint, r.linked, r.user_data, r.created_at_us, r.code "
        "FROM transfer_refusals AS r JOIN unnest($1::text::uuid[]) AS k(id) ON r.id = k.id"
    )
    _resolutions = (
        "SELECT t.pending_id, t.kind FROM transfers AS t JOIN unnest($1::text::uuid[]) AS k(id) ON t.pending_id = k.id"
    )
    # ORDER BY id: rows are locked in the order they are returned, so every batch in every process
    # takes its account locks in one global order and two batches can never deadlock on them.
    # (Reaching the locked rows again by ctid saved 4% of a batch, but ctid is PostgreSQL's
    # alone, and DESIGN.md keeps the hot path's SQL portable to CockroachDB and YugabyteDB.)
    _lock = (
        f"SELECT {', '.join('a.' + column for column in ACCOUNT_STATE_COLUMNS)} FROM accounts AS a "
        "JOIN unnest($1::text::uuid[]) AS k(id) ON a.id = k.id ORDER BY a.id FOR UPDATE OF a"
    )
    # The newest block's signature comes with the head, so that the signing-key check runs under
    # the head lock at no extra round trip.
    _head = (
        "SELECT h.sequence, h.hash, h.last_transfer_seq, b.signature FROM journal_head AS h "
        "LEFT JOIN journal_blocks AS b ON b.sequence = h.sequence WHERE h.id = 1 FOR UPDATE OF h"
    )
    _add_timeouts = (
        "INSERT INTO pending_timeouts (transfer_id, expires_at_us) "
        "SELECT * FROM unnest($1::text::uuid[], $2::text::bigint[])"
    )
    _drop_timeouts = (
        "DELETE FROM pending_timeouts AS p USING unnest($1::text::uuid[]) AS k(id) WHERE p.transfer_id = k.id"
    )
    _write_batch = _postgres_write_batch_sql(with_refusals=False)
    _write_batch_with_refusals = _postgres_write_batch_sql(with_refusals=True)
    _clash = (
        "SELECT EXISTS (SELECT 1 FROM transfer_refusals AS r JOIN unnest($1::text::uuid[]) AS k(id) ON r.id = k.id) "
        "OR EXISTS (SELECT 1 FROM transfers AS t JOIN unnest($2::text::uuid[]) AS k(id) ON t.id = k.id)"
    )

    @asynccontextmanager
    async def transaction(self, engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
        # The batch path talks to asyncpg directly, under asyncpg's own transaction: measured,
        # SQLAlchemy's per-row result handling was a third of a batch's Python time. SQLAlchemy
        # only lends the pooled connection; it never starts a transaction on it here, so its
        # reset on return has nothing to undo. A connection that died under the batch is taken
        # out of the pool, and the batch is retried on a fresh one (see ConnectionLost).
        async with engine.connect() as conn:
            driver = await driver_connection(conn)
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

    async def load_known(
        self, driver: asyncpg.Connection, ids: Iterable[UUID]
    ) -> tuple[dict[UUID, Transfer], dict[UUID, Refusal]]:
        return _split_known(await driver.fetch(self._load, _uuid_array(ids)))

    async def load_resolutions(
        self, driver: asyncpg.Connection, pending_ids: Iterable[UUID]
    ) -> dict[UUID, TransferKind]:
        return {
            record[0]: TransferKind(record[1])
            for record in await driver.fetch(self._resolutions, _uuid_array(pending_ids))
        }

    async def lock_accounts(self, driver: asyncpg.Connection, ids: Iterable[UUID]) -> dict[UUID, AccountState]:
        return {record[0]: AccountState(*record) for record in await driver.fetch(self._lock, _uuid_array(ids))}

    async def lock_head(self, driver: asyncpg.Connection) -> JournalHead:
        sequence, hash_, last_transfer_seq, signature = await driver.fetchrow(self._head)
        return JournalHead(sequence, bytes(hash_), last_transfer_seq, None if signature is None else bytes(signature))

    async def update_timeouts(self, driver: asyncpg.Connection, batch: list[Transfer]) -> None:
        added, resolved = self._timeout_changes(batch)
        if added:
            await driver.execute(
                self._add_timeouts, _uuid_array([t.id for t in added]), _array_text([t.expires_at_us for t in added])
            )
        if resolved:
            await driver.execute(self._drop_timeouts, _uuid_array(resolved))

    async def write_batch(
        self,
        driver: asyncpg.Connection,
        batch: list[Transfer],
        refusals: list[Refusal],
        touched: list[AccountState],
        block: JournalBlock,
    ) -> None:
        arguments = [
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
            *(_array_text([getattr(a, column) for a in touched]) for column in ACCOUNT_BALANCE_COLUMNS),
            block.sequence,
            block.prev_hash,
            block.hash,
            block.signature,
            block.first_transfer_seq,
            block.transfer_count,
            block.created_at_us,
            block.first_transfer_seq + block.transfer_count - 1,
            len(touched),
            len(refusals),
        ]
        if refusals:
            arguments += _refusal_arrays(refusals)
        status = await driver.execute(self._write_batch_with_refusals if refusals else self._write_batch, *arguments)
        if status != "UPDATE 1":
            clash = await driver.fetchval(
                self._clash, _uuid_array([t.id for t in batch]), _uuid_array([r.id for r in refusals])
            )
            if clash:
                raise IdClash("an id of this batch was stored on the other side (transfer / refusal) meanwhile")
            raise InvariantViolation(f"the batch's account updates did not reach all {len(touched)} locked accounts")

    def classify(self, error: Exception) -> DatabaseFailure | None:
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
            retryable=state in self.RETRYABLE_SQLSTATES, integrity=bool(state and state.startswith("23")), reason=reason
        )


def _refusal_arrays(refusals: list[Refusal]) -> list[str]:
    """The refusal columns as PostgreSQL array literals, in ``_REFUSAL_WRITE_COLUMNS`` order.
    Fields are as sent, so the text ones are quoted (a refused currency may be anything)."""
    return [
        _uuid_array([r.id for r in refusals]),
        _array_text([r.code.value for r in refusals]),
        _array_text([int(r.kind) for r in refusals]),
        _uuid_array_nullable([r.debit_account_id for r in refusals]),
        _uuid_array_nullable([r.credit_account_id for r in refusals]),
        _array_text_nullable([r.amount_minor for r in refusals]),
        _array_text_quoted([r.currency for r in refusals]),
        _uuid_array_nullable([r.pending_id for r in refusals]),
        _array_text_nullable([r.timeout_s for r in refusals]),
        _array_text(["t" if r.linked else "f" for r in refusals]),
        _array_text_quoted([r.user_data for r in refusals]),
        _array_text([r.created_at_us for r in refusals]),
    ]


def _array_text(values: Iterable[object]) -> str:
    """A PostgreSQL array literal of integers or currency codes, which need no quoting."""
    return "{" + ",".join(map(str, values)) + "}"


def _uuid_array(values: Iterable[UUID]) -> str:
    """A PostgreSQL uuid[] literal. ``bytes.hex()`` is six times faster than ``str(uuid)``, and
    PostgreSQL reads 32 hex digits without dashes as a UUID."""
    return "{" + ",".join([value.bytes.hex() for value in values]) + "}"


def _uuid_array_nullable(values: list[UUID | None]) -> str:
    return "{" + ",".join(["NULL" if value is None else value.bytes.hex() for value in values]) + "}"


def _array_text_nullable(values: list[int | None]) -> str:
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
