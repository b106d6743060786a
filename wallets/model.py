"""The wallets layer's vocabulary: institutions and their keys, wallets, transfer requests as an
institution sends them and transfers as it sees them. Plain dataclasses; amounts in minor units."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from uuid import UUID

from ledger import Balances, Limits, ResultCode


class InstitutionKind(StrEnum):
    HK_PAYMENT_INSTITUTION = "hk_payment_institution"
    SZ_ACQUIRER = "sz_acquirer"
    SETTLEMENT_BANK = "settlement_bank"
    OPERATOR = "operator"


class OwnerKind(StrEnum):
    PERSON = "person"
    MERCHANT = "merchant"


class WalletStatus(StrEnum):
    OPEN = "open"
    FROZEN = "frozen"
    CLOSED = "closed"


class AccountRole(StrEnum):
    """An institution's system accounts, one per role and currency."""

    FUNDING = "funding"  # money outside the ledger (its bank account, e-CNY issued to it): may run negative
    SETTLEMENT = "settlement"  # prefunded settlement liquidity at the settlement bank
    FEES = "fees"


@dataclass(frozen=True, slots=True)
class InstitutionKey:
    public_key: bytes  # raw 32-byte Ed25519 public key
    active: bool
    added_at_us: int
    retired_at_us: int | None = None


@dataclass(frozen=True, slots=True)
class Institution:
    id: str  # a slug, e.g. "hk-alphapay"; also the key id of its signatures
    kind: InstitutionKind
    name: str
    created_at_us: int
    keys: tuple[InstitutionKey, ...] = ()
    # (currency, role) -> the ledger account
    accounts: dict[tuple[str, AccountRole], UUID] = field(default_factory=dict)
    # (amount_minor, currency): the cap on its net debit position in settlement, as registered.
    net_debit_cap: tuple[int, str] | None = None

    @property
    def active_keys(self) -> list[bytes]:
        return [key.public_key for key in self.keys if key.active]


@dataclass(frozen=True, slots=True)
class WalletOwner:
    """Who holds a wallet, for a layer that must find another institution's payee (settlement)."""

    wallet_id: UUID
    institution_id: str
    owner_kind: OwnerKind
    currency: str


@dataclass(frozen=True, slots=True)
class Merchant:
    name: str
    city: str
    category_code: str  # ISO 18245 merchant category code, four digits


@dataclass(frozen=True, slots=True)
class WalletSpec:
    """What an institution asks for when opening a wallet. ``tier`` is for e-CNY (CNY) personal
    wallets (1-4, default 4); ``limit_profile`` for HKD personal wallets (default ``svf-basic``)."""

    owner_ref: str
    owner_kind: OwnerKind
    currency: str
    id: UUID | None = None
    tier: int | None = None
    limit_profile: str | None = None
    merchant: Merchant | None = None
    identity_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Wallet:
    id: UUID  # also the ledger account's id
    institution_id: str
    owner_kind: OwnerKind
    owner_ref: str
    currency: str
    profile: str  # the limit profile's name: "ecny-4", "svf-basic", "merchant", …
    tier: int | None
    status: WalletStatus
    balances: Balances
    limits: Limits
    created_at_us: int
    merchant: Merchant | None = None
    identity_hash: str | None = None


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A transfer as an institution sends it; ``id`` is the institution's own (scoped to it)."""

    id: UUID
    source_wallet_id: UUID
    target_wallet_id: UUID
    amount_minor: int
    currency: str
    pending: bool = False
    timeout_s: int | None = None
    metadata: dict[str, Any] | None = None


class TransferStatus(StrEnum):
    POSTED = "posted"
    PENDING = "pending"
    # A pending transfer's later state, as read back:
    POSTED_FROM_PENDING = "posted_from_pending"
    VOIDED = "voided"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class TransferView:
    """A transfer as the calling institution may see it. ``id`` is the caller's own id when the
    caller made it, else the ledger's id (another institution's id is never shown)."""

    id: UUID
    kind: str  # "transfer", "deposit", "withdrawal", "post", "void", "expiry"
    status: TransferStatus
    source_wallet_id: UUID
    target_wallet_id: UUID
    amount_minor: int
    currency: str
    created_at_us: int
    pending_id: UUID | None = None
    timeout_s: int | None = None
    expires_at_us: int | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """The ledger's answer to one request: ``code`` ok or a refusal; ``replayed`` when the id was
    answered before (the same answer, a refusal included)."""

    code: ResultCode
    transfer: TransferView | None = None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.code is ResultCode.OK


@dataclass(frozen=True, slots=True)
class StatementLine:
    transfer: TransferView
    side: str  # "debit" (money left the wallet) or "credit"
    balances_after: Balances


@dataclass(frozen=True, slots=True)
class Statement:
    items: list[StatementLine]
    next_cursor: int | None
