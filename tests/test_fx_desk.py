"""The FX desk on SQLite and PostgreSQL: operators' rates kept as history (the newest is current),
quotes priced at the current customer rate, signed with the ledger's key, stored, found only by
their own institution, expiring at ``expires_at``, and a stored row changed behind the ledger's
back refused on read. The quote desk's ``lookup`` is the payment desk's quote source."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from nacl.signing import SigningKey

from ledger import Batcher, Ledger
from ledger.ids import uuid7
from settlement import fx
from settlement.desks import Settlement
from settlement.fx_errors import NoRate, QuoteExpired, QuoteNotFound, QuoteSignatureInvalid, UnsupportedPair
from settlement.fx_tables import fx_quotes, fx_rates
from settlement.payments import PaymentRequest
from settlement.quotes import QuoteDesk
from settlement.rates import RateBook
from wallets.model import InstitutionKind, Merchant, OwnerKind, WalletSpec
from wallets.service import WalletBook

MID = Decimal("0.9234")
SPREAD_BPS = 50
CUSTOMER_RATE = Decimal("0.9187830000")  # 0.9234 × (1 − 0.0050), rounded down to 10 places


@dataclass
class Desk:
    ledger: Ledger
    wallets: WalletBook
    rates: RateBook
    quotes: QuoteDesk


@pytest.fixture
async def desk(ledger) -> AsyncIterator[Desk]:
    async with Batcher(ledger) as batcher:
        book = WalletBook(ledger, batcher, clock=ledger.clock)
        for slug in ("hk-alphapay", "hk-betapay"):
            key = bytes(SigningKey.generate().verify_key)
            await book.register_institution(
                slug, InstitutionKind.HK_PAYMENT_INSTITUTION, slug, key, net_debit_cap=(1_000_000, "CNY")
            )
        rates = RateBook(ledger)
        yield Desk(ledger, book, rates, QuoteDesk(ledger, rates))


async def test_every_rate_set_is_kept_newest_first_and_the_newest_of_a_pair_is_current(desk, clock):
    assert await desk.rates.current("HKD", "CNY") is None
    first = await desk.rates.set_rate("HKD", "CNY", Decimal("0.9200"), 40, actor="operator")
    clock.advance(seconds=1)
    reverse = await desk.rates.set_rate("CNY", "HKD", Decimal("1.0830"), 50, actor="operator")
    clock.advance(seconds=1)
    second = await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="ops-2")

    current = await desk.rates.current("HKD", "CNY")
    assert current == second
    assert (current.mid_rate, current.spread_bps, current.customer_rate, current.actor) == (
        MID, SPREAD_BPS, CUSTOMER_RATE, "ops-2",
    )  # fmt: skip
    assert await desk.rates.current_rates() == [reverse, second]  # by source, then target currency
    page, cursor = await desk.rates.history()
    assert page == [second, reverse, first] and cursor is None
    assert [rate.set_at_us for rate in page] == [clock.now_us, clock.now_us - 1_000_000, clock.now_us - 2_000_000]


async def test_rate_history_pages_with_a_cursor_until_the_last_page(desk):
    set_rates = [await desk.rates.set_rate("HKD", "CNY", Decimal(f"0.92{n}"), 10, actor="operator") for n in range(5)]
    newest_first = list(reversed(set_rates))
    seen, cursor = [], None
    for _ in range(3):
        page, cursor = await desk.rates.history(limit=2, cursor=cursor)
        seen += page
    assert seen == newest_first and cursor is None
    with pytest.raises(ValueError):
        await desk.rates.history(limit=0)


@pytest.mark.parametrize(
    ("source", "target", "mid", "spread", "error"),
    [
        ("HKD", "USD", MID, 50, UnsupportedPair),
        ("CNY", "CNY", MID, 50, UnsupportedPair),
        ("HKD", "CNY", Decimal(0), 50, fx.InvalidRate),
        ("HKD", "CNY", Decimal("-0.92"), 50, fx.InvalidRate),
        ("HKD", "CNY", Decimal("NaN"), 50, fx.InvalidRate),
        ("HKD", "CNY", Decimal(2_000_000), 50, fx.InvalidRate),
        ("HKD", "CNY", MID, -1, fx.InvalidSpread),
        ("HKD", "CNY", MID, 10_001, fx.InvalidSpread),
        ("HKD", "CNY", MID, 10_000, fx.InvalidRate),  # a customer rate of zero prices nothing
    ],
)
async def test_a_rate_outside_the_corridor_or_with_a_bad_mid_or_spread_is_refused_and_not_stored(
    desk, source, target, mid, spread, error
):
    with pytest.raises(error):
        await desk.rates.set_rate(source, target, mid, spread, actor="operator")
    assert (await desk.rates.history())[0] == []


async def test_a_quote_by_target_gives_the_merchant_the_exact_price_and_rounds_the_payer_up(desk, clock):
    await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="operator")
    quote = await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=12_850)
    # 128.50 / 0.918783 = 139.8590... HKD, rounded up to the cent.
    assert (quote.rate, quote.source_minor, quote.target_minor) == (CUSTOMER_RATE, 13_986, 12_850)
    assert quote.created_at_us == clock.now_us
    assert quote.expires_at_us == clock.now_us + 60_000_000  # the default lifetime, 60 s
    assert await desk.quotes.get("hk-alphapay", quote.id) == quote


async def test_a_quote_by_source_rounds_the_target_down_and_the_reverse_pair_quotes_too(desk):
    await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="operator")
    await desk.rates.set_rate("CNY", "HKD", Decimal("1.0830"), 0, actor="operator")
    by_source = await desk.quotes.issue("hk-alphapay", "HKD", "CNY", source_minor=10_000)
    assert (by_source.source_minor, by_source.target_minor) == (10_000, 9_187)  # 91.8783 CNY, down
    reverse = await desk.quotes.issue("hk-alphapay", "CNY", "HKD", source_minor=10_000)
    assert (reverse.rate, reverse.target_minor) == (Decimal("1.0830000000"), 10_830)


async def test_a_quote_keeps_the_rate_it_was_priced_at_when_the_rate_changes(desk):
    await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="operator")
    quote = await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=10_000)
    await desk.rates.set_rate("HKD", "CNY", Decimal("0.8000"), SPREAD_BPS, actor="operator")
    assert (await desk.quotes.get("hk-alphapay", quote.id)).rate == CUSTOMER_RATE
    assert (await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=10_000)).rate < CUSTOMER_RATE


async def test_quoting_refuses_no_rate_neither_or_both_amounts_an_amount_too_small_and_other_pairs(desk):
    with pytest.raises(NoRate):
        await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=100)
    await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="operator")
    with pytest.raises(NoRate):  # the reverse pair has a rate of its own
        await desk.quotes.issue("hk-alphapay", "CNY", "HKD", source_minor=100)
    with pytest.raises(fx.InvalidQuoteAmount):
        await desk.quotes.issue("hk-alphapay", "HKD", "CNY")
    with pytest.raises(fx.InvalidQuoteAmount):
        await desk.quotes.issue("hk-alphapay", "HKD", "CNY", source_minor=100, target_minor=90)
    with pytest.raises(fx.InvalidQuoteAmount):  # 0.01 HKD buys less than one fen
        await desk.quotes.issue("hk-alphapay", "HKD", "CNY", source_minor=1)
    with pytest.raises(UnsupportedPair):
        await desk.quotes.issue("hk-alphapay", "USD", "CNY", source_minor=100)
    async with desk.ledger.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(fx_quotes))).scalar_one() == 0


async def test_a_quote_is_usable_until_just_before_expires_at_and_expired_from_it(desk, clock):
    await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="operator")
    quote = await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=5_000, ttl=timedelta(seconds=30))
    assert await desk.quotes.lookup("hk-alphapay", quote.id, quote.expires_at_us - 1) == quote
    with pytest.raises(QuoteExpired) as expired:
        await desk.quotes.lookup("hk-alphapay", quote.id, quote.expires_at_us)
    assert (expired.value.code, expired.value.status) == ("quote_expired", 409)
    clock.advance(seconds=31)
    with pytest.raises(QuoteExpired):
        await desk.quotes.lookup("hk-alphapay", quote.id, clock())
    assert await desk.quotes.get("hk-alphapay", quote.id) == quote  # still readable: it is history
    with pytest.raises(ValueError):
        await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=5_000, ttl=timedelta(hours=1))


async def test_another_institutions_quote_is_not_found_exactly_like_an_unknown_one(desk, clock):
    await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="operator")
    quote = await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=5_000)
    with pytest.raises(QuoteNotFound) as foreign:
        await desk.quotes.lookup("hk-betapay", quote.id, clock())
    unknown_id = uuid7()
    with pytest.raises(QuoteNotFound) as unknown:
        await desk.quotes.get("hk-betapay", unknown_id)
    assert (
        (foreign.value.code, foreign.value.status) == (unknown.value.code, unknown.value.status) == ("not_found", 404)
    )
    assert str(foreign.value) == f"no quote {quote.id}" and str(unknown.value) == f"no quote {unknown_id}"


async def test_the_stored_signature_verifies_with_the_ledgers_public_key_over_the_canonical_json(desk):
    await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="operator")
    quote = await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=12_850)
    canonical = fx.canonical_quote_json(await desk.quotes.as_fx_quote(quote))
    desk.ledger.verify_key.verify(canonical, quote.signature)  # raises if it does not verify
    assert b'"rate":"0.9187830000"' in canonical and b'"source_amount":"139.86"' in canonical


@pytest.mark.parametrize(
    "change",
    [
        {"rate": "0.9900000000"},  # a better rate for the payer
        {"source_minor": 100},  # a smaller source amount, at the same rate's check failing
        {"source_minor": 13_987},  # a consistent but different amount: only the signature catches it
        {"expires_at_us": fx_quotes.c.expires_at_us + 3_600_000_000},  # a longer life
        {"signature": bytes(64)},
    ],
)
async def test_a_stored_quote_changed_behind_the_ledgers_back_is_refused_on_read(desk, change):
    await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="operator")
    quote = await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=12_850)
    async with desk.ledger.engine.begin() as conn:
        await conn.execute(fx_quotes.update().where(fx_quotes.c.id == quote.id).values(**change))
    with pytest.raises(QuoteSignatureInvalid):
        await desk.quotes.get("hk-alphapay", quote.id)
    with pytest.raises(QuoteSignatureInvalid):
        await desk.quotes.lookup("hk-alphapay", quote.id, quote.created_at_us)


async def test_a_stored_rate_that_is_no_longer_a_rate_is_refused_on_read(desk):
    await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="operator")
    async with desk.ledger.engine.begin() as conn:
        await conn.execute(fx_rates.update().values(mid_rate="0"))
    with pytest.raises(fx.InvalidRate):
        await desk.rates.current("HKD", "CNY")


async def test_the_quote_desks_lookup_is_the_payment_desks_quote_source_and_a_quote_pays_once(desk, ledger, clock):
    """The contract with settlement.payments: ``QuoteDesk.lookup`` is a QuoteLookup."""
    book = desk.wallets
    await book.register_institution(
        "sz-bank", InstitutionKind.SZ_ACQUIRER, "SZ Bank", bytes(SigningKey.generate().verify_key)
    )
    payer, _ = await book.open_wallet(
        "hk-alphapay", WalletSpec("cust-1", OwnerKind.PERSON, "HKD", limit_profile="svf-verified")
    )
    shop, _ = await book.open_wallet(
        "sz-bank", WalletSpec("shop-1", OwnerKind.MERCHANT, "CNY", merchant=Merchant("Tea", "SZ", "5812"))
    )
    assert (await book.deposit("hk-alphapay", payer.id, uuid7(), 100_000)).ok
    await desk.rates.set_rate("HKD", "CNY", MID, SPREAD_BPS, actor="operator")
    quote = await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=12_850)
    payments = Settlement.over(ledger, book.batcher, book, desk.quotes.lookup, ledger.clock).payments
    await payments.liquidity.allow_beyond_liquidity("hk-alphapay", True, actor="operator")

    paid = await payments.pay("hk-alphapay", PaymentRequest(uuid7(), payer.id, shop.id, 12_850, "CNY", quote.id))
    assert paid.ok and (paid.payment.source_minor, paid.payment.target_minor) == (13_986, 12_850)
    again = await payments.pay("hk-alphapay", PaymentRequest(uuid7(), payer.id, shop.id, 12_850, "CNY", quote.id))
    assert again.code == "quote_already_used"
    late = await desk.quotes.issue("hk-alphapay", "HKD", "CNY", target_minor=100)
    clock.advance(seconds=60)
    with pytest.raises(QuoteExpired):
        await payments.pay("hk-alphapay", PaymentRequest(uuid7(), payer.id, shop.id, 100, "CNY", late.id))
