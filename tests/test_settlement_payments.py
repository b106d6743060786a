"""Cross-border payments and settlement windows on SQLite and PostgreSQL: one linked chain pays,
records the obligation in the open window and checks the net debit cap; quotes pay once; a close
racing payments leaves each in exactly one window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import pytest
import sqlalchemy as sa
from nacl.signing import SigningKey

from ledger import Batcher, ResultCode, TransferCommand
from ledger.ids import uuid7
from ledger.schema import transfers
from settlement.fx import quote_amounts
from settlement.liquidity import LiquidityDesk
from settlement.payments import PaymentDesk, PaymentRequest
from settlement.windows import WindowBook, position_account_id
from tests.settlement_support import CNY, HKD, RATE, Quotes
from wallets.errors import InvalidRequest, NotFound
from wallets.model import InstitutionKind, Merchant, OwnerKind, WalletSpec
from wallets.service import WalletBook

_HKD, _CNY = HKD, CNY


@dataclass
class Corridor:
    book: WalletBook
    windows: WindowBook
    desk: PaymentDesk
    quotes: Quotes
    payer_wallet: UUID
    merchant_wallet: UUID

    def request(self, target_minor: int, **fields) -> PaymentRequest:
        quote_id = fields.pop("quote_id", None) or self.quotes.issue(target_minor)
        return PaymentRequest(
            fields.pop("id", None) or uuid7(), self.payer_wallet, self.merchant_wallet, target_minor, "CNY", quote_id
        )


@pytest.fixture
async def corridor(ledger) -> AsyncIterator[Corridor]:
    async with Batcher(ledger) as batcher:
        book = WalletBook(ledger, batcher, clock=ledger.clock)
        key = bytes(SigningKey.generate().verify_key)
        await book.register_institution(
            "hk-alphapay", InstitutionKind.HK_PAYMENT_INSTITUTION, "AlphaPay", key, net_debit_cap=(100_000, "CNY")
        )
        await book.register_institution("sz-bank", InstitutionKind.SZ_ACQUIRER, "SZ Bank", key)
        payer, _ = await book.open_wallet(
            "hk-alphapay", WalletSpec("cust-1", OwnerKind.PERSON, "HKD", limit_profile="svf-verified")
        )
        shop, _ = await book.open_wallet(
            "sz-bank", WalletSpec("shop-1", OwnerKind.MERCHANT, "CNY", merchant=Merchant("Tea", "SZ", "5812"))
        )
        assert (await book.deposit("hk-alphapay", payer.id, uuid7(), 1_000_000)).ok
        windows = WindowBook(ledger, ledger.clock)
        await windows.open_window()
        liquidity = LiquidityDesk(ledger, batcher, book, windows, ledger.clock)
        assert (await liquidity.prefund("hk-alphapay", uuid7(), 100_000, "CNY", actor="operator")).ok
        quotes = Quotes()
        desk = PaymentDesk(ledger, batcher, book, liquidity, quotes)
        yield Corridor(book, windows, desk, quotes, payer.id, shop.id)


async def test_a_payment_debits_hkd_credits_the_exact_cny_price_and_records_the_obligation(corridor, ledger):
    request = corridor.request(12_850)
    outcome = await corridor.desk.pay("hk-alphapay", request)
    assert outcome.ok and not outcome.replayed
    payment = outcome.payment
    source, _ = quote_amounts(RATE, source_currency=_HKD, target_currency=_CNY, target_minor=12_850)
    assert (payment.source_minor, payment.target_minor, payment.settlement_window_id) == (source, 12_850, 1)
    assert (
        await corridor.book.get_wallet("hk-alphapay", corridor.payer_wallet)
    ).balances.posted_minor == 1_000_000 - source
    assert (await corridor.book.get_wallet("sz-bank", corridor.merchant_wallet)).balances.posted_minor == 12_850
    payer_position = await ledger.get_account(position_account_id(1, "hk-alphapay", "CNY"))
    acquirer_position = await ledger.get_account(position_account_id(1, "sz-bank", "CNY"))
    assert payer_position.balances.debits_posted == acquirer_position.balances.credits_posted == 12_850
    assert (await corridor.desk.get("hk-alphapay", request.id)) == payment


async def test_the_same_payment_replays_another_body_conflicts_and_a_quote_pays_once(corridor):
    request = corridor.request(5_000)
    assert (await corridor.desk.pay("hk-alphapay", request)).ok
    again = await corridor.desk.pay("hk-alphapay", request)
    assert again.ok and again.replayed
    other_amount = corridor.request(5_000, id=request.id)
    assert (await corridor.desk.pay("hk-alphapay", other_amount)).code == "exists_with_different_fields"
    reused = corridor.request(5_000, quote_id=request.quote_id)
    assert (await corridor.desk.pay("hk-alphapay", reused)).code == "quote_already_used"


async def test_a_payment_past_the_net_debit_cap_is_refused_and_leaves_nothing_behind(corridor, ledger):
    assert (await corridor.desk.pay("hk-alphapay", corridor.request(60_000))).ok
    before = (await corridor.book.get_wallet("hk-alphapay", corridor.payer_wallet)).balances
    refused = await corridor.desk.pay("hk-alphapay", corridor.request(40_001))
    assert refused.code == "net_debit_cap_exceeded"
    assert (await corridor.book.get_wallet("hk-alphapay", corridor.payer_wallet)).balances == before
    assert (await corridor.book.get_wallet("sz-bank", corridor.merchant_wallet)).balances.posted_minor == 60_000
    assert (await corridor.desk.pay("hk-alphapay", corridor.request(40_000))).ok  # exactly at the cap


async def test_another_institution_cannot_read_a_payment_or_pay_from_a_foreign_wallet(corridor):
    request = corridor.request(1_000)
    await corridor.desk.pay("hk-alphapay", request)
    with pytest.raises(NotFound):
        await corridor.desk.get("sz-bank", request.id)
    with pytest.raises(NotFound):
        await corridor.desk.pay("sz-bank", corridor.request(1_000))


async def test_a_payment_must_be_the_quotes_cny_amount(corridor):
    quote_id = corridor.quotes.issue(1_000)
    with pytest.raises(InvalidRequest):
        await corridor.desk.pay("hk-alphapay", corridor.request(1_001, quote_id=quote_id))


async def test_closing_a_window_opens_the_next_and_locks_the_closed_positions(corridor, ledger):
    assert (await corridor.desk.pay("hk-alphapay", corridor.request(1_000))).ok
    closed, opened = await corridor.windows.close(1, actor="operator")
    assert (closed.status, opened.id, opened.status) == ("closed", 2, "open")
    later = await corridor.desk.pay("hk-alphapay", corridor.request(2_000))
    assert later.ok and later.payment.settlement_window_id == 2
    # The closed window's payer position takes no new debit.
    [stray] = await ledger.submit(
        [
            TransferCommand.posted(
                uuid7(),
                position_account_id(1, "hk-alphapay", "CNY"),
                position_account_id(1, "sz-bank", "CNY"),
                1,
                "CNY",
            )
        ]
    )
    assert stray.code is ResultCode.DEBIT_BALANCE_CAP_EXCEEDED
    assert [status for status, _, _ in await corridor.windows.history(1)] == ["open", "closed"]
    with pytest.raises(ValueError):
        await corridor.windows.close(1, actor="operator")


async def test_the_cap_counts_what_closed_windows_still_owe(corridor):
    assert (await corridor.desk.pay("hk-alphapay", corridor.request(70_000))).ok
    await corridor.windows.close(1, actor="operator")
    # Window 1 is closed but not settled: 70,000 of the 100,000 cap is still owed.
    assert (await corridor.desk.pay("hk-alphapay", corridor.request(30_001))).code == "net_debit_cap_exceeded"
    assert (await corridor.desk.pay("hk-alphapay", corridor.request(30_000))).ok


async def test_payments_racing_a_close_each_land_in_exactly_one_window(corridor, ledger):
    """Eight payers keep paying while the window closes: the close lands among payments in flight."""
    requests: list[PaymentRequest] = []
    outcomes: list = []
    closed, ten_paid = asyncio.Event(), asyncio.Event()

    async def payer() -> None:
        after_close = 0
        while after_close < 5:
            request = corridor.request(100)
            requests.append(request)
            outcomes.append(await corridor.desk.pay("hk-alphapay", request))
            if len(outcomes) >= 10:
                ten_paid.set()
            after_close += closed.is_set()

    async def close_while_paying() -> None:
        await ten_paid.wait()
        await corridor.windows.close(1, actor="operator")
        closed.set()

    await asyncio.gather(*(payer() for _ in range(8)), close_while_paying())
    assert all(o.ok for o in outcomes)
    async with ledger.engine.connect() as conn:
        rows = (
            await conn.execute(sa.select(transfers.c.user_data).where(transfers.c.user_data.like('%"obligation"%')))
        ).all()
    per_payment: dict[str, int] = {}
    for (user_data,) in rows:
        payment_id = user_data.split('"id":"', 1)[1].split('"', 1)[0]
        per_payment[payment_id] = per_payment.get(payment_id, 0) + 1
    assert set(per_payment) == {str(r.id) for r in requests}
    assert set(per_payment.values()) == {1}
    windows = {o.payment.settlement_window_id for o in outcomes}
    assert windows == {1, 2}
    for window_id in windows:
        positions = await corridor.windows.positions(window_id)
        accounts = await ledger.get_accounts(list(positions))
        assert sum(a.balances.debits_posted - a.balances.credits_posted for a in accounts.values()) == 0


async def test_a_refused_payment_is_answered_the_same_refusal_on_retry_even_after_its_quote_expired(corridor):
    request = corridor.request(200_000)  # past the cap
    first = await corridor.desk.pay("hk-alphapay", request)
    assert first.code == "net_debit_cap_exceeded" and not first.replayed
    del corridor.quotes.issued[request.quote_id]  # the quote is gone: only memory can answer
    again = await corridor.desk.pay("hk-alphapay", request)
    assert (again.code, again.replayed) == ("net_debit_cap_exceeded", True)
    other = PaymentRequest(request.id, request.payer_wallet_id, request.merchant_wallet_id, 100, "CNY", uuid7())
    assert (await corridor.desk.pay("hk-alphapay", other)).code == "exists_with_different_fields"


async def test_a_retry_racing_its_payment_across_a_close_adds_no_second_obligation(corridor, ledger):
    request = corridor.request(3_000)
    assert (await corridor.desk.pay("hk-alphapay", request)).payment.settlement_window_id == 1
    await corridor.windows.close(1, actor="operator")
    # The racing retry got past the "already paid?" read before the original committed.
    late = await corridor.desk._pay_new("hk-alphapay", request)
    assert late.ok and late.replayed and late.payment.settlement_window_id == 1
    assert await ledger.get_account(position_account_id(2, "hk-alphapay", "CNY")) is not None  # it was opened
    assert (await ledger.get_account(position_account_id(2, "hk-alphapay", "CNY"))).balances.debits_posted == 0
