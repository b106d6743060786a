"""The batch path's steps, as every database says them: :class:`BatchStore`, and what its steps
hand back (the journal head, a classified database failure, the errors that mean "retry")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.audit import JournalBlock, transfer_from_record
from ledger.errors import InvariantViolation, ResultCode
from ledger.model import Refusal, Transfer, TransferKind
from ledger.rules import AccountState


class ConnectionLost(Exception):
    """The connection died under a batch. Retrying the whole batch on a new connection is safe
    even if its COMMIT had reached the server: the retry finds its transfer ids stored and
    answers them as replays, so nothing is applied twice. ``commit_sent``: it died while the
    COMMIT was in flight, so until a retry gets through the batch may be committed."""

    def __init__(self, message: str, *, commit_sent: bool = False) -> None:
        super().__init__(message)
        self.commit_sent = commit_sent


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
    signature: bytes | None = None  # the newest block's, when read under the lock (None: no block yet)


class IdClash(Exception):
    """A transfer id of this batch was refused by a batch of another process meanwhile, or a
    refused id of it stored as a transfer (the two never share account locks when the fields
    differ). The batch is retried from scratch and then answers exists_with_different_fields."""


class BatchStore:
    """The steps of the batch path that read or write; subclasses say them in their dialect.

    ``transaction(engine)`` opens the batch's one transaction and yields the handle every other
    step takes: the driver's own connection (asyncpg, aiosqlite), lent by SQLAlchemy's pool. It is
    typed ``Any`` here (asyncpg ships no type hints); each subclass names its own.
    """

    def transaction(self, engine: AsyncEngine) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def load_known(self, conn: Any, ids: Iterable[UUID]) -> tuple[dict[UUID, Transfer], dict[UUID, Refusal]]:
        """The stored transfers and the remembered refusals among ``ids``, in one round trip."""
        raise NotImplementedError

    async def load_resolutions(self, conn: Any, pending_ids: Iterable[UUID]) -> dict[UUID, TransferKind]:
        raise NotImplementedError

    async def lock_accounts(self, conn: Any, ids: Iterable[UUID]) -> dict[UUID, AccountState]:
        raise NotImplementedError

    async def write_batch(
        self,
        conn: Any,
        batch: list[Transfer],
        refusals: list[Refusal],
        touched: list[AccountState],
        block: JournalBlock,
    ) -> None:
        """Store the batch's transfers and refusals, each touched account's new balances, and its
        journal block, and move the head onto it."""
        raise NotImplementedError

    def classify(self, error: Exception) -> DatabaseFailure | None:
        """What a database error means for the batch, or None if it is no database error."""
        raise NotImplementedError

    async def lock_head(self, conn: Any) -> JournalHead:
        """Read the journal head and its block's signature, locked until the batch commits."""
        raise NotImplementedError

    async def update_timeouts(self, conn: Any, batch: list[Transfer]) -> None:
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


def _split_known(records: Iterable[Sequence[Any]]) -> tuple[dict[UUID, Transfer], dict[UUID, Refusal]]:
    """Rows of the load query, transfers and refusals apart (a refusal row has no seq)."""
    known: dict[UUID, Transfer] = {}
    refused: dict[UUID, Refusal] = {}
    for record in records:
        if record[0] is not None:
            known[record[1]] = transfer_from_record(record[:-1])
        else:
            refused[record[1]] = _refusal_from_record(record)
    return known, refused


def _refusal_from_record(record: Sequence[Any]) -> Refusal:
    """A refusal from a load-query row (transfer columns' shape, code last)."""
    (_, id_, kind, debit_account_id, credit_account_id, amount_minor, _, currency, pending_id, timeout_s, _, linked,
     user_data, created_at_us, code) = record  # fmt: skip
    return Refusal(id_, ResultCode(code), TransferKind(kind), debit_account_id, credit_account_id, amount_minor,
                   currency, pending_id, timeout_s, linked, user_data, created_at_us)  # fmt: skip


async def driver_connection(conn: AsyncConnection) -> Any:
    """The driver's own connection under a pooled SQLAlchemy one (asyncpg's or aiosqlite's)."""
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None:  # only a connection detached from its pool has none; a lent one never is
        raise InvariantViolation("the pooled connection has no driver connection")
    return driver
