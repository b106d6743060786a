"""A small corridor for settlement tests: Hong Kong payment institutions with a funded customer
each, Shenzhen acquirers with a merchant each, a settlement bank, and the settlement desks over
them. Quotes come from a fake lookup at a fixed rate (the FX desk is tested on its own)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from uuid import UUID

from nacl.signing import SigningKey

from ledger import Batcher, Ledger
from ledger.ids import uuid7
from ledger.money import Currency
from settlement.batches import SettlementDesk
from settlement.fx import quote_amounts
from settlement.liquidity import LiquidityDesk
from settlement.payments import PaymentDesk, PaymentOutcome, PaymentRequest
from settlement.refunds import RefundDesk
from settlement.windows import WindowBook
from wallets.model import AccountRole, InstitutionKind, Merchant, OwnerKind, WalletSpec
from wallets.service import WalletBook

RATE = Decimal("0.9166935000")  # CNY per HKD
HKD, CNY = Currency("HKD", 2), Currency("CNY", 2)
CUSTOMER_FUNDS_MINOR = 100_000_000


@dataclass(frozen=True)
class FakeQuote:
    source_currency: str
    target_currency: str
    rate: Decimal
    source_minor: int
    target_minor: int


class Quotes:
    """Quotes issued for the test, by id."""

    def __init__(self) -> None:
        self.issued: dict[UUID, FakeQuote] = {}

    def issue(self, target_minor: int) -> UUID:
        source, target = quote_amounts(RATE, source_currency=HKD, target_currency=CNY, target_minor=target_minor)
        quote_id = uuid7()
        self.issued[quote_id] = FakeQuote("HKD", "CNY", RATE, source, target)
        return quote_id

    async def __call__(self, _institution_id: str, quote_id: UUID, _now_us: int) -> FakeQuote:
        return self.issued[quote_id]


@dataclass
class Corridor:
    ledger: Ledger
    book: WalletBook
    windows: WindowBook
    liquidity: LiquidityDesk
    payments: PaymentDesk
    settlement: SettlementDesk
    quotes: Quotes
    refunds: RefundDesk
    customers: dict[str, UUID] = field(default_factory=dict)  # HK institution -> its customer's wallet
    merchants: dict[str, UUID] = field(default_factory=dict)  # acquirer -> its merchant's wallet

    async def pay(self, payer: str, acquirer: str, target_minor: int) -> PaymentOutcome:
        quote_id = self.quotes.issue(target_minor)
        payer_wallet, merchant_wallet = self.customers[payer], self.merchants[acquirer]
        request = PaymentRequest(uuid7(), payer_wallet, merchant_wallet, target_minor, "CNY", quote_id)
        return await self.payments.pay(payer, request)

    async def prefund(self, institution_id: str, amount_minor: int) -> None:
        result = await self.liquidity.prefund(institution_id, uuid7(), amount_minor, "CNY", actor="operator")
        assert result.ok, result.code

    async def settlement_balance(self, institution_id: str) -> int:
        institution = await self.book.get_institution(institution_id)
        account = await self.ledger.get_account(institution.accounts[("CNY", AccountRole.SETTLEMENT)])
        return account.balances.posted_minor


async def build_corridor(
    ledger: Ledger, batcher: Batcher, payers: dict[str, int | None], acquirers: list[str], *, bank: bool = True
) -> Corridor:
    """``payers``: HK institution id -> its registered net debit cap (None: no cap)."""
    book = WalletBook(ledger, batcher, clock=ledger.clock)
    windows = WindowBook(ledger, ledger.clock)
    await windows.open_window()
    liquidity = LiquidityDesk(ledger, batcher, book, windows, ledger.clock)
    quotes = Quotes()
    payments = PaymentDesk(ledger, batcher, book, liquidity, quotes)
    corridor = Corridor(
        ledger, book, windows, liquidity, payments, SettlementDesk(ledger, batcher, book, liquidity), quotes,
        RefundDesk(ledger, batcher, book, liquidity, payments),
    )  # fmt: skip
    key = bytes(SigningKey.generate().verify_key)
    for payer, cap in payers.items():
        ndc = None if cap is None else (cap, "CNY")
        await book.register_institution(payer, InstitutionKind.HK_PAYMENT_INSTITUTION, payer, key, net_debit_cap=ndc)
        spec = WalletSpec(f"{payer}-c", OwnerKind.PERSON, "HKD", limit_profile="svf-verified")
        wallet, _ = await book.open_wallet(payer, spec)
        assert (await book.deposit(payer, wallet.id, uuid7(), CUSTOMER_FUNDS_MINOR)).ok
        corridor.customers[payer] = wallet.id
    for acquirer in acquirers:
        await book.register_institution(acquirer, InstitutionKind.SZ_ACQUIRER, acquirer, key)
        merchant = Merchant(f"{acquirer} shop", "Shenzhen", "5812")
        spec = WalletSpec(f"{acquirer}-m", OwnerKind.MERCHANT, "CNY", merchant=merchant)
        wallet, _ = await book.open_wallet(acquirer, spec)
        corridor.merchants[acquirer] = wallet.id
    if bank:
        await book.register_institution("settlement-bank", InstitutionKind.SETTLEMENT_BANK, "Settlement bank", key)
    return corridor
