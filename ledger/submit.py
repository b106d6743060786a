"""The batch path: apply a batch of transfer commands in one database transaction, retried whole
on a retryable database error.

``BatchSubmitter.submit(commands)`` is the one place balances change. It answers one
:class:`TransferResult` per command; a business failure is a result code, never an exception. The
:class:`ledger.batcher.Batcher` feeds it (through ``Ledger.submit``) from many callers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.audit import JournalBlock, seal_block
from ledger.errors import InvariantViolation, LedgerOutcomeUnknown, LedgerUnavailable
from ledger.journal import SigningKeyGuard
from ledger.model import Refusal, Transfer, TransferCommand, TransferResult
from ledger.rules import AccountState, BatchEngine, accounts_needed, well_formed
from ledger.store import BatchStore, IdClash, JournalHead

log = logging.getLogger(__name__)

# The most commands one submit (one database transaction) may carry. It is TigerBeetle's batch
# bound, (1 MiB message - 256-byte header) / 128-byte transfer = 8,190, so a client moving between
# the two meets one limit; here it bounds one transaction's lock set (at most two accounts per
# command, 16,380 rows) and one batch's memory and time. The batcher's usual batch is far smaller
# (``batch_size_max``, 1,000 by default); a longer linked chain runs in a batch of its own.
BATCH_SIZE_MAX = 8_190
# Whole-batch retries on a retryable database error (deadlock, serialization, lost race, busy).
SUBMIT_ATTEMPTS_MAX = 6
RETRY_BACKOFF_BASE_S = 0.002


@dataclass(slots=True)
class LedgerStats:
    """Counters for metrics and tests: how the batch path has gone so far."""

    batches: int = 0
    transfers_committed: int = 0
    refusals_remembered: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)

    def note_retry(self, reason: str) -> None:
        self.retries += 1
        self.retry_reasons[reason] = self.retry_reasons.get(reason, 0) + 1
        log.info("retrying batch after %s", reason)


class _LocksIncomplete(Exception):
    """The batch found it needs an account lock it did not take; it is retried from scratch."""


class BatchSubmitter:
    """The transfer half of a :class:`ledger.Ledger`; the ledger hands it its engine, batch store,
    signing key and its guard, clock and stats."""

    def __init__(
        self,
        engine: AsyncEngine,
        store: BatchStore,
        signing_key: SigningKey,
        guard: SigningKeyGuard,
        clock: Callable[[], int],
        stats: LedgerStats,
    ) -> None:
        self.engine = engine
        self.store = store
        self.signing_key = signing_key
        self.guard = guard
        self.clock = clock
        self.stats = stats

    async def submit(self, commands: Sequence[TransferCommand]) -> list[TransferResult]:
        """Apply ``commands`` in order, in one database transaction; one result per command.

        When this returns, every ``ok`` result is committed and durable. On a database error that
        is safe to retry the whole batch is retried from scratch (it committed nothing); if it
        still fails, :class:`LedgerUnavailable` is raised and nothing in the batch happened, or
        :class:`LedgerOutcomeUnknown` if a connection died while a COMMIT was in flight and no
        retry got through to tell (resubmit the same ids to learn each outcome).
        """
        commands = list(commands)
        if not commands:
            return []
        if len(commands) > BATCH_SIZE_MAX:
            raise ValueError(f"a batch holds at most {BATCH_SIZE_MAX} commands, got {len(commands)}")
        check_commands(commands)
        # Malformed commands are answered by the engine (invalid_command) and kept out of every
        # id and account set the batch reads and locks.
        usable = [command for command in commands if well_formed(command)]
        commit_may_have_landed = False
        for attempt in range(1, SUBMIT_ATTEMPTS_MAX + 1):
            try:
                return await self._submit_once(commands, usable)
            except (_LocksIncomplete, IdClash) as error:
                self.stats.note_retry(type(error).__name__)
                continue
            except Exception as error:
                failure = self.store.classify(error)
                if failure is None:
                    raise
                commit_may_have_landed |= getattr(error, "commit_sent", False)
                if not failure.retryable:
                    if failure.integrity:
                        raise InvariantViolation(f"the database refused a batch the rules accepted: {error}") from error
                    raise _unavailable(str(error), commit_may_have_landed) from error
                self.stats.note_retry(failure.reason)
            if attempt < SUBMIT_ATTEMPTS_MAX:
                await asyncio.sleep(RETRY_BACKOFF_BASE_S * attempt * (1 + random.random()))
        raise _unavailable(f"{SUBMIT_ATTEMPTS_MAX} attempts failed", commit_may_have_landed)

    async def _submit_once(
        self, commands: list[TransferCommand], usable: list[TransferCommand]
    ) -> list[TransferResult]:
        store = self.store
        ids = {command.id for command in usable}
        pending_ids = {command.pending_id for command in usable if command.pending_id is not None}
        async with store.transaction(self.engine) as conn:
            # Which accounts a post or void touches is known only from its pending transfer.
            # Stored transfers never change, so that one read may come before the locks.
            pendings = (await store.load_known(conn, pending_ids))[0] if pending_ids else {}
            states = await store.lock_accounts(conn, accounts_needed(usable, pendings))
            # Everything that decides a result is read under the locks: whoever else stores one
            # of these ids or resolves one of these holds must hold the same account locks, so
            # what we read now stays true until we commit. (Read in the locking statement, the
            # ids would come from a snapshot taken before the lock wait: a transfer committed
            # meanwhile by another process would be missed, and its replay here refused as
            # insufficient funds instead of answered; a test proves this.)
            known, refused = await store.load_known(conn, ids | pending_ids)
            resolved = await store.load_resolutions(conn, pending_ids) if pending_ids else {}
            if any(transfer_id not in pendings for transfer_id in pending_ids & known.keys()):
                # A hold committed elsewhere between the two reads: its accounts are not locked.
                raise _LocksIncomplete("a pending transfer appeared while its accounts were being locked")
            batch = BatchEngine(states, known, resolved, self.clock(), refused)
            results = batch.apply(commands)
            new, refusals = batch.new_transfers, batch.new_refusals
            if new or refusals:
                touched = [state for state in states.values() if state.touched]
                block = await self._write_batch(conn, new, refusals, touched, batch.now_us)
        if new or refusals:
            self.guard.sealed(block)  # committed: the chain's newest block is ours
            self.stats.batches += 1
            self.stats.transfers_committed += len(new)
            self.stats.refusals_remembered += len(refusals)
        return results

    async def _write_batch(
        self, conn: Any, new: list[Transfer], refusals: list[Refusal], touched: list[AccountState], now: int
    ) -> JournalBlock:
        store = self.store
        head: JournalHead = await store.lock_head(conn)
        self.guard.check(head)  # under the head lock: no other key can seal in between
        first_seq = head.last_transfer_seq + 1
        for offset, transfer in enumerate(new):
            transfer.seq = first_seq + offset
        block = seal_block(self.signing_key, head.hash, head.sequence + 1, first_seq, now, new, refusals)
        await store.write_batch(conn, new, refusals, touched, block)
        if any(t.expires_at_us is not None or t.pending_id is not None for t in new):
            await store.update_timeouts(conn, new)
        return block


def _unavailable(reason: str, commit_may_have_landed: bool) -> LedgerUnavailable:
    if commit_may_have_landed:
        return LedgerOutcomeUnknown(
            f"the batch may or may not be committed (a connection died during its COMMIT, then {reason}); "
            "resubmit the same ids to learn each outcome"
        )
    return LedgerUnavailable(f"the batch was not committed: {reason}")


def check_commands(commands: Sequence[TransferCommand]) -> None:
    """Raise TypeError unless every item is a TransferCommand (its fields are the engine's to judge)."""
    for command in commands:
        if not isinstance(command, TransferCommand):
            raise TypeError(f"expected TransferCommand, got {type(command).__name__}")
