"""The wallets service: institutions, their keys and system accounts, wallets, and every money
movement an institution asks for, through the ledger's Batcher. Tenancy is enforced here: every
method takes the calling institution's id and never shows or moves another institution's things.

Transfer ids are scoped to the institution that chose them (``wallets.ids.scoped_id``), so two
institutions may use the same id and no answer reveals another's transfer; the same id and body
again is the ledger's own replay (a remembered refusal included).

Pending transfers from personal wallets always carry a timeout: ``PERSONAL_HOLD_TIMEOUT_S_DEFAULT``
(15 minutes, a card-style authorisation at a merchant) unless the request names one, and at most
``PERSONAL_HOLD_TIMEOUT_S_MAX`` (1 hour). A daily cap counts a hold on the day it is made; a hold
that lived for days would let one day's cap move money on the next, so a hold may outlive its day by
an hour at most. Both are fixed numbers, not "until midnight", so that a retried request is the very
same command and is answered as a replay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from ledger import (
    Account,
    AccountFlags,
    AccountResultCode,
    AccountSpec,
    AccountStatus,
    Batcher,
    Ledger,
    ResultCode,
    TransferCommand,
)
from ledger.db import read_transaction
from ledger.ids import now_us, uuid7
from wallets.errors import (
    Conflict,
    InvalidRequest,
    LimitBelowBalance,
    NotFound,
    WalletClosed,
    WalletError,
    WalletNotEmpty,
)
from wallets.ids import Origin, metadata_problem, scoped_id
from wallets.institutions import InstitutionRegistry
from wallets.model import (
    AccountRole,
    Institution,
    InstitutionKind,
    Merchant,
    OwnerKind,
    Statement,
    StatementLine,
    TransferOutcome,
    TransferRequest,
    TransferView,
    Wallet,
    WalletOwner,
    WalletSpec,
    WalletStatus,
)
from wallets.profiles import ECNY_TIER_DEFAULT, ECNY_TIERS, HKD_PROFILE_DEFAULT, PROFILES, ecny_profile, tier_of
from wallets.schema import wallets
from wallets.views import view_of

PERSONAL_HOLD_TIMEOUT_S_DEFAULT = 15 * 60
PERSONAL_HOLD_TIMEOUT_S_MAX = 60 * 60
TRANSFER_BATCH_MAX = 1_000
# Wallets opened by one ``open_wallets`` call: one create_accounts call (one sealed block of
# opening events) and one multi-row insert. Well under the ledger's CREATE_ACCOUNTS_BATCH_MAX.
WALLET_BATCH_MAX = 1_000
OWNER_REF_LENGTH_MAX = 128
IDENTITY_HASH_LENGTH_MAX = 128
# Wallet rows never change once written (status and limits live on the ledger account): cached.
WALLET_CACHE_MAX = 200_000
_STATUS = {
    AccountStatus.OPEN: WalletStatus.OPEN,
    AccountStatus.FROZEN: WalletStatus.FROZEN,
    AccountStatus.CLOSED: WalletStatus.CLOSED,
}
_WALLET_FLAGS = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


class WalletBook:
    def __init__(self, ledger: Ledger, batcher: Batcher, *, clock: Callable[[], int] = now_us) -> None:
        self.ledger = ledger
        self.batcher = batcher
        self.clock = clock
        self.institutions = InstitutionRegistry(ledger, clock)
        self._wallet_rows: dict[UUID, sa.Row] = {}

    # -- institutions ------------------------------------------------------------------------

    async def register_institution(
        self,
        institution_id: str,
        kind: InstitutionKind,
        name: str,
        public_key: bytes,
        *,
        actor: str | None = None,
        net_debit_cap: tuple[int, str] | None = None,
    ) -> tuple[Institution, bool]:
        """Register (idempotent: the same fields answer the existing one, created False; other
        fields raise Conflict). Opens its system accounts (funding, settlement, fees) in CNY and HKD.
        ``net_debit_cap`` (amount_minor, currency) is kept as registered; settlement enforces it."""
        return await self.institutions.register(institution_id, kind, name, public_key, actor, net_debit_cap)

    async def get_institution(self, institution_id: str) -> Institution:
        """Raises NotFound."""
        return await self.institutions.get(institution_id)

    async def list_institutions(self) -> list[Institution]:
        return await self.institutions.list()

    async def add_key(self, institution_id: str, public_key: bytes) -> Institution:
        """A new active key; the old ones keep verifying until retired (idempotent)."""
        return await self.institutions.add_key(institution_id, public_key)

    async def retire_key(self, institution_id: str, public_key: bytes) -> Institution:
        """Raises InvalidRequest for the last active key, NotFound for an unknown one."""
        return await self.institutions.retire_key(institution_id, public_key)

    async def active_keys(self, institution_id: str) -> list[bytes]:
        """The raw public keys that may sign for this institution (empty: unknown institution)."""
        return await self.institutions.active_keys(institution_id)

    # -- wallets -----------------------------------------------------------------------------

    async def open_wallet(self, institution_id: str, spec: WalletSpec) -> tuple[Wallet, bool]:
        """Open (idempotent on spec.id; a generated UUIDv7 when None). Raises InvalidRequest
        (unknown currency, tier on a non-CNY or merchant wallet, unknown profile…), Conflict."""
        await self.institutions.get(institution_id)
        profile = _profile_for(spec)
        wallet_id = spec.id or uuid7()
        account = _account_spec(dataclasses.replace(spec, id=wallet_id), profile)
        [result] = await self.ledger.create_accounts([account], actor=institution_id)
        error = _account_error(result.code, spec)
        if error is not None:
            raise error
        created = await self._insert_wallet_row(institution_id, wallet_id, spec)
        return await self.get_wallet(institution_id, wallet_id), created

    async def open_wallets(self, institution_id: str, specs: list[WalletSpec]) -> list[WalletOpening]:
        """Open up to ``WALLET_BATCH_MAX`` wallets at once, each exactly as ``open_wallet`` would
        (idempotent on its id; the same refusals), in one ledger call and one multi-row insert.
        One result per spec, in order: the wallet and whether it was created, or the error that
        ``open_wallet`` would have raised for it. Ids must be distinct (InvalidRequest otherwise)."""
        if not 1 <= len(specs) <= WALLET_BATCH_MAX:
            raise InvalidRequest(f"a batch holds 1 to {WALLET_BATCH_MAX} wallets")
        await self.institutions.get(institution_id)
        openings: list[WalletOpening] = [WalletOpening() for _ in specs]
        accounts: list[tuple[int, WalletSpec, AccountSpec]] = []
        for position, spec in enumerate(specs):
            try:
                profile = _profile_for(spec)
            except InvalidRequest as error:
                openings[position].error = error
                continue
            spec = dataclasses.replace(spec, id=spec.id or uuid7())
            accounts.append((position, spec, _account_spec(spec, profile)))
        ids = [spec.id for _, spec, _ in accounts]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("the wallet ids of a batch must be distinct")
        results = await self.ledger.create_accounts([account for _, _, account in accounts], actor=institution_id)
        opened: list[tuple[int, WalletSpec]] = []
        for (position, spec, _), result in zip(accounts, results, strict=True):
            error = _account_error(result.code, spec)
            if error is not None:
                openings[position].error = error
            else:
                opened.append((position, spec))
        created = await self._insert_wallet_rows(institution_id, [spec for _, spec in opened])
        opened_ids = [wallet_id for _, spec in opened if (wallet_id := spec.id) is not None]
        states = await self.ledger.get_accounts(opened_ids)
        for (position, _), wallet_id, is_new in zip(opened, opened_ids, created, strict=True):
            if isinstance(is_new, Conflict):
                openings[position].error = is_new
                continue
            row, account = self._wallet_rows.get(wallet_id), states.get(wallet_id)
            if row is None or account is None:
                raise RuntimeError(f"wallet {wallet_id} was opened but cannot be read back")  # a bug: never guess
            openings[position].wallet = _wallet_of(row, account)
            openings[position].created = is_new
        return openings

    async def _insert_wallet_row(self, institution_id: str, wallet_id: UUID, spec: WalletSpec) -> bool:
        [created] = await self._insert_wallet_rows(institution_id, [dataclasses.replace(spec, id=wallet_id)])
        if isinstance(created, Conflict):
            raise created
        return created

    async def _insert_wallet_rows(self, institution_id: str, specs: list[WalletSpec]) -> list[bool | Conflict]:
        """Insert the rows of wallets whose ledger accounts exist: True for a new row, False for
        the same row already there (a replay), Conflict for another row under the id. Rows read or
        written are cached (they never change)."""
        if not specs:
            return []
        now_us = self.clock()
        rows = [_wallet_row_values(institution_id, spec, now_us) for spec in specs]
        async with self.ledger.engine.begin() as conn:
            found = await conn.execute(sa.select(wallets).where(wallets.c.id.in_([row["id"] for row in rows])))
            existing = {row.id: row for row in found}
            new_rows = [row for row in rows if row["id"] not in existing]
            if new_rows:
                await conn.execute(wallets.insert(), new_rows)
        outcomes: list[bool | Conflict] = []
        for row in rows:
            stored = existing.get(row["id"])
            if stored is None:
                self._cache_wallet_row(row["id"], _RowView(row))
                outcomes.append(True)
                continue
            self._cache_wallet_row(row["id"], stored)
            same = all(getattr(stored, key) == value for key, value in row.items() if key != "created_at_us")
            outcomes.append(False if same else Conflict("a wallet with this id exists with other fields"))
        return outcomes

    def _cache_wallet_row(self, wallet_id: UUID, row: Any) -> None:
        if len(self._wallet_rows) >= WALLET_CACHE_MAX:
            self._wallet_rows.clear()
        self._wallet_rows[wallet_id] = row

    async def get_wallet(self, institution_id: str, wallet_id: UUID) -> Wallet:
        """Raises NotFound for an unknown wallet or another institution's."""
        row = await self._own_wallet_row(institution_id, wallet_id)
        account = await self.ledger.get_account(wallet_id)
        if account is None:
            raise NotFound(f"no wallet {wallet_id}")
        return _wallet_of(row, account)

    async def _wallet_row(self, wallet_id: UUID) -> sa.Row | None:
        row = self._wallet_rows.get(wallet_id)
        if row is None:
            async with read_transaction(self.ledger.engine) as conn:
                row = (await conn.execute(sa.select(wallets).where(wallets.c.id == wallet_id))).first()
            if row is not None:
                self._cache_wallet_row(wallet_id, row)
        return row

    async def wallet_owner(self, wallet_id: UUID) -> WalletOwner | None:
        """Who holds ``wallet_id`` (any institution's wallet), or None: never shown to a caller as
        is, only used to route a payment to the payee's institution."""
        row = await self._wallet_row(wallet_id)
        if row is None:
            return None
        return WalletOwner(row.id, row.institution_id, OwnerKind(row.owner_kind), row.currency)

    async def wallet_owners(self, wallet_ids: set[UUID]) -> dict[UUID, WalletOwner]:
        """:meth:`wallet_owner` of many wallets, their rows read in one query (unknown ones left out)."""
        await self._prefetch_wallet_rows(wallet_ids)
        owners = {wallet_id: await self.wallet_owner(wallet_id) for wallet_id in wallet_ids}
        return {wallet_id: owner for wallet_id, owner in owners.items() if owner is not None}

    async def _prefetch_wallet_rows(self, wallet_ids: set[UUID]) -> None:
        """Read the uncached rows of ``wallet_ids`` in one query (a batch would otherwise read them
        one by one: 2,000 queries for a batch of 1,000 transfers on a process that did not open them)."""
        missing = [wallet_id for wallet_id in wallet_ids if wallet_id not in self._wallet_rows]
        if not missing:
            return
        async with read_transaction(self.ledger.engine) as conn:
            for row in await conn.execute(sa.select(wallets).where(wallets.c.id.in_(missing))):
                self._cache_wallet_row(row.id, row)

    async def _own_wallet_row(self, institution_id: str, wallet_id: UUID) -> sa.Row:
        row = await self._wallet_row(wallet_id)
        if row is None or row.institution_id != institution_id:
            raise NotFound(f"no wallet {wallet_id}")
        return row

    async def set_wallet_status(
        self, institution_id: str, wallet_id: UUID, status: WalletStatus, *, actor: str | None = None
    ) -> Wallet:
        """Freeze, unfreeze (status OPEN) or close (only at zero: WalletNotEmpty). WalletClosed after close."""
        await self._own_wallet_row(institution_id, wallet_id)
        target = {v: k for k, v in _STATUS.items()}[WalletStatus(status)]
        result = await self.ledger.set_account_status(wallet_id, target, actor=actor or institution_id)
        if result.code is AccountResultCode.ACCOUNT_CLOSED:
            raise WalletClosed("the wallet is closed; closing is final")
        if result.code is AccountResultCode.ACCOUNT_NOT_EMPTY:
            raise WalletNotEmpty("a wallet closes only at a zero balance with nothing pending")
        return await self.get_wallet(institution_id, wallet_id)

    async def change_tier(self, institution_id: str, wallet_id: UUID, tier: int, *, actor: str | None = None) -> Wallet:
        """An e-CNY category change (an account event); LimitBelowBalance on a downgrade below the balance."""
        row = await self._own_wallet_row(institution_id, wallet_id)
        if row.currency != "CNY" or row.owner_kind != OwnerKind.PERSON.value:
            raise InvalidRequest("only personal e-CNY (CNY) wallets have a tier")
        if tier not in ECNY_TIERS:
            raise InvalidRequest(f"tier must be one of {ECNY_TIERS}")
        profile = ecny_profile(tier)
        result = await self.ledger.set_limits(
            wallet_id, profile.limits, profile=profile.name, actor=actor or institution_id
        )
        if result.code is AccountResultCode.ACCOUNT_CLOSED:
            raise WalletClosed("the wallet is closed")
        if result.code is AccountResultCode.LIMIT_BELOW_BALANCE:
            raise LimitBelowBalance(f"the wallet holds more than tier {tier}'s balance cap; downgrade refused")
        return await self.get_wallet(institution_id, wallet_id)

    async def statement(
        self, institution_id: str, wallet_id: UUID, *, limit: int = 50, cursor: int | None = None
    ) -> Statement:
        await self._own_wallet_row(institution_id, wallet_id)
        page = await self.ledger.statement(wallet_id, limit=limit, before_seq=cursor)
        lines = [
            StatementLine(await view_of(self.ledger, line.transfer, institution_id), line.side, line.balances_after)
            for line in page.items
        ]
        return Statement(lines, page.next_cursor)

    # -- money -------------------------------------------------------------------------------

    async def deposit(
        self, institution_id: str, wallet_id: UUID, client_id: UUID, amount_minor: int
    ) -> TransferOutcome:
        """Cash in: the institution's funding account pays the wallet."""
        row = await self._own_wallet_row(institution_id, wallet_id)
        funding = await self._funding_account(institution_id, row.currency)
        origin = Origin(institution_id, client_id, "deposit")
        command = TransferCommand.posted(
            scoped_id(institution_id, client_id),
            funding,
            wallet_id,
            amount_minor,
            row.currency,
            user_data=origin.encode(),
        )
        return await self._submit_one(institution_id, command)

    async def withdraw(
        self, institution_id: str, wallet_id: UUID, client_id: UUID, amount_minor: int
    ) -> TransferOutcome:
        """Cash out: the wallet pays the institution's funding account."""
        row = await self._own_wallet_row(institution_id, wallet_id)
        funding = await self._funding_account(institution_id, row.currency)
        origin = Origin(institution_id, client_id, "withdrawal")
        command = TransferCommand.posted(
            scoped_id(institution_id, client_id),
            wallet_id,
            funding,
            amount_minor,
            row.currency,
            user_data=origin.encode(),
        )
        return await self._submit_one(institution_id, command)

    async def _funding_account(self, institution_id: str, currency: str) -> UUID:
        institution = await self.institutions.get(institution_id)
        account = institution.accounts.get((currency, AccountRole.FUNDING))
        if account is None:
            raise InvalidRequest(f"{institution_id} has no funding account in {currency}")
        return account

    async def transfer(self, institution_id: str, request: TransferRequest) -> TransferOutcome:
        """The source must be the caller's wallet (NotFound otherwise); the target any wallet."""
        command = await self._command(institution_id, request, linked=False)
        return await self._submit_one(institution_id, command)

    async def transfer_command(self, institution_id: str, request: TransferRequest) -> TransferCommand:
        """The ledger command of a transfer request of the caller's (checked as :meth:`transfer` does)."""
        return await self._command(institution_id, request, linked=False)

    async def outcome_of(self, institution_id: str, result) -> TransferOutcome:
        """A ledger result as the caller's outcome (its view of the transfer)."""
        return await self._outcome(institution_id, result)

    async def _command(self, institution_id: str, request: TransferRequest, *, linked: bool) -> TransferCommand:
        source = await self._own_wallet_row(institution_id, request.source_wallet_id)
        if await self._wallet_row(request.target_wallet_id) is None:
            raise NotFound(f"no wallet {request.target_wallet_id}")
        problem = metadata_problem(request.metadata)
        if problem is not None:
            raise InvalidRequest(problem)
        timeout_s = _hold_timeout(request, personal=source.owner_kind == OwnerKind.PERSON.value)
        ledger_id = scoped_id(institution_id, request.id)
        user_data = Origin(institution_id, request.id, "transfer", request.metadata).encode()
        if request.pending:
            return TransferCommand.pending(
                ledger_id, request.source_wallet_id, request.target_wallet_id, request.amount_minor, request.currency,
                timeout_s=timeout_s, linked=linked, user_data=user_data,
            )  # fmt: skip
        return TransferCommand.posted(
            ledger_id, request.source_wallet_id, request.target_wallet_id, request.amount_minor, request.currency,
            linked=linked, user_data=user_data,
        )  # fmt: skip

    async def transfer_batch(
        self, institution_id: str, requests: list[TransferRequest], *, atomic: bool
    ) -> list[TransferOutcome]:
        """Per-item results. ``atomic``: one linked chain, all or none. An item whose source is not
        the caller's wallet, or whose target is no wallet, is ``account_not_found`` (and fails an
        atomic batch whole) without saying whose it is."""
        if not 1 <= len(requests) <= TRANSFER_BATCH_MAX:
            raise InvalidRequest(f"a batch holds 1 to {TRANSFER_BATCH_MAX} transfers")
        await self._prefetch_wallet_rows(
            {wallet_id for request in requests for wallet_id in (request.source_wallet_id, request.target_wallet_id)}
        )
        commands: list[TransferCommand | None] = []
        for position, request in enumerate(requests):
            try:
                commands.append(
                    await self._command(institution_id, request, linked=atomic and position < len(requests) - 1)
                )
            except NotFound:
                commands.append(None)
        if atomic and None in commands:
            return [
                TransferOutcome(ResultCode.ACCOUNT_NOT_FOUND if c is None else ResultCode.LINKED_EVENT_FAILED)
                for c in commands
            ]
        ready = [c for c in commands if c is not None]
        results = iter(await self.batcher.submit_many(ready) if ready else [])
        outcomes = []
        for command in commands:
            outcomes.append(
                TransferOutcome(ResultCode.ACCOUNT_NOT_FOUND)
                if command is None
                else await self._outcome(institution_id, next(results))
            )
        return outcomes

    async def post_pending(self, institution_id: str, client_id: UUID, amount_minor: int | None) -> TransferOutcome:
        """Post all or part of the caller's hold. The post's id is the hold's id with the amount asked
        for: the same post again is a replay (a refusal included), while a post of another amount
        is judged afresh (e.g. ``pending_transfer_already_posted`` once one went through)."""
        return await self._submit_one(institution_id, await self.post_command(institution_id, client_id, amount_minor))

    async def post_command(self, institution_id: str, client_id: UUID, amount_minor: int | None) -> TransferCommand:
        """The ledger command posting the caller's hold (see :meth:`post_pending`)."""
        pending_id = await self._own_pending(institution_id, client_id)
        purpose = f"post:{'all' if amount_minor is None else amount_minor}"
        return TransferCommand.post(
            scoped_id(institution_id, client_id, purpose), pending_id, amount_minor,
            user_data=Origin(institution_id, client_id, "post").encode(),
        )  # fmt: skip

    async def void_pending(self, institution_id: str, client_id: UUID) -> TransferOutcome:
        pending_id = await self._own_pending(institution_id, client_id)
        command = TransferCommand.void(
            scoped_id(institution_id, client_id, "void"), pending_id,
            user_data=Origin(institution_id, client_id, "void").encode(),
        )  # fmt: skip
        return await self._submit_one(institution_id, command)

    async def _own_pending(self, institution_id: str, client_id: UUID) -> UUID:
        """The ledger id of the caller's pending transfer; a refused or unknown one is NotFound, so
        that the ledger never remembers a refusal of a post for a hold that never existed."""
        ledger_id = scoped_id(institution_id, client_id)
        if await self.ledger.get_transfer(ledger_id) is None:
            raise NotFound(f"no pending transfer {client_id}")
        return ledger_id

    async def get_transfer(self, institution_id: str, client_id: UUID) -> TransferOutcome:
        """The stored transfer (its current status) or the remembered refusal; NotFound otherwise."""
        ledger_id = scoped_id(institution_id, client_id)
        transfer = await self.ledger.get_transfer(ledger_id)
        if transfer is not None:
            return TransferOutcome(ResultCode.OK, await view_of(self.ledger, transfer, institution_id), True)
        refusal = await self.ledger.get_refusal(ledger_id)
        if refusal is not None:
            return TransferOutcome(refusal.code, None, True)
        raise NotFound(f"no transfer {client_id}")

    async def _submit_one(self, institution_id: str, command: TransferCommand) -> TransferOutcome:
        return await self._outcome(institution_id, await self.batcher.submit(command))

    async def _outcome(self, institution_id: str, result) -> TransferOutcome:
        if result.transfer is None or not result.ok:
            return TransferOutcome(result.code, None, result.replayed)
        return TransferOutcome(
            result.code, await view_of(self.ledger, result.transfer, institution_id), result.replayed
        )


@dataclass
class WalletOpening:
    """One wallet of ``open_wallets``: the wallet and whether this call created it, or the error
    ``open_wallet`` would have raised for it."""

    wallet: Wallet | None = None
    created: bool = False
    error: WalletError | None = None


class _RowView:
    """A wallet row just inserted, read as the row a SELECT would have answered."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None


def _wallet_row_values(institution_id: str, spec: WalletSpec, now_us: int) -> dict[str, Any]:
    return dict(
        id=spec.id, institution_id=institution_id, owner_kind=spec.owner_kind.value, owner_ref=spec.owner_ref,
        identity_hash=spec.identity_hash, currency=spec.currency, created_at_us=now_us,
        merchant_name=spec.merchant.name if spec.merchant else None,
        merchant_city=spec.merchant.city if spec.merchant else None,
        merchant_category_code=spec.merchant.category_code if spec.merchant else None,
    )  # fmt: skip


def _account_spec(spec: WalletSpec, profile: str) -> AccountSpec:
    if spec.id is None:
        raise ValueError("a wallet's account needs its id")
    return AccountSpec(
        spec.id, spec.currency, f"wallet:{spec.owner_kind.value}", owner_ref=spec.owner_ref,
        flags=_WALLET_FLAGS, limits=PROFILES[profile].limits, profile=profile,
    )  # fmt: skip


def _account_error(code: AccountResultCode, spec: WalletSpec) -> WalletError | None:
    """What opening a wallet answers for the ledger's result of opening its account."""
    if code is AccountResultCode.OK:
        return None
    if code is AccountResultCode.CURRENCY_NOT_FOUND:
        return InvalidRequest(f"unknown currency {spec.currency!r}")
    if code is AccountResultCode.INVALID_ACCOUNT:
        return InvalidRequest("owner_ref must be text of at most 128 characters without NUL")
    return Conflict("a wallet with this id exists with other fields")


def _wallet_of(row: Any, account: Account) -> Wallet:
    merchant = Merchant(row.merchant_name, row.merchant_city, row.merchant_category_code) if row.merchant_name else None
    return Wallet(
        id=row.id, institution_id=row.institution_id, owner_kind=OwnerKind(row.owner_kind),
        owner_ref=row.owner_ref, currency=row.currency, profile=account.profile or "merchant",
        tier=tier_of(account.profile), status=_STATUS[account.status], balances=account.balances,
        limits=account.limits, created_at_us=row.created_at_us, merchant=merchant,
        identity_hash=row.identity_hash,
    )  # fmt: skip


def _profile_for(spec: WalletSpec) -> str:
    if not isinstance(spec.owner_ref, str) or not spec.owner_ref or len(spec.owner_ref) > OWNER_REF_LENGTH_MAX:
        raise InvalidRequest(f"owner_ref must be text of 1 to {OWNER_REF_LENGTH_MAX} characters")
    if spec.identity_hash is not None and len(spec.identity_hash) > IDENTITY_HASH_LENGTH_MAX:
        raise InvalidRequest(f"identity_hash is at most {IDENTITY_HASH_LENGTH_MAX} characters")
    if spec.owner_kind is OwnerKind.MERCHANT:
        if spec.tier is not None or spec.limit_profile is not None:
            raise InvalidRequest("merchant wallets take no tier or limit_profile")
        if spec.merchant is None:
            raise InvalidRequest("a merchant wallet needs merchant {name, city, category_code}")
        return "merchant"
    if spec.merchant is not None:
        raise InvalidRequest("merchant details belong to merchant wallets")
    if spec.currency == "CNY":
        if spec.limit_profile is not None:
            raise InvalidRequest("CNY personal wallets take a tier (1-4), not a limit_profile")
        tier = ECNY_TIER_DEFAULT if spec.tier is None else spec.tier
        if tier not in ECNY_TIERS:
            raise InvalidRequest(f"tier must be one of {ECNY_TIERS}")
        return ecny_profile(tier).name
    if spec.tier is not None:
        raise InvalidRequest("only CNY (e-CNY) personal wallets take a tier")
    profile = spec.limit_profile or (HKD_PROFILE_DEFAULT if spec.currency == "HKD" else "merchant")
    if profile not in PROFILES or PROFILES[profile].currency not in (None, spec.currency):
        raise InvalidRequest(f"unknown limit_profile {profile!r} for {spec.currency}")
    return profile


def _hold_timeout(request: TransferRequest, *, personal: bool) -> int | None:
    if not request.pending:
        if request.timeout_s is not None:
            raise InvalidRequest("timeout_seconds applies to pending transfers only")
        return None
    if not personal:
        return request.timeout_s
    timeout_s = PERSONAL_HOLD_TIMEOUT_S_DEFAULT if request.timeout_s is None else request.timeout_s
    if not 1 <= timeout_s <= PERSONAL_HOLD_TIMEOUT_S_MAX:
        raise InvalidRequest(
            f"a hold on a personal wallet lasts 1 to {PERSONAL_HOLD_TIMEOUT_S_MAX} seconds "
            f"(default {PERSONAL_HOLD_TIMEOUT_S_DEFAULT}), so that it cannot stretch a daily cap across days"
        )
    return timeout_s


__all__ = ["TransferView", "WalletBook"]
