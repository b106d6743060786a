"""The ledger's vocabulary: accounts, transfer commands, stored transfers and their results.

Plain dataclasses with slots, no framework imports: the rule engine, the storage layer and the
upper layers all speak these. Amounts are ``int`` minor units; times are ``int`` microseconds since
the Unix epoch (UTC), which both databases store as BIGINT without any time-zone conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, IntFlag, StrEnum
from typing import Any
from uuid import UUID

from ledger.errors import AccountResultCode, ResultCode


class AccountFlags(IntFlag):
    """Balance rules, TigerBeetle style. At most one of the two may be set."""

    NONE = 0
    # A customer wallet: it can never spend more than was paid in (no overdraft).
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1
    # A debit-normal account that must never be credited past what was debited into it.
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2


class AccountStatus(IntEnum):
    OPEN = 0
    FROZEN = 1  # no transfer may debit or credit it until it is unfrozen
    CLOSED = 2  # final; only reachable with all four balances at zero


class TransferKind(IntEnum):
    POSTED = 1  # moves money at once
    PENDING = 2  # reserves money: debits_pending / credits_pending
    POST_PENDING = 3  # posts all or part of a pending transfer, releases the rest
    VOID_PENDING = 4  # releases a pending transfer
    EXPIRE_PENDING = 5  # written by the ledger when a pending transfer's timeout passes


TWO_PHASE_RESOLUTIONS = (TransferKind.POST_PENDING, TransferKind.VOID_PENDING, TransferKind.EXPIRE_PENDING)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-account caps in minor units; ``None`` means no cap.

    ``balance_cap_minor`` bounds credits minus debits, counting incoming pending credits.
    The next three bound money leaving the account (debits, pending or posted): per transfer, per
    calendar day and per calendar year, days and years counted in Asia/Shanghai time.
    ``debit_balance_cap_minor`` is the overdraft cap: debits (posted and pending) less posted
    credits may not pass it. On an institution's position account it is the net debit cap.
    """

    balance_cap_minor: int | None = None
    transfer_cap_minor: int | None = None
    daily_debit_cap_minor: int | None = None
    annual_debit_cap_minor: int | None = None
    debit_balance_cap_minor: int | None = None

    def problems(self) -> list[str]:
        return [
            f"{name} must be None or an integer from 0 to 2**63 - 1"
            for name in LIMIT_NAMES
            if (value := getattr(self, name)) is not None
            and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**63 - 1)
        ]


LIMIT_NAMES = (
    "balance_cap_minor", "transfer_cap_minor", "daily_debit_cap_minor", "annual_debit_cap_minor",
    "debit_balance_cap_minor",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """What a caller asks for when opening an account. The id is the caller's (UUIDv7 advised).
    ``profile`` is an opaque label of the limit profile an upper layer applied (sealed, never read)."""

    id: UUID
    currency: str
    kind: str
    owner_ref: str | None = None
    flags: AccountFlags = AccountFlags.NONE
    limits: Limits = field(default_factory=Limits)
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class Balances:
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0

    @property
    def posted_minor(self) -> int:
        """Credits minus debits posted: what a credit-normal account (a wallet) holds."""
        return self.credits_posted - self.debits_posted

    @property
    def available_minor(self) -> int:
        """Posted balance less outgoing holds: what a wallet can spend now."""
        return self.credits_posted - self.debits_posted - self.debits_pending


@dataclass(frozen=True, slots=True)
class Account:
    id: UUID
    currency: str
    kind: str
    owner_ref: str | None
    flags: AccountFlags
    status: AccountStatus
    limits: Limits
    balances: Balances
    debits_day_minor: int
    debits_year_minor: int
    created_at_us: int
    profile: str | None = None

    @property
    def settings(self) -> AccountSettings:
        return AccountSettings(
            self.currency, self.kind, self.owner_ref, self.profile, self.flags, self.status, self.limits
        )


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """Everything about an account that is not a balance: what its events seal."""

    currency: str
    kind: str
    owner_ref: str | None
    profile: str | None
    flags: AccountFlags
    status: AccountStatus
    limits: Limits

    def as_row(self) -> dict[str, object]:
        """The values of ``ledger.schema.ACCOUNT_SETTING_COLUMNS``, by name."""
        return dict(
            currency=self.currency, kind=self.kind, owner_ref=self.owner_ref, profile=self.profile,
            flags=int(self.flags), status=int(self.status),
            **{name: getattr(self.limits, name) for name in LIMIT_NAMES},
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: Any) -> AccountSettings:
        """From any row that has the setting columns by name (an account or an event)."""
        return cls(
            row.currency,
            row.kind,
            row.owner_ref,
            row.profile,
            AccountFlags(row.flags),
            AccountStatus(row.status),
            Limits(*(getattr(row, name) for name in LIMIT_NAMES)),
        )


class AccountEventKind(StrEnum):
    OPENED = "opened"
    STATUS = "status"  # frozen, unfrozen or closed
    LIMITS = "limits"  # limits and profile (an e-CNY category change is one)


@dataclass(frozen=True, slots=True)
class AccountEvent:
    """One sealed change of an account's settings: who, when, and the whole state after it.
    ``version`` counts an account's events from 1; the previous version holds the old state."""

    account_id: UUID
    version: int
    event: AccountEventKind
    actor: str | None
    at_us: int
    settings: AccountSettings
    block_sequence: int = 0

    def changes(self, previous: AccountEvent | None) -> dict[str, tuple[object, object]]:
        """Each setting this event changed, as (old, new); every setting for an opening."""
        old = None if previous is None else previous.settings.as_row()
        new = self.settings.as_row()
        return {name: (None if old is None else old[name], value) for name, value in new.items()
                if old is None or old[name] != value}  # fmt: skip


@dataclass(frozen=True, slots=True)
class AccountResult:
    code: AccountResultCode
    account: Account | None = None


@dataclass(frozen=True, slots=True)
class TransferCommand:
    """One transfer to apply. Build it with the class methods; ``id`` is the idempotency key.

    For ``POST_PENDING`` and ``VOID_PENDING`` the accounts and currency may be left ``None``: they
    are taken from the pending transfer, and must match it when given. ``amount_minor=None`` on a
    post means "the whole pending amount". ``linked=True`` chains this command to the next one:
    the chain succeeds or fails as a whole.

    ``replay_ends_chain=True`` on a chain's member: if its id is already stored with the same
    fields (a replay), the chain applies nothing after all: the member answers its replay and
    every other member ``linked_event_failed``. A composite operation keyed by that member (a
    payment by its quote) is then answered from what is stored, and a retry racing the original can
    never add legs of its own (in another settlement window, say). Not stored: it steers one run.
    """

    id: UUID
    kind: TransferKind
    debit_account_id: UUID | None = None
    credit_account_id: UUID | None = None
    amount_minor: int | None = None
    currency: str | None = None
    pending_id: UUID | None = None
    timeout_s: int | None = None
    linked: bool = False
    user_data: str | None = None
    replay_ends_chain: bool = False

    @classmethod
    def posted(
        cls,
        id: UUID,
        debit_account_id: UUID,
        credit_account_id: UUID,
        amount_minor: int,
        currency: str,
        *,
        linked: bool = False,
        user_data: str | None = None,
        replay_ends_chain: bool = False,
    ) -> TransferCommand:
        return cls(
            id,
            TransferKind.POSTED,
            debit_account_id,
            credit_account_id,
            amount_minor,
            currency,
            linked=linked,
            user_data=user_data,
            replay_ends_chain=replay_ends_chain,
        )

    @classmethod
    def pending(
        cls,
        id: UUID,
        debit_account_id: UUID,
        credit_account_id: UUID,
        amount_minor: int,
        currency: str,
        *,
        timeout_s: int | None = None,
        linked: bool = False,
        user_data: str | None = None,
    ) -> TransferCommand:
        return cls(
            id,
            TransferKind.PENDING,
            debit_account_id,
            credit_account_id,
            amount_minor,
            currency,
            timeout_s=timeout_s,
            linked=linked,
            user_data=user_data,
        )

    @classmethod
    def post(
        cls,
        id: UUID,
        pending_id: UUID,
        amount_minor: int | None = None,
        *,
        linked: bool = False,
        user_data: str | None = None,
    ) -> TransferCommand:
        return cls(
            id,
            TransferKind.POST_PENDING,
            amount_minor=amount_minor,
            pending_id=pending_id,
            linked=linked,
            user_data=user_data,
        )

    @classmethod
    def void(cls, id: UUID, pending_id: UUID, *, linked: bool = False, user_data: str | None = None) -> TransferCommand:
        return cls(id, TransferKind.VOID_PENDING, pending_id=pending_id, linked=linked, user_data=user_data)


@dataclass(slots=True)
class Transfer:
    """A stored, immutable transfer. ``seq`` is its place in the ledger's one global order.

    Its effect on balances: the debit account's ``debits_*`` and the credit account's
    ``credits_*`` change by ``posted_delta`` (posted) and ``pending_delta`` (pending).
    ``released_minor`` is the pending amount that a post, void or expiry released.
    """

    id: UUID
    kind: TransferKind
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int
    released_minor: int
    currency: str
    pending_id: UUID | None
    timeout_s: int | None
    expires_at_us: int | None
    linked: bool
    user_data: str | None
    created_at_us: int
    seq: int = 0

    @property
    def posted_delta(self) -> int:
        return self.amount_minor if self.kind in (TransferKind.POSTED, TransferKind.POST_PENDING) else 0

    @property
    def pending_delta(self) -> int:
        if self.kind is TransferKind.PENDING:
            return self.amount_minor
        return -self.released_minor


@dataclass(slots=True)
class Refusal:
    """A command refused for a business reason, remembered under its id with its fields as sent.
    It moved nothing. The same id with the same fields is answered with the same code, replayed."""

    id: UUID
    code: ResultCode
    kind: TransferKind
    debit_account_id: UUID | None
    credit_account_id: UUID | None
    amount_minor: int | None
    currency: str | None
    pending_id: UUID | None
    timeout_s: int | None
    linked: bool
    user_data: str | None
    created_at_us: int
    block_sequence: int = 0

    @classmethod
    def of(cls, command: TransferCommand, code: ResultCode, at_us: int) -> Refusal:
        return cls(
            command.id, code, command.kind, command.debit_account_id, command.credit_account_id,
            command.amount_minor, command.currency, command.pending_id, command.timeout_s, command.linked,
            command.user_data, at_us,
        )  # fmt: skip

    def same_command(self, command: TransferCommand) -> bool:
        """Whether ``command`` asks for exactly what the refused one did (a retry, not a reuse)."""
        return (
            command.kind is self.kind and command.debit_account_id == self.debit_account_id
            and command.credit_account_id == self.credit_account_id and command.amount_minor == self.amount_minor
            and command.currency == self.currency and command.pending_id == self.pending_id
            and command.timeout_s == self.timeout_s and command.linked == self.linked
            and command.user_data == self.user_data
        )  # fmt: skip


@dataclass(slots=True)
class TransferResult:
    """The outcome of one command. ``replayed`` is True when the id was already committed with
    identical fields: nothing moved again and ``transfer`` is the original; or when it was refused
    before, and the code is that refusal's (``transfer`` is then None)."""

    code: ResultCode
    transfer: Transfer | None = None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.code is ResultCode.OK
