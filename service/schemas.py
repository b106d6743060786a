"""Edge models: money fields, pages, problems, health answers, and the resources' request and
response bodies (institutions, wallets, transfers, the audit head, FX rates and quotes).

Pydantic checks syntax only (Cosmic Python: syntax at the edge, meaning in the service layer). An
amount here is text that *looks* like a positive decimal; whether it fits its currency (decimals,
zero, the maximum) is for ``ledger.money.parse_amount``, which turns it into integer minor units.
No float ever holds an amount: a JSON number is refused outright, even ``1.5``.
"""

from __future__ import annotations

import base64
import datetime
import re
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_serializer, model_validator
from pydantic_core import PydanticCustomError

from ledger.money import Currency, parse_amount

# Digits with an optional fraction: no sign, no exponent, no spaces, not empty.
AMOUNT_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
# Longer text is refused before any digit is read (as parse_amount does); generous for any amount.
AMOUNT_TEXT_LENGTH_MAX = 64
_AMOUNT_TEXT = re.compile(AMOUNT_PATTERN)


def _amount_text(value: object) -> object:
    """Refuse anything but a plain decimal string, with the error type ``invalid_amount`` so that
    the problem's code says what is wrong (see ``problems.validation_problem``)."""
    if not isinstance(value, str):
        raise PydanticCustomError(
            "invalid_amount",
            'an amount is a decimal string such as "128.50", not a JSON {kind}',
            {"kind": _json_kind(value)},
        )
    if len(value) > AMOUNT_TEXT_LENGTH_MAX:
        raise PydanticCustomError(
            "invalid_amount", "an amount has at most {limit} characters", {"limit": AMOUNT_TEXT_LENGTH_MAX}
        )
    if not _AMOUNT_TEXT.fullmatch(value):
        raise PydanticCustomError(
            "invalid_amount",
            'an amount is digits with an optional fraction such as "128.50": no sign, exponent or spaces',
        )
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return "array" if isinstance(value, list) else "object"


# The validator comes last so that it wraps the constrained string and runs first; the Field's
# pattern then still lands in the JSON schema (placed after the validator, pydantic drops it).
AmountStr = Annotated[
    str,
    Field(
        pattern=AMOUNT_PATTERN,
        max_length=AMOUNT_TEXT_LENGTH_MAX,
        examples=["128.50"],
        description="A positive decimal string with at most the currency's decimals; never a JSON number.",
    ),
    BeforeValidator(_amount_text),
]

CurrencyCode = Annotated[
    str,
    Field(pattern=r"^[A-Z]{3}$", examples=["CNY", "HKD"], description="ISO 4217 code, three capital letters."),
]


class RequestModel(BaseModel):
    """Base of request bodies: strict types (no ``"1"`` for ``1``; JSON strings still give UUIDs and
    datetimes) and unknown fields refused, so a misspelt ``ammount`` is an error, not ignored."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ResponseModel(BaseModel):
    """Base of response bodies."""

    model_config = ConfigDict(frozen=True)


class Money(RequestModel):
    """An amount beside its currency, as in ``net_debit_cap``."""

    amount: AmountStr
    currency: CurrencyCode

    def minor_units(self, currency: Currency) -> int:
        """The amount in integer minor units of ``currency`` (which the caller looked up for
        ``self.currency``); raises ``InvalidAmount`` for too many decimals, zero or too much."""
        if currency.code != self.currency:
            raise ValueError(f"looked up {currency.code} for an amount in {self.currency}")
        return parse_amount(self.amount, currency)


ItemT = TypeVar("ItemT")

PAGE_LIMIT_DEFAULT = 50
PAGE_LIMIT_MAX = 500


class Page(ResponseModel, Generic[ItemT]):
    """One page of a list; ``next_cursor`` is null on the last page."""

    items: list[ItemT]
    next_cursor: str | None = None


class FieldProblem(ResponseModel):
    pointer: str = Field(description="JSON Pointer (RFC 6901) into the request body, as a URI fragment: '#/amount'.")
    detail: str


class Problem(ResponseModel):
    """RFC 9457 problem details. Match on ``code``; ``detail`` is for people."""

    type: str = Field(examples=["urn:sz-hk-ledger:problem:invalid_amount"])
    title: str
    status: int
    detail: str
    code: str = Field(examples=["invalid_amount"])
    errors: list[FieldProblem] | None = Field(default=None, description="Field problems of a validation failure.")
    request_id: str | None = Field(default=None, description="The X-Request-Id of the request, to quote to support.")


class HealthStatus(ResponseModel):
    status: Literal["ok"] = "ok"


class ReadinessStatus(ResponseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, str] = Field(examples=[{"database": "ok", "batcher": "ok"}])


# -- resources: shared pieces ------------------------------------------------------------------

PUBLIC_KEY_BYTES = 32
# Opaque texts an institution chooses: bounded so no one stores a novel in the ledger.
OWNER_REF_LENGTH_MAX = 128
NAME_LENGTH_MAX = 200
# A pending transfer's timeout: at most 30 days (a hold longer than that is not a payment).
PENDING_TIMEOUT_S_MAX = 30 * 86_400
TRANSFER_BATCH_SIZE_MAX = 1000
WALLET_BATCH_SIZE_MAX = 1000  # the wallets layer's WALLET_BATCH_MAX
METADATA_TEXT_LENGTH_MAX = 512  # as compact JSON; the wallets layer keeps it with the transfer


def _public_key_text(value: object) -> object:
    """Base64 (standard alphabet, padded) of a 32-byte Ed25519 public key that is a valid point."""
    if not isinstance(value, str):
        return value  # the str type refuses it with its own message
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeError):
        raise PydanticCustomError("public_key", "a public key is standard base64 (with padding)") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise PydanticCustomError(
            "public_key", "a public key is {size} bytes, this is {got}", {"size": PUBLIC_KEY_BYTES, "got": len(raw)}
        )
    try:
        VerifyKey(raw)
    except (CryptoError, ValueError):
        raise PydanticCustomError("public_key", "this is not an Ed25519 public key") from None
    return value


PublicKeyStr = Annotated[
    str,
    Field(
        min_length=44,
        max_length=44,
        examples=["11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="],
        description="Base64 (standard alphabet, padded) of a 32-byte Ed25519 public key.",
    ),
    AfterValidator(_public_key_text),
]

InstitutionId = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$",
        examples=["hk-alphapay"],
        description="A slug: lowercase letters, digits and inner hyphens, at most 64 characters. Also the key id.",
    ),
]

OptionalAmountStr = Annotated[
    str | None,
    Field(description="A decimal string with the currency's decimals, or null for no cap.", examples=["10000.00"]),
]


class KeyChange(RequestModel):
    """An institution key to add or retire."""

    public_key: PublicKeyStr


# -- institutions ------------------------------------------------------------------------------


class InstitutionCreate(RequestModel):
    id: InstitutionId
    name: str = Field(min_length=1, max_length=NAME_LENGTH_MAX)
    kind: Literal["hk_payment_institution", "sz_acquirer", "settlement_bank", "operator"]
    public_key: PublicKeyStr
    net_debit_cap: Money | None = Field(
        default=None, description="The cap on the institution's net debit position in settlement."
    )


class InstitutionKeyOut(ResponseModel):
    public_key: str = Field(description="Base64 of the 32-byte Ed25519 public key.")
    active: bool
    added_at: datetime.datetime
    retired_at: datetime.datetime | None = None


class MoneyOut(ResponseModel):
    amount: str = Field(description="A decimal string with the currency's decimals.")
    currency: str


class InstitutionOut(ResponseModel):
    """An institution and its signing keys (its key id is its id)."""

    id: str
    name: str
    kind: str
    keys: list[InstitutionKeyOut]
    created_at: datetime.datetime
    net_debit_cap: MoneyOut | None = Field(
        default=None, description="As registered; settlement refuses payments that would pass it."
    )


# -- wallets -----------------------------------------------------------------------------------


class MerchantIn(RequestModel):
    name: str = Field(min_length=1, max_length=NAME_LENGTH_MAX)
    city: str = Field(min_length=1, max_length=NAME_LENGTH_MAX)
    category_code: str = Field(pattern=r"^[0-9]{4}$", description="ISO 18245 merchant category code.")


class MerchantOut(ResponseModel):
    name: str
    city: str
    category_code: str


class WalletCreate(RequestModel):
    id: UUID | None = Field(default=None, description="The wallet's id (UUIDv7 recommended); made up when absent.")
    owner_ref: str = Field(min_length=1, max_length=OWNER_REF_LENGTH_MAX, description="The institution's opaque ref.")
    owner_kind: Literal["person", "merchant"]
    currency: CurrencyCode
    tier: int | None = Field(default=None, ge=1, le=4, description="e-CNY category of a CNY personal wallet.")
    limit_profile: str | None = Field(
        default=None, min_length=1, max_length=64, description="Limit profile of an HKD personal wallet."
    )
    merchant: MerchantIn | None = None
    identity_hash: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The institution's salted hash of the owner's identity, to match per-person quotas.",
    )


class WalletBatchCreate(RequestModel):
    wallets: list[WalletCreate] = Field(
        min_length=1, max_length=WALLET_BATCH_SIZE_MAX, description="Each as `POST /v1/wallets` takes it."
    )


class TierChange(RequestModel):
    tier: int = Field(ge=1, le=4)


class CashMovement(RequestModel):
    """A deposit or withdrawal between the wallet and its institution's funding account, in the
    wallet's currency. ``id`` is the idempotency key, as for transfers."""

    id: UUID
    amount: AmountStr


class BalanceOut(ResponseModel):
    """Decimal strings in the wallet's currency. ``posted``: credits less debits posted;
    ``available``: posted less outgoing holds (what can be spent); ``pending``: incoming less
    outgoing holds; ``pending_debits``/``pending_credits``: the holds each way."""

    available: str
    pending: str
    posted: str
    pending_debits: str
    pending_credits: str


class LimitsOut(ResponseModel):
    """The wallet's caps as decimal strings (null: no cap)."""

    profile: str
    balance_cap: OptionalAmountStr = None
    transfer_cap: OptionalAmountStr = None
    daily_debit_cap: OptionalAmountStr = None
    annual_debit_cap: OptionalAmountStr = None


class WalletOut(ResponseModel):
    """A wallet as its institution sees it."""

    id: UUID
    institution_id: str
    owner_kind: str
    owner_ref: str
    currency: str
    tier: int | None
    limit_profile: str
    status: Literal["open", "frozen", "closed"]
    balance: BalanceOut
    limits: LimitsOut
    merchant: MerchantOut | None = None
    created_at: datetime.datetime


# -- transfers ---------------------------------------------------------------------------------


class TransferCreate(RequestModel):
    id: UUID = Field(description="The caller's id for this transfer (UUIDv7 recommended): the idempotency key.")
    source_wallet_id: UUID
    target_wallet_id: UUID
    amount: AmountStr
    currency: CurrencyCode
    pending: bool = Field(default=False, description="Hold the amount until posted or voided.")
    timeout_seconds: int | None = Field(
        default=None, ge=1, le=PENDING_TIMEOUT_S_MAX, description="A pending transfer's timeout; voided after it."
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description=f"The caller's own JSON object, at most {METADATA_TEXT_LENGTH_MAX} characters as compact JSON.",
    )


class TransferPostRequest(RequestModel):
    amount: AmountStr | None = Field(default=None, description="Post part of the hold; the whole hold when absent.")


class TransferOut(ResponseModel):
    """A transfer as the calling institution sees it. ``id`` is the caller's own id when the
    caller made it, else the ledger's (another institution's id is never shown)."""

    id: UUID
    kind: str = Field(examples=["transfer", "deposit", "withdrawal", "post", "void", "expiry"])
    status: str = Field(examples=["posted", "pending", "posted_from_pending", "voided", "expired"])
    source_wallet_id: UUID
    target_wallet_id: UUID
    amount: str
    currency: str
    created_at: datetime.datetime
    pending_id: UUID | None = None
    timeout_seconds: int | None = None
    expires_at: datetime.datetime | None = None
    metadata: dict[str, Any] | None = None


class StatementLineOut(TransferOut):
    """A transfer on a wallet's statement and the wallet's balances right after it."""

    side: Literal["debit", "credit"] = Field(description="debit: money left the wallet; credit: it came in.")
    balance_after: BalanceOut


class TransferBatchCreate(RequestModel):
    transfers: list[TransferCreate] = Field(min_length=1, max_length=TRANSFER_BATCH_SIZE_MAX)
    atomic: bool = Field(default=False, description="All or none: one refusal refuses every transfer.")


class TransferBatchItem(ResponseModel):
    """One transfer's result: ``status`` is what ``POST /v1/transfers`` would have answered for it,
    with ``transfer`` on success or ``problem`` on refusal."""

    id: UUID
    status: int = Field(examples=[201, 200, 422])
    replayed: bool = False
    transfer: TransferOut | None = None
    problem: Problem | None = None


class TransferBatchOut(ResponseModel):
    atomic: bool
    items: list[TransferBatchItem]


class WalletBatchItem(ResponseModel):
    """One wallet's result: ``status`` is what ``POST /v1/wallets`` would have answered for it,
    with ``wallet`` on success or ``problem`` on refusal."""

    id: UUID | None = Field(description="The wallet's id: the one asked for, or the one made up.")
    status: int = Field(examples=[201, 200, 409])
    replayed: bool = False
    wallet: WalletOut | None = None
    problem: Problem | None = None


class WalletBatchOut(ResponseModel):
    items: list[WalletBatchItem]


class CallerOut(ResponseModel):
    """Who signed the request, as the server verified it."""

    institution_id: str = Field(description="The key id of the signature: the signing institution.")
    signed_at: datetime.datetime | None = Field(default=None, description="The signature's `created` parameter.")
    covered_components: list[str] = Field(default_factory=list, examples=[["@method", "@path"]])


# -- audit -------------------------------------------------------------------------------------


class AuditHeadOut(ResponseModel):
    """The newest sealed block of the journal's hash chain and the key that signs the chain."""

    sequence: int = Field(description="The newest block's sequence number; 0 before the first block.")
    hash: str | None = Field(description="The block's SHA-256 hash, lowercase hex (64 characters); null before any.")
    signature: str | None = Field(description="The ledger's Ed25519 signature of the block, base64; null before any.")
    public_key: str = Field(description="The ledger's Ed25519 public key, base64 of 32 bytes.")
    created_at: datetime.datetime | None = Field(default=None, description="When the block was sealed.")


# -- settlement --------------------------------------------------------------------------------


class LiquidityCreate(RequestModel):
    """Prefunded settlement liquidity: moves from the institution's funding account into its
    settlement account. ``id`` makes it idempotent."""

    id: UUID
    amount: AmountStr
    currency: CurrencyCode


class CapPolicy(RequestModel):
    """Whether the institution's net debit cap may exceed its prefunded liquidity (default: no)."""

    beyond_liquidity: bool


class PositionOut(ResponseModel):
    """An institution's standing in settlement, in the settlement currency."""

    institution_id: str
    currency: str
    liquidity: str = Field(description="Prefunded money in its settlement account.")
    net_debit_cap: str | None = Field(description="As registered; null for none.")
    beyond_liquidity: bool
    cap_in_force: str | None = Field(description="The registered cap bounded by liquidity (unless allowed beyond).")
    open_window_id: int
    open_window_net: str = Field(description="Its net in the open window: negative owes, positive is owed.")
    unsettled_debit: str = Field(description="What it owes from windows closed and not yet settled.")


class LiquidityOut(ResponseModel):
    id: UUID
    institution_id: str
    amount: str
    currency: str
    created_at: datetime.datetime
    position: PositionOut


class StatusChangeOut(ResponseModel):
    status: str
    at: str
    actor: str | None


class WindowOut(ResponseModel):
    """A settlement window. Its batch (once closed) has the same id."""

    id: int
    status: Literal["open", "closed", "settling", "settled", "unwound", "failed"]
    opened_at: str
    closed_at: str | None
    history: list[StatusChangeOut]


class BatchTotalOut(ResponseModel):
    currency: str
    gross: str
    net: str
    liquidity_saved: str
    liquidity_saving_ratio: str = Field(examples=["0.6250"], description="saved ÷ gross, four places.")


class BatchPositionOut(ResponseModel):
    institution_id: str
    currency: str
    net_amount: str
    direction: Literal["pay", "receive"]


class ObligationOut(ResponseModel):
    debtor: str
    creditor: str
    currency: str
    amount: str


class InstructionOut(ResponseModel):
    payer: str
    payee: str
    currency: str
    amount: str


class ExclusionOut(ResponseModel):
    institution_id: str
    currency: str
    net_debit: str
    liquidity: str


class BatchOut(ResponseModel):
    """A settlement batch, signed: ``signature`` is base64 of the ledger's Ed25519 signature over the
    canonical JSON of every other field (sorted keys, no spaces, UTF-8); the key is
    ``GET /v1/audit/head``'s ``public_key``."""

    id: int
    window_id: int
    status: Literal["closed", "settling", "settled", "unwound", "failed"]
    opened_at: str
    closed_at: str | None
    settlement_bank_id: str
    totals: list[BatchTotalOut]
    positions: list[BatchPositionOut]
    bilateral: list[ObligationOut]
    instructions: list[InstructionOut]
    exclusions: list[ExclusionOut]
    carried_in: list[ObligationOut]
    carried_out: list[ObligationOut]
    history: list[StatusChangeOut]
    signature: str


# -- FX rates and quotes -----------------------------------------------------------------------

# Generous for any rate (a mid rate has at most 28 places and is at most 1,000,000).
RATE_TEXT_LENGTH_MAX = 40
SPREAD_BPS_MAX = 10_000

RateStr = Annotated[
    str,
    Field(
        pattern=AMOUNT_PATTERN,
        max_length=RATE_TEXT_LENGTH_MAX,
        examples=["0.9234"],
        description="Target currency per one unit of source currency, as a positive decimal string; never a "
        "JSON number.",
    ),
]


class FxRateCreate(RequestModel):
    """The rate that quotes of the pair use from now on."""

    source_currency: CurrencyCode
    target_currency: CurrencyCode
    mid_rate: RateStr
    spread_bps: int = Field(
        ge=0, le=SPREAD_BPS_MAX, description="The institution's spread in basis points, taken off the mid rate."
    )


class FxRateOut(ResponseModel):
    """A rate as an operator set it, and the customer rate quotes get from it."""

    id: int = Field(description="Increases with every rate set; the newest of a pair is its current rate.")
    source_currency: str
    target_currency: str
    mid_rate: str = Field(examples=["0.9234"])
    spread_bps: int
    customer_rate: str = Field(
        examples=["0.9187830000"],
        description="mid_rate × (1 − spread_bps / 10,000), rounded down to 10 decimal places: the rate quotes show.",
    )
    set_at: datetime.datetime
    set_by: str = Field(description="The operator that set it.")


class FxQuoteCreate(RequestModel):
    """Give exactly one amount: ``target_amount`` (the merchant's price, paid exactly) or
    ``source_amount`` (what the payer spends)."""

    source_currency: CurrencyCode
    target_currency: CurrencyCode
    source_amount: AmountStr | None = Field(default=None, description="In the source currency; or target_amount.")
    target_amount: AmountStr | None = Field(default=None, description="In the target currency; or source_amount.")

    @model_validator(mode="after")
    def _exactly_one_amount(self) -> FxQuoteCreate:
        if (self.source_amount is None) == (self.target_amount is None):
            raise ValueError("give exactly one of source_amount and target_amount")
        return self


def _canonical_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FxQuoteOut(ResponseModel):
    """A quote the ledger signed. ``signature`` is base64 of the ledger's Ed25519 signature over the
    quote's canonical JSON: the eight fields below other than ``signature``, with sorted keys, no
    spaces, ASCII, exactly as answered here (times with microseconds and ``Z``). The ledger's public
    key is ``GET /v1/audit/head``'s ``public_key``."""

    id: UUID
    source_currency: str
    target_currency: str
    rate: str = Field(examples=["0.9187830000"], description="The customer rate, on a fixed 10-place scale.")
    source_amount: str = Field(examples=["139.86"])
    target_amount: str = Field(examples=["128.50"])
    created_at: datetime.datetime
    expires_at: datetime.datetime = Field(description="Usable until just before this instant.")
    signature: str

    @field_serializer("created_at", "expires_at")
    def _times_as_signed(self, moment: datetime.datetime) -> str:
        return _canonical_time(moment)


# -- cross-border payments -----------------------------------------------------------------------


class PaymentCreate(RequestModel):
    """Pay a Shenzhen merchant from a Hong Kong wallet at a quote's rate: ``amount`` and ``currency``
    are the quote's target (CNY), ``quote_id`` a quote issued to the caller, unexpired and unused."""

    id: UUID
    payer_wallet_id: UUID
    merchant_wallet_id: UUID
    amount: AmountStr
    currency: CurrencyCode
    quote_id: UUID


class PaymentOut(ResponseModel):
    id: UUID
    status: Literal["completed", "partially_refunded", "refunded"]
    payer_wallet_id: UUID
    merchant_wallet_id: UUID
    source_amount: str
    source_currency: str
    target_amount: str
    target_currency: str
    amount: str = Field(description="The merchant's price: the target amount.")
    currency: str
    rate: str
    quote_id: UUID
    refunded_amount: str = Field(description="CNY refunded so far.")
    settlement_window_id: int
    created_at: datetime.datetime


class RefundCreate(RequestModel):
    """Refund a payment, in whole (no ``amount``: what remains) or in part (CNY)."""

    id: UUID
    amount: AmountStr | None = None


class RefundOut(ResponseModel):
    id: UUID
    payment_id: UUID
    amount: str = Field(description="CNY taken back from the merchant.")
    currency: str
    source_amount: str = Field(description="HKD given back to the customer, at the payment's rate.")
    source_currency: str
    settlement_window_id: int
    created_at: datetime.datetime
