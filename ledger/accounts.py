"""Opening accounts and changing their settings (status, limits, profile), each change an account
event sealed in the audit chain in the same transaction, and reading accounts and their history.

Balances never change here: only transfers move money (``ledger.submit``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.audit import event_from_row
from ledger.db import read_transaction
from ledger.errors import AccountResultCode
from ledger.journal import SigningKeyGuard, append_event_block
from ledger.model import (
    LIMIT_NAMES,
    Account,
    AccountEvent,
    AccountEventKind,
    AccountFlags,
    AccountResult,
    AccountSettings,
    AccountSpec,
    AccountStatus,
    Balances,
    Limits,
)
from ledger.money import Currency
from ledger.rules import business_day_and_year, storable_text
from ledger.schema import account_events, accounts

log = logging.getLogger(__name__)

# An account id another process inserts between our read and our insert is read again this often.
CREATE_ACCOUNTS_ATTEMPTS_MAX = 3
# Accounts one create_accounts call may open (one transaction, one sealed block of events).
CREATE_ACCOUNTS_BATCH_MAX = 10_000
ACCOUNT_KIND_LENGTH_MAX = 32  # the columns' sizes in ledger.schema
OWNER_REF_LENGTH_MAX = 128
PROFILE_LENGTH_MAX = 32
ACTOR_LENGTH_MAX = 128
# Ids per IN list when reading accounts by id.
READ_CHUNK_MAX = 500
_KNOWN_FLAGS = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)


class _Keep:
    """Leave this setting as it is."""


KEEP = _Keep()


class AccountBook:
    """The account half of a :class:`ledger.Ledger`; the ledger hands it its engine, clock, signing
    key guard and currency lookup."""

    def __init__(
        self,
        engine: AsyncEngine,
        guard: SigningKeyGuard,
        clock: Callable[[], int],
        currencies: Callable[..., Awaitable[dict[str, Currency]]],
        note_retry: Callable[[str], None],
    ) -> None:
        self.engine = engine
        self.guard = guard
        self.clock = clock
        self._currencies = currencies
        self._note_retry = note_retry

    # -- opening ---------------------------------------------------------------------------

    async def create_accounts(self, specs: Sequence[AccountSpec], *, actor: str | None = None) -> list[AccountResult]:
        """Open accounts idempotently: the same id with the same fields answers ``ok`` again. All new
        rows go in with one multi-row insert, and their opening events in one sealed block."""
        for spec in specs:
            if not isinstance(spec, AccountSpec):
                raise TypeError(f"expected AccountSpec, got {type(spec).__name__}")
        if len(specs) > CREATE_ACCOUNTS_BATCH_MAX:
            raise ValueError(f"at most {CREATE_ACCOUNTS_BATCH_MAX} accounts per call, got {len(specs)}")
        _check_actor(actor)
        well_formed_specs = [_spec_well_formed(spec) for spec in specs]
        known_currencies = await self._currencies()
        if any(ok and spec.currency not in known_currencies for spec, ok in zip(specs, well_formed_specs)):
            known_currencies = await self._currencies(refresh=True)  # another process may have added it
        for attempt in range(1, CREATE_ACCOUNTS_ATTEMPTS_MAX + 1):
            try:
                return await self._create_accounts_once(specs, well_formed_specs, known_currencies, actor)
            except IntegrityError as error:
                # Another process inserted one of these ids between our read and our insert (on
                # PostgreSQL; SQLite's BEGIN IMMEDIATE serialises the two): read them again, and
                # answer ok or exists_with_different_fields like any other existing account.
                if attempt == CREATE_ACCOUNTS_ATTEMPTS_MAX or not _unique_violation(error):
                    raise
                self._note_retry("account id inserted concurrently")
        raise AssertionError("unreachable")

    async def _create_accounts_once(
        self,
        specs: Sequence[AccountSpec],
        well_formed_specs: list[bool],
        known_currencies: dict[str, Currency],
        actor: str | None,
    ) -> list[AccountResult]:
        results: list[AccountResult] = []
        async with self.engine.begin() as conn:
            existing = await accounts_by_id(
                conn, [spec.id for spec, ok in zip(specs, well_formed_specs) if ok], self.clock()
            )
            now_us = self.clock()
            opened: list[Account] = []
            for spec, ok in zip(specs, well_formed_specs):
                result = (
                    _open(spec, existing, known_currencies, now_us, opened)
                    if ok
                    else AccountResult(AccountResultCode.INVALID_ACCOUNT)
                )
                results.append(result)
            if opened:
                await conn.execute(accounts.insert(), [_new_row(account) for account in opened])
                events = [
                    AccountEvent(account.id, 1, AccountEventKind.OPENED, actor, now_us, account.settings)
                    for account in opened
                ]
                await append_event_block(conn, self.guard, events, now_us)
        return results

    # -- changing settings -----------------------------------------------------------------

    async def set_account_status(
        self, account_id: UUID, status: AccountStatus, *, actor: str | None = None
    ) -> AccountResult:
        """Freeze, unfreeze or close. Closing needs a zero posted balance (credits equal debits) and
        nothing pending either way, and is final. ``status`` may be the plain value (2 for closed):
        it is read as an AccountStatus first, so the checks see what is stored."""
        status = AccountStatus(status)  # ValueError for a status that does not exist
        _check_actor(actor)
        async with self.engine.begin() as conn:
            account = await self._lock_for_change(conn, account_id)
            if isinstance(account, AccountResult):
                return account
            held = account.balances
            if status is AccountStatus.CLOSED and (held.posted_minor or held.debits_pending or held.credits_pending):
                return AccountResult(AccountResultCode.ACCOUNT_NOT_EMPTY, account)
            changed = dataclasses.replace(account, status=status)
            await self._record_change(conn, account, changed, AccountEventKind.STATUS, actor)
            return AccountResult(AccountResultCode.OK, changed)

    async def set_limits(
        self, account_id: UUID, limits: Limits, *, profile: str | _Keep | None = KEEP, actor: str | None = None
    ) -> AccountResult:
        """Change an account's caps (and, if given, its profile label) from its next transfer on, in
        one sealed event. A balance cap below what the account already holds is refused rather than
        leaving the account over its own cap. An overdraft cap below the account's debit balance
        is allowed: it stops further debits, which is what lowering a net debit cap is for."""
        if not isinstance(limits, Limits) or limits.problems():
            return AccountResult(AccountResultCode.INVALID_LIMIT)
        if not isinstance(profile, _Keep) and profile is not None and not storable_text(profile, PROFILE_LENGTH_MAX):
            return AccountResult(AccountResultCode.INVALID_ACCOUNT)
        _check_actor(actor)
        async with self.engine.begin() as conn:
            account = await self._lock_for_change(conn, account_id)
            if isinstance(account, AccountResult):
                return account
            held = account.balances.credits_posted + account.balances.credits_pending - account.balances.debits_posted
            if limits.balance_cap_minor is not None and held > limits.balance_cap_minor:
                return AccountResult(AccountResultCode.LIMIT_BELOW_BALANCE, account)
            new_profile = account.profile if isinstance(profile, _Keep) else profile
            changed = dataclasses.replace(account, limits=limits, profile=new_profile)
            await self._record_change(conn, account, changed, AccountEventKind.LIMITS, actor)
            return AccountResult(AccountResultCode.OK, changed)

    async def _record_change(
        self, conn: AsyncConnection, before: Account, after: Account, kind: AccountEventKind, actor: str | None
    ) -> None:
        """Write the new settings and seal them as the account's next event; nothing if unchanged."""
        if after.settings == before.settings:
            return
        version = (
            await conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(account_events.c.version), 0)).where(
                    account_events.c.account_id == before.id
                )
            )
        ).scalar_one()
        now_us = self.clock()
        await conn.execute(accounts.update().where(accounts.c.id == before.id).values(**after.settings.as_row()))
        event = AccountEvent(before.id, version + 1, kind, actor, now_us, after.settings)
        await append_event_block(conn, self.guard, [event], now_us)

    async def _lock_for_change(self, conn: AsyncConnection, account_id: UUID) -> Account | AccountResult:
        """The account, locked for a change of its settings, or the result refusing any change:
        not found, or closed (closing is final)."""
        account = await self._lock_account(conn, account_id)
        if account is None:
            return AccountResult(AccountResultCode.ACCOUNT_NOT_FOUND)
        if account.status is AccountStatus.CLOSED:
            return AccountResult(AccountResultCode.ACCOUNT_CLOSED, account)
        return account

    async def _lock_account(self, conn: AsyncConnection, account_id: UUID) -> Account | None:
        row = (await conn.execute(sa.select(accounts).where(accounts.c.id == account_id).with_for_update())).first()
        return None if row is None else account_from_row(row, business_day_and_year(self.clock()))

    # -- reading ---------------------------------------------------------------------------

    async def get_accounts(self, account_ids: Sequence[UUID]) -> dict[UUID, Account]:
        async with read_transaction(self.engine) as conn:
            return await accounts_by_id(conn, list(account_ids), self.clock())

    async def account_history(self, account_id: UUID) -> list[AccountEvent]:
        """Every sealed event of the account, oldest first: who changed what, and when. Each
        event holds the whole state after it; ``event.changes(previous)`` gives old and new."""
        async with read_transaction(self.engine) as conn:
            rows = await conn.execute(
                sa.select(account_events)
                .where(account_events.c.account_id == account_id)
                .order_by(account_events.c.version)
            )
            return [event_from_row(row) for row in rows]


async def accounts_by_id(conn: AsyncConnection, ids: list[UUID], now_us: int) -> dict[UUID, Account]:
    found: dict[UUID, Account] = {}
    today = business_day_and_year(now_us)
    for start in range(0, len(ids), READ_CHUNK_MAX):
        rows = await conn.execute(sa.select(accounts).where(accounts.c.id.in_(ids[start : start + READ_CHUNK_MAX])))
        found.update((row.id, account_from_row(row, today)) for row in rows)
    return found


def account_from_row(row: sa.Row[Any], today: tuple[int, int]) -> Account:
    """The account as of ``today`` (Asia/Shanghai day and year): a debit counter of an earlier day
    or year reads 0, as the next debit will find it."""
    day, year = today
    settings = AccountSettings.from_row(row)
    return Account(
        id=row.id, currency=settings.currency, kind=settings.kind, owner_ref=settings.owner_ref,
        flags=settings.flags, status=settings.status, limits=settings.limits,
        balances=Balances(row.debits_posted, row.credits_posted, row.debits_pending, row.credits_pending),
        debits_day_minor=row.debits_day_minor if row.debit_day >= day else 0,
        debits_year_minor=row.debits_year_minor if row.debit_year >= year else 0,
        created_at_us=row.created_at_us, profile=settings.profile,
    )  # fmt: skip


def _open(
    spec: AccountSpec,
    existing: dict[UUID, Account],
    known_currencies: dict[str, Currency],
    now_us: int,
    opened: list[Account],
) -> AccountResult:
    found = existing.get(spec.id)
    if found is not None:
        asked = (spec.currency, spec.kind, spec.owner_ref, AccountFlags(spec.flags), spec.limits, spec.profile)
        same = (found.currency, found.kind, found.owner_ref, found.flags, found.limits, found.profile) == asked
        return AccountResult(AccountResultCode.OK if same else AccountResultCode.EXISTS_WITH_DIFFERENT_FIELDS, found)
    if spec.currency not in known_currencies:
        return AccountResult(AccountResultCode.CURRENCY_NOT_FOUND)
    flags = AccountFlags(spec.flags)
    if flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS and flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS:
        return AccountResult(AccountResultCode.FLAGS_ARE_MUTUALLY_EXCLUSIVE)
    if spec.limits.problems():
        return AccountResult(AccountResultCode.INVALID_LIMIT)
    account = Account(
        spec.id, spec.currency, spec.kind, spec.owner_ref, flags, AccountStatus.OPEN, spec.limits, Balances(),
        0, 0, now_us, spec.profile,
    )  # fmt: skip
    existing[spec.id] = account
    opened.append(account)
    return AccountResult(AccountResultCode.OK, account)


def _new_row(account: Account) -> dict[str, object]:
    return dict(
        id=account.id, created_at_us=account.created_at_us, debits_posted=0, credits_posted=0, debits_pending=0,
        credits_pending=0, debit_day=0, debits_day_minor=0, debit_year=0, debits_year_minor=0,
        **account.settings.as_row(),
    )  # fmt: skip


def _spec_well_formed(spec: AccountSpec) -> bool:
    """Whether every field of an account spec has a type and size the accounts table stores, so
    that a malformed spec is answered invalid_account instead of failing its whole call."""
    return (
        isinstance(spec.id, UUID)
        and type(spec.currency) is str
        and isinstance(spec.limits, Limits)
        and isinstance(spec.flags, int)
        and not isinstance(spec.flags, bool)
        and 0 <= spec.flags
        and not spec.flags & ~_KNOWN_FLAGS
        and bool(spec.kind)
        and storable_text(spec.kind, ACCOUNT_KIND_LENGTH_MAX)
        and (spec.owner_ref is None or storable_text(spec.owner_ref, OWNER_REF_LENGTH_MAX))
        and (spec.profile is None or storable_text(spec.profile, PROFILE_LENGTH_MAX))
    )


def _check_actor(actor: str | None) -> None:
    if actor is not None and not storable_text(actor, ACTOR_LENGTH_MAX):
        raise ValueError(f"actor must be text of at most {ACTOR_LENGTH_MAX} characters without NUL")


def _unique_violation(error: IntegrityError) -> bool:
    """PostgreSQL's unique_violation (23505), or SQLite's UNIQUE constraint message."""
    orig = error.orig
    return getattr(orig, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(orig)


__all__ = ["KEEP", "LIMIT_NAMES", "AccountBook", "account_from_row", "accounts_by_id"]
