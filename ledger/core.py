"""The ledger: accounts, the single-transaction ``submit``, two-phase expiry, statements, audit.

``Ledger.submit(commands)`` is the one place balances change. It applies a whole batch in one
database transaction and answers one :class:`TransferResult` per command; a business failure is a
result code, never an exception. The :class:`ledger.batcher.Batcher` feeds it from many callers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import sqlalchemy as sa
from nacl.signing import SigningKey, VerifyKey
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.accounts import KEEP, AccountBook, _Keep
from ledger.audit import (
    Anchor,
    AuditReport,
    JournalBlock,
    block_from_row,
    newest_anchor,
    refusal_from_row,
    seal_block,
    transfer_from_row,
    verify_audit,
)
from ledger.db import create_engine, read_transaction
from ledger.errors import (
    InvariantViolation,
    LedgerOutcomeUnknown,
    LedgerUnavailable,
    ResultCode,
    UnknownCurrency,
)
from ledger.ids import now_us, uuid7
from ledger.journal import SigningKeyGuard
from ledger.model import (
    Account,
    AccountEvent,
    AccountResult,
    AccountSpec,
    AccountStatus,
    Balances,
    Limits,
    Refusal,
    Transfer,
    TransferCommand,
    TransferKind,
    TransferResult,
)
from ledger.money import Currency
from ledger.rules import AccountState, BatchEngine, accounts_needed, well_formed
from ledger.schema import (
    accounts,
    currencies,
    journal_blocks,
    journal_head,
    pending_timeouts,
    transfer_refusals,
    transfers,
)
from ledger.store import IdClash, JournalHead, store_for

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
# Expired pending transfers voided per expiry pass.
EXPIRY_BATCH_MAX = 1_000
STATEMENT_PAGE_MAX = 500
STATEMENT_PAGE_DEFAULT = 50
# Expiry answers meaning the hold is resolved already, or was never a hold: its due row is dropped.
_NEVER_EXPIRES = frozenset(
    {
        ResultCode.PENDING_TRANSFER_NOT_FOUND,
        ResultCode.PENDING_TRANSFER_NOT_PENDING,
        ResultCode.PENDING_TRANSFER_ALREADY_POSTED,
        ResultCode.PENDING_TRANSFER_ALREADY_VOIDED,
        ResultCode.PENDING_TRANSFER_EXPIRED,
    }
)


@dataclass(slots=True)
class LedgerStats:
    """Counters for metrics and tests: how the batch path has gone so far."""

    batches: int = 0
    transfers_committed: int = 0
    refusals_remembered: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)


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


class _LocksIncomplete(Exception):
    """The batch found it needs an account lock it did not take; it is retried from scratch."""


class Ledger:
    """One ledger over one database. Cheap to share between tasks; make one per process."""

    def __init__(self, engine: AsyncEngine, signing_key: SigningKey, *, clock: Callable[[], int] = now_us) -> None:
        self.engine = engine
        self.signing_key = signing_key
        self.verify_key: VerifyKey = signing_key.verify_key
        self.clock = clock
        self.stats = LedgerStats()
        self._store = store_for(engine.dialect.name)
        self._guard = SigningKeyGuard(signing_key)
        self._currencies: dict[str, Currency] | None = None
        self.accounts = AccountBook(engine, self._guard, clock, self.currencies, self._note_retry)

    @classmethod
    def open(cls, url: str, signing_key: SigningKey, *, clock: Callable[[], int] = now_us, **engine_options) -> Ledger:
        return cls(create_engine(url, **engine_options), signing_key, clock=clock)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- currencies ------------------------------------------------------------------------

    async def currencies(self, *, refresh: bool = False) -> dict[str, Currency]:
        """The registered currencies, cached; ``refresh`` reads them again (another process may
        have added one)."""
        if self._currencies is None or refresh:
            async with self._reading() as conn:
                rows = await conn.execute(sa.select(currencies))
                self._currencies = {row.code: Currency(row.code, row.exponent) for row in rows}
        return self._currencies

    async def currency(self, code: str) -> Currency:
        found = (await self.currencies()).get(code) or (await self.currencies(refresh=True)).get(code)
        if found is None:
            raise UnknownCurrency(f"unknown currency {code!r}")
        return found

    async def add_currency(self, currency: Currency) -> None:
        """Register a currency's exponent. Re-adding the same one is a no-op; changing one is refused."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(sa.select(currencies).where(currencies.c.code == currency.code))).first()
            if row is None:
                await conn.execute(currencies.insert().values(code=currency.code, exponent=currency.exponent))
            elif row.exponent != currency.exponent:
                raise ValueError(f"{currency.code} already has exponent {row.exponent}; exponents never change")
        self._currencies = None

    # -- accounts --------------------------------------------------------------------------

    async def create_accounts(self, specs: Sequence[AccountSpec], *, actor: str | None = None) -> list[AccountResult]:
        """Open accounts idempotently (see :meth:`AccountBook.create_accounts`)."""
        return await self.accounts.create_accounts(specs, actor=actor)

    async def get_account(self, account_id: UUID) -> Account | None:
        return (await self.accounts.get_accounts([account_id])).get(account_id)

    async def get_accounts(self, account_ids: Sequence[UUID]) -> dict[UUID, Account]:
        return await self.accounts.get_accounts(account_ids)

    async def set_account_status(
        self, account_id: UUID, status: AccountStatus, *, actor: str | None = None
    ) -> AccountResult:
        """Freeze, unfreeze or close (see :meth:`AccountBook.set_account_status`)."""
        return await self.accounts.set_account_status(account_id, status, actor=actor)

    async def set_limits(
        self, account_id: UUID, limits: Limits, *, profile: str | _Keep | None = KEEP, actor: str | None = None
    ) -> AccountResult:
        """Change caps and profile (see :meth:`AccountBook.set_limits`)."""
        return await self.accounts.set_limits(account_id, limits, profile=profile, actor=actor)

    async def account_history(self, account_id: UUID) -> list[AccountEvent]:
        """The account's sealed events, oldest first (see :meth:`AccountBook.account_history`)."""
        return await self.accounts.account_history(account_id)

    # -- transfers -------------------------------------------------------------------------

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
                self._note_retry(type(error).__name__)
                continue
            except Exception as error:
                failure = self._store.classify(error)
                if failure is None:
                    raise
                commit_may_have_landed |= getattr(error, "commit_sent", False)
                if not failure.retryable:
                    if failure.integrity:
                        raise InvariantViolation(f"the database refused a batch the rules accepted: {error}") from error
                    raise _unavailable(str(error), commit_may_have_landed) from error
                self._note_retry(failure.reason)
            if attempt < SUBMIT_ATTEMPTS_MAX:
                await asyncio.sleep(RETRY_BACKOFF_BASE_S * attempt * (1 + random.random()))
        raise _unavailable(f"{SUBMIT_ATTEMPTS_MAX} attempts failed", commit_may_have_landed)

    def _note_retry(self, reason: str) -> None:
        self.stats.retries += 1
        self.stats.retry_reasons[reason] = self.stats.retry_reasons.get(reason, 0) + 1
        log.info("retrying batch after %s", reason)

    async def _submit_once(
        self, commands: list[TransferCommand], usable: list[TransferCommand]
    ) -> list[TransferResult]:
        store = self._store
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
            self._guard.sealed(block)  # committed: the chain's newest block is ours
            self.stats.batches += 1
            self.stats.transfers_committed += len(new)
            self.stats.refusals_remembered += len(refusals)
        return results

    async def _write_batch(
        self, conn, new: list[Transfer], refusals: list[Refusal], touched: list[AccountState], now: int
    ) -> JournalBlock:
        store = self._store
        head: JournalHead = await store.lock_head(conn)
        self._guard.check(head)  # under the head lock: no other key can seal in between
        first_seq = head.last_transfer_seq + 1
        for offset, transfer in enumerate(new):
            transfer.seq = first_seq + offset
        block = seal_block(self.signing_key, head.hash, head.sequence + 1, first_seq, now, new, refusals)
        await store.write_batch(conn, new, refusals, touched, block)
        if any(t.expires_at_us is not None or t.pending_id is not None for t in new):
            await store.update_timeouts(conn, new)
        return block

    async def expire_pending(self, *, limit: int = EXPIRY_BATCH_MAX) -> int:
        """Void pending transfers whose timeout has passed; their funds return to the source.

        Each expiry is an ``expire_pending`` transfer with a fresh id. (An id derived from the hold
        was tried: anyone could compute it and store a transfer under it first, and the hold would
        then never expire.) Two processes expiring the same hold store one expiry: the hold's
        accounts are locked and a hold is resolved at most once. A due row whose hold can never
        expire (already resolved, or no hold at all) is dropped, so that it cannot stand at the
        front of the sweep's earliest-first page forever. Returns how many expired.
        """
        now = self.clock()
        async with self._reading() as conn:
            due = (
                (
                    await conn.execute(
                        sa.select(pending_timeouts.c.transfer_id)
                        .where(pending_timeouts.c.expires_at_us <= now)
                        .order_by(pending_timeouts.c.expires_at_us)
                        .limit(min(limit, BATCH_SIZE_MAX))
                    )
                )
                .scalars()
                .all()
            )
        if not due:
            return 0
        commands = [TransferCommand(uuid7(), TransferKind.EXPIRE_PENDING, pending_id=pending_id) for pending_id in due]
        results = await self.submit(commands)
        stuck = {pending_id: result.code for pending_id, result in zip(due, results) if result.code in _NEVER_EXPIRES}
        if stuck:
            log.warning(
                "dropping %d due holds that cannot expire: %s",
                len(stuck),
                ", ".join(f"{pending_id} ({code})" for pending_id, code in list(stuck.items())[:10]),
            )
            async with self.engine.begin() as conn:
                await conn.execute(pending_timeouts.delete().where(pending_timeouts.c.transfer_id.in_(list(stuck))))
        return sum(1 for result in results if result.ok)

    async def get_refusal(self, transfer_id: UUID) -> Refusal | None:
        """The remembered refusal stored under this id, if the id was refused."""
        async with self._reading() as conn:
            row = (
                await conn.execute(sa.select(transfer_refusals).where(transfer_refusals.c.id == transfer_id))
            ).first()
        return None if row is None else refusal_from_row(row)

    async def get_transfer(self, transfer_id: UUID) -> Transfer | None:
        async with self._reading() as conn:
            row = (await conn.execute(sa.select(transfers).where(transfers.c.id == transfer_id))).first()
        return None if row is None else transfer_from_row(row)

    async def pending_status(self, pending_id: UUID) -> TransferKind | None:
        """How a pending transfer was resolved (post, void, expiry), or None while it is pending."""
        async with self._reading() as conn:
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
        async with self._reading(snapshot=True) as conn:
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
                for side, (posted, pending) in (await self._effects_since(conn, account_id, before_seq)).items():
                    balance[side] -= posted
                    balance[side + 2] -= pending
            page = await self._account_transfers(conn, account_id, before_seq=before_seq, limit=limit + 1)
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

    async def _account_transfers(
        self, conn: AsyncConnection, account_id: UUID, *, before_seq: int | None, limit: int
    ) -> list[Transfer]:
        found: dict[int, Transfer] = {}
        for column in (transfers.c.debit_account_id, transfers.c.credit_account_id):
            query = sa.select(transfers).where(column == account_id).order_by(transfers.c.seq.desc()).limit(limit)
            if before_seq is not None:
                query = query.where(transfers.c.seq < before_seq)
            found.update((row.seq, transfer_from_row(row)) for row in await conn.execute(query))
        return sorted(found.values(), key=lambda transfer: transfer.seq, reverse=True)[:limit]

    @staticmethod
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

    # -- audit -----------------------------------------------------------------------------

    async def audit_head(self) -> JournalHead:
        async with self._reading() as conn:
            row = (await conn.execute(sa.select(journal_head))).one()
        return JournalHead(row.sequence, bytes(row.hash), row.last_transfer_seq)

    async def newest_block(self) -> JournalBlock | None:
        """The newest journal block with its signature (what ``GET /v1/audit/head`` serves beside
        the ledger's public key), or None before the first batch."""
        async with self._reading() as conn:
            row = (
                await conn.execute(
                    sa.select(journal_blocks).join(journal_head, journal_blocks.c.sequence == journal_head.c.sequence)
                )
            ).first()
        if row is None:
            return None
        return block_from_row(row)

    async def check_signing_key(self) -> None:
        """Raise :class:`LedgerKeyMismatch` unless this ledger's key signed the chain's newest
        block (any key will do for an empty chain): an early answer for start-up. Every write
        checks again under the journal head lock, so that two processes started with different
        keys can never both seal blocks."""
        block = await self.newest_block()
        if block is not None:
            self._guard.check(JournalHead(block.sequence, block.hash, 0, block.signature))

    async def verify_audit(self, verify_key: VerifyKey | None = None, anchors: Sequence[Anchor] = ()) -> AuditReport:
        return await verify_audit(self.engine, verify_key or self.verify_key, anchors)

    async def audit_anchor(self) -> Anchor | None:
        """The newest block as an :class:`Anchor` to record outside the ledger (None before the first)."""
        return await newest_anchor(self.engine)

    # -- helpers ---------------------------------------------------------------------------

    def _reading(self, *, snapshot: bool = False):
        return read_transaction(self.engine, snapshot=snapshot)


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


def _undo_effect(balance: list[int], transfer: Transfer, account_id: UUID) -> None:
    if transfer.debit_account_id == account_id:
        balance[0] -= transfer.posted_delta
        balance[2] -= transfer.pending_delta
    else:
        balance[1] -= transfer.posted_delta
        balance[3] -= transfer.pending_delta
