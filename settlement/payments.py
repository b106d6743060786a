"""Cross-border payments: a Hong Kong wallet pays a Shenzhen merchant at a quoted rate.

One linked chain through the batcher, all or nothing:

1. the payer's HKD wallet pays the quote's source amount to its institution's HKD funding account
   (the institution is the FX provider); this leg's id derives from the quote, so a quote pays at
   most once (a second payment under it meets the id taken: ``quote_already_used``);
2. the payer institution's position account in the open window pays the acquirer's the CNY amount:
   the obligation, checked against the payer's net debit cap by the ledger under lock;
3. the acquirer's CNY funding account credits the merchant's wallet the exact CNY price.

A close racing the payment locks the window's positions; the chain is then refused at leg 2 and
run again in the new window, so a payment lands in exactly one window. Leg ids derive from the
institution's payment id (and the window, for leg 2), so a retry of the same request is a replay.
A quote is spent by the first payment that names it, whatever that payment's answer: its leg 1 id is
then taken (a refused payment's included, as the ledger remembers refusals); quotes live 60 s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from ledger import Batcher, Ledger, ResultCode, TransferCommand, TransferResult
from settlement.liquidity import LiquidityDesk
from settlement.remembered import RefusalMemory, request_digest
from settlement.windows import SETTLEMENT_CURRENCY, Window, WindowClosed
from wallets.errors import InvalidRequest, NotFound
from wallets.ids import Origin, scoped_id
from wallets.model import AccountRole, InstitutionKind, OwnerKind
from wallets.service import WalletBook

# A payment meeting a window's close is run again in the new window at most this often.
CLOSE_RACE_ATTEMPTS_MAX = 3
SOURCE_CURRENCY = "HKD"


class UsableQuote(Protocol):
    source_currency: str
    target_currency: str
    rate: Decimal
    source_minor: int
    target_minor: int


QuoteLookup = Callable[[str, UUID, int], Awaitable[UsableQuote]]


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    id: UUID  # the payer institution's own id
    payer_wallet_id: UUID
    merchant_wallet_id: UUID
    amount_minor: int  # the merchant's CNY price
    currency: str
    quote_id: UUID


@dataclass(frozen=True, slots=True)
class Payment:
    id: UUID
    payer_wallet_id: UUID
    merchant_wallet_id: UUID
    source_minor: int
    source_currency: str
    target_minor: int
    target_currency: str
    rate: str
    quote_id: UUID
    settlement_window_id: int
    created_at_us: int


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    """``code`` is ``ok``, a ledger result code, or ``quote_already_used`` / ``net_debit_cap_exceeded``."""

    code: str
    payment: Payment | None = None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.code == ResultCode.OK.value


class PaymentDesk:
    def __init__(
        self,
        ledger: Ledger,
        batcher: Batcher,
        wallets: WalletBook,
        liquidity: LiquidityDesk,
        quotes: QuoteLookup,
    ) -> None:
        self.ledger = ledger
        self.batcher = batcher
        self.wallets = wallets
        self.liquidity = liquidity
        self.windows = liquidity.windows
        self.quotes = quotes
        self.refusals = RefusalMemory(ledger, "payment", ledger.clock)

    async def pay(self, institution_id: str, request: PaymentRequest) -> PaymentOutcome:
        stored = await self.get(institution_id, request.id, missing_ok=True)
        if stored is not None:
            same = (stored.payer_wallet_id, stored.merchant_wallet_id, stored.target_minor, stored.quote_id) == (
                request.payer_wallet_id, request.merchant_wallet_id, request.amount_minor, request.quote_id,
            )  # fmt: skip
            return PaymentOutcome(
                "ok" if same else ResultCode.EXISTS_WITH_DIFFERENT_FIELDS.value, stored if same else None, True
            )
        fields = (request.payer_wallet_id, request.merchant_wallet_id, request.amount_minor, request.currency)
        digest = request_digest(*fields, request.quote_id)
        return await self.refusals.once(
            institution_id, request.id, digest,
            lambda: self._pay_new(institution_id, request), lambda code: PaymentOutcome(code, None, True),
        )  # fmt: skip

    async def _pay_new(self, institution_id: str, request: PaymentRequest) -> PaymentOutcome:
        parties = await self._parties(institution_id, request.payer_wallet_id, request.merchant_wallet_id)
        quote = await self.quotes(institution_id, request.quote_id, self.ledger.clock())
        _check_quote(quote, request)
        for _ in range(CLOSE_RACE_ATTEMPTS_MAX):
            window = await self.windows.open_window_for_money()
            try:
                outcome = await self._pay_in(window, institution_id, request, quote, parties)
            except WindowClosed:
                continue
            if outcome is not None:
                return outcome
        raise RuntimeError("the settlement window kept closing under this payment")

    async def parties_of(self, institution_id: str, payment: Payment) -> Parties:
        """Who a payment of the caller's moves money between (for its refunds)."""
        return await self._parties(institution_id, payment.payer_wallet_id, payment.merchant_wallet_id)

    async def _parties(self, institution_id: str, payer_wallet_id: UUID, merchant_wallet_id: UUID) -> Parties:
        payer_wallet = await self.wallets.get_wallet(institution_id, payer_wallet_id)
        if payer_wallet.currency != SOURCE_CURRENCY or payer_wallet.owner_kind is not OwnerKind.PERSON:
            raise InvalidRequest("the payer wallet is a personal HKD wallet of the caller")
        merchant = await self.wallets.wallet_owner(merchant_wallet_id)
        if (
            merchant is None
            or merchant.owner_kind is not OwnerKind.MERCHANT
            or merchant.currency != SETTLEMENT_CURRENCY
        ):
            raise NotFound(f"no merchant wallet {merchant_wallet_id}")
        acquirer = await self.liquidity.institution(merchant.institution_id)
        if acquirer.kind is not InstitutionKind.SZ_ACQUIRER:
            raise NotFound(f"no merchant wallet {merchant_wallet_id}")
        payer = await self.liquidity.institution(institution_id)
        return Parties(
            payer_id=institution_id,
            payer_fx_account=payer.accounts[(SOURCE_CURRENCY, AccountRole.FUNDING)],
            acquirer_id=acquirer.id,
            acquirer_funding=acquirer.accounts[(SETTLEMENT_CURRENCY, AccountRole.FUNDING)],
        )

    async def _pay_in(
        self, window: Window, institution_id: str, request: PaymentRequest, quote: UsableQuote, parties: Parties
    ) -> PaymentOutcome | None:
        payer_position = await self.liquidity.position(window, parties.payer_id, actor=institution_id)
        acquirer_position = await self.liquidity.position(window, parties.acquirer_id, actor=institution_id)
        chain = _chain(institution_id, request, quote, window.id, parties, payer_position, acquirer_position)
        results = await self.batcher.submit_many(chain)
        return await self._outcome(institution_id, request, window.id, results)

    async def _outcome(
        self, institution_id: str, request: PaymentRequest, window_id: int, results: list[TransferResult]
    ) -> PaymentOutcome | None:
        fx, obligation, _credit = results
        if all(r.ok for r in results):
            payment = await self.get(institution_id, request.id)
            return PaymentOutcome("ok", payment, all(r.replayed for r in results))
        if fx.ok and fx.replayed:  # this very payment committed meanwhile (a retry racing it): its answer
            return PaymentOutcome("ok", await self.get(institution_id, request.id), True)
        if fx.code is ResultCode.EXISTS_WITH_DIFFERENT_FIELDS:
            return PaymentOutcome("quote_already_used")
        if obligation.code is ResultCode.DEBIT_BALANCE_CAP_EXCEEDED:
            current = await self.windows.get(window_id)
            if current is not None and current.status != "open":
                return None  # the window closed under us: run again in the new one
            return PaymentOutcome("net_debit_cap_exceeded")
        failed = next(r for r in results if r.code is not ResultCode.LINKED_EVENT_FAILED)
        return PaymentOutcome(failed.code.value, None, failed.replayed)

    async def get(self, institution_id: str, payment_id: UUID, *, missing_ok: bool = False) -> Payment | None:
        """The caller's payment, read from its ledger transfers (NotFound for another's)."""
        credit = await self.ledger.get_transfer(scoped_id(institution_id, payment_id, "credit"))
        origin = None if credit is None else Origin.decode(credit.user_data)
        if credit is None or origin is None or origin.institution_id != institution_id or origin.metadata is None:
            if missing_ok:
                return None
            raise NotFound(f"no payment {payment_id}")
        meta: dict[str, Any] = origin.metadata
        return Payment(
            id=payment_id, payer_wallet_id=UUID(meta["payer"]), merchant_wallet_id=credit.credit_account_id,
            source_minor=int(meta["source"]), source_currency=SOURCE_CURRENCY, target_minor=credit.amount_minor,
            target_currency=credit.currency, rate=meta["rate"], quote_id=UUID(meta["quote"]),
            settlement_window_id=int(meta["window"]), created_at_us=credit.created_at_us,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Parties:
    payer_id: str
    payer_fx_account: UUID
    acquirer_id: str
    acquirer_funding: UUID


def _check_quote(quote: UsableQuote, request: PaymentRequest) -> None:
    if (quote.source_currency, quote.target_currency) != (SOURCE_CURRENCY, SETTLEMENT_CURRENCY):
        raise InvalidRequest("the quote is not for HKD to CNY")
    if request.currency != SETTLEMENT_CURRENCY or request.amount_minor != quote.target_minor:
        raise InvalidRequest("the payment's amount and currency must be the quote's target amount in CNY")


def _chain(
    institution_id: str,
    request: PaymentRequest,
    quote: UsableQuote,
    window_id: int,
    parties: Parties,
    payer_position: UUID,
    acquirer_position: UUID,
) -> list[TransferCommand]:
    def origin(leg: str, **extra: Any) -> str:
        return Origin(institution_id, request.id, "payment", {"leg": leg, **extra}).encode()

    details = {
        "payer": str(request.payer_wallet_id), "quote": str(request.quote_id), "rate": str(quote.rate),
        "source": quote.source_minor, "window": window_id,
    }  # fmt: skip
    return [
        TransferCommand.posted(
            scoped_id(institution_id, request.quote_id, "quote"), request.payer_wallet_id, parties.payer_fx_account,
            quote.source_minor, SOURCE_CURRENCY, linked=True, user_data=origin("fx", quote=str(request.quote_id)),
            replay_ends_chain=True,
        ),
        TransferCommand.posted(
            scoped_id(institution_id, request.id, f"obligation:{window_id}"), payer_position, acquirer_position,
            quote.target_minor, SETTLEMENT_CURRENCY, linked=True, user_data=origin("obligation", window=window_id),
        ),
        TransferCommand.posted(
            scoped_id(institution_id, request.id, "credit"), parties.acquirer_funding, request.merchant_wallet_id,
            quote.target_minor, SETTLEMENT_CURRENCY, user_data=origin("credit", **details),
        ),
    ]  # fmt: skip


__all__ = ["Payment", "PaymentDesk", "PaymentOutcome", "PaymentRequest"]
