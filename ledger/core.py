"""The ledger's one entry point: :class:`Ledger`, a thin façade over the modules that do the work.

- ``ledger.currencies``: the registered currencies (:class:`CurrencyBook`);
- ``ledger.accounts``: opening accounts and changing their settings (:class:`AccountBook`);
- ``ledger.submit``: the batch path, the one place balances change (:class:`BatchSubmitter`);
- ``ledger.expiry``: voiding holds whose timeout has passed;
- ``ledger.queries``: transfers, refusals, holds, statements and the journal head, read back;
- ``ledger.audit``: sealing and verifying the audit chain.

The ledger builds each part and hands it what it needs (engine, batch store, signing key guard,
clock, stats); the parts never reach back into the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from nacl.signing import SigningKey, VerifyKey
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import expiry
from ledger.accounts import KEEP, AccountBook, _Keep
from ledger.audit import Anchor, AuditReport, JournalBlock, newest_anchor, verify_audit
from ledger.currencies import CurrencyBook
from ledger.db import create_engine
from ledger.expiry import EXPIRY_BATCH_MAX
from ledger.ids import now_us
from ledger.journal import SigningKeyGuard
from ledger.model import (
    Account,
    AccountEvent,
    AccountResult,
    AccountSpec,
    AccountStatus,
    Limits,
    Refusal,
    Transfer,
    TransferCommand,
    TransferKind,
    TransferResult,
)
from ledger.money import Currency
from ledger.queries import STATEMENT_PAGE_DEFAULT, STATEMENT_PAGE_MAX, LedgerQueries, StatementLine, StatementPage
from ledger.store import JournalHead, store_for
from ledger.submit import BATCH_SIZE_MAX, SUBMIT_ATTEMPTS_MAX, BatchSubmitter, LedgerStats, check_commands

# Names that lived in this module before it became a façade, still importable from here.
__all__ = [
    "BATCH_SIZE_MAX",
    "EXPIRY_BATCH_MAX",
    "STATEMENT_PAGE_DEFAULT",
    "STATEMENT_PAGE_MAX",
    "SUBMIT_ATTEMPTS_MAX",
    "Ledger",
    "LedgerStats",
    "StatementLine",
    "StatementPage",
    "check_commands",
]


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
        self._currency_book = CurrencyBook(engine)
        self._submitter = BatchSubmitter(engine, self._store, signing_key, self._guard, clock, self.stats)
        self._queries = LedgerQueries(engine)
        self.accounts = AccountBook(engine, self._guard, clock, self._currency_book.currencies, self.stats.note_retry)

    @classmethod
    def open(
        cls, url: str, signing_key: SigningKey, *, clock: Callable[[], int] = now_us, **engine_options: Any
    ) -> Ledger:
        return cls(create_engine(url, **engine_options), signing_key, clock=clock)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- currencies ------------------------------------------------------------------------

    async def currencies(self, *, refresh: bool = False) -> dict[str, Currency]:
        """The registered currencies, cached; ``refresh`` reads them again (another process may
        have added one)."""
        return await self._currency_book.currencies(refresh=refresh)

    async def currency(self, code: str) -> Currency:
        return await self._currency_book.currency(code)

    async def add_currency(self, currency: Currency) -> None:
        """Register a currency's exponent. Re-adding the same one is a no-op; changing one is refused."""
        await self._currency_book.add_currency(currency)

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
        """Apply ``commands`` in order, in one database transaction; one result per command (see
        :meth:`BatchSubmitter.submit`). When this returns, every ``ok`` result is committed and
        durable; :class:`LedgerUnavailable` means nothing in the batch happened, and
        :class:`LedgerOutcomeUnknown` that it may have (resubmit the same ids to learn)."""
        return await self._submitter.submit(commands)

    async def expire_pending(self, *, limit: int = EXPIRY_BATCH_MAX) -> int:
        """Void pending transfers whose timeout has passed; their funds return to the source
        (see :func:`ledger.expiry.expire_pending`). Returns how many expired."""
        # Through self.submit, looked up now: whatever wraps the ledger's submit sees expiries too.
        return await expiry.expire_pending(self.engine, self.clock(), self.submit, limit=limit)

    async def get_refusal(self, transfer_id: UUID) -> Refusal | None:
        """The remembered refusal stored under this id, if the id was refused."""
        return await self._queries.get_refusal(transfer_id)

    async def get_transfer(self, transfer_id: UUID) -> Transfer | None:
        return await self._queries.get_transfer(transfer_id)

    async def pending_status(self, pending_id: UUID) -> TransferKind | None:
        """How a pending transfer was resolved (post, void, expiry), or None while it is pending."""
        return await self._queries.pending_status(pending_id)

    async def statement(
        self, account_id: UUID, *, limit: int = STATEMENT_PAGE_DEFAULT, before_seq: int | None = None
    ) -> StatementPage:
        """The account's transfers, newest first, each with the account's balances right after it
        (see :meth:`LedgerQueries.statement`)."""
        return await self._queries.statement(account_id, limit=limit, before_seq=before_seq)

    # -- audit -----------------------------------------------------------------------------

    async def audit_head(self) -> JournalHead:
        return await self._queries.audit_head()

    async def newest_block(self) -> JournalBlock | None:
        """The newest journal block with its signature (what ``GET /v1/audit/head`` serves beside
        the ledger's public key), or None before the first batch."""
        return await self._queries.newest_block()

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
