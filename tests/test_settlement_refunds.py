"""Refunds on SQLite and PostgreSQL: backwards at the payment's rate, partial refunds that add up
exactly to the payment, never beyond it even when refunds race, and the obligation reduced in the
window where the refund happens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ledger import Batcher
from ledger.ids import uuid7
from settlement.refunds import RefundRequest
from tests.settlement_support import Corridor, build_corridor
from wallets.errors import NotFound


@pytest.fixture
async def corridor(ledger) -> AsyncIterator[Corridor]:
    async with Batcher(ledger) as batcher:
        corridor = await build_corridor(ledger, batcher, {"hk-alpha": 10_000_000, "hk-beta": None}, ["sz-one"])
        await corridor.prefund("hk-alpha", 10_000_000)
        await corridor.prefund("sz-one", 1_000_000)
        yield corridor


async def _balances(corridor: Corridor) -> tuple[int, int]:
    customer = await corridor.book.get_wallet("hk-alpha", corridor.customers["hk-alpha"])
    merchant = await corridor.book.get_wallet("sz-one", corridor.merchants["sz-one"])
    return customer.balances.posted_minor, merchant.balances.posted_minor


async def _refund(corridor: Corridor, payment_id, amount_minor=None, refund_id=None):
    request = RefundRequest(refund_id or uuid7(), payment_id, amount_minor)
    return await corridor.refunds.refund("hk-alpha", request)


async def test_a_full_refund_gives_back_the_exact_hkd_and_cancels_the_obligation_in_its_window(corridor):
    before = await _balances(corridor)
    payment = (await corridor.pay("hk-alpha", "sz-one", 12_851)).payment
    outcome = await _refund(corridor, payment.id)
    assert outcome.ok and outcome.refund.target_minor == 12_851
    assert outcome.refund.source_minor == payment.source_minor
    assert await _balances(corridor) == before
    batch = await corridor.settlement.close(1, actor="operator")
    assert {(o.debtor, o.creditor): o.amount_minor for o in batch.obligations} == {
        ("hk-alpha", "sz-one"): 12_851,
        ("sz-one", "hk-alpha"): 12_851,
    }
    assert all(p.net_minor == 0 for p in batch.netting.for_currency("CNY").positions)
    assert (await _refund(corridor, payment.id, 1)).code == "invalid_amount"


async def test_partial_refunds_add_up_to_the_payment_exactly_and_never_beyond(corridor):
    customer_before, _ = await _balances(corridor)
    payment = (await corridor.pay("hk-alpha", "sz-one", 10_001)).payment
    sources = []
    for amount in (3_333, 3_333, 3_335):
        outcome = await _refund(corridor, payment.id, amount)
        assert outcome.ok, outcome.code
        sources.append(outcome.refund.source_minor)
    assert sum(sources) == payment.source_minor
    assert (await _balances(corridor))[0] == customer_before
    assert await corridor.refunds.refunded_minor("hk-alpha", payment.id) == 10_001
    refused = await _refund(corridor, payment.id, 1)
    assert refused.code == "invalid_amount"
    assert (await _balances(corridor))[0] == customer_before


async def test_refunds_racing_each_other_never_add_up_to_more_than_the_payment(corridor):
    customer_before, merchant_before = await _balances(corridor)
    payment = (await corridor.pay("hk-alpha", "sz-one", 9_000)).payment
    outcomes = await asyncio.gather(*(_refund(corridor, payment.id, 3_000) for _ in range(10)))
    assert sorted(o.code for o in outcomes) == ["invalid_amount"] * 7 + ["ok"] * 3
    assert sum(o.refund.source_minor for o in outcomes if o.ok) == payment.source_minor
    assert await _balances(corridor) == (customer_before, merchant_before)


async def test_a_refund_in_a_later_window_runs_the_obligation_backwards_there(corridor):
    payment = (await corridor.pay("hk-alpha", "sz-one", 5_000)).payment
    await corridor.settlement.close(1, actor="operator")
    outcome = await _refund(corridor, payment.id, 2_000)
    assert outcome.ok and outcome.refund.settlement_window_id == 2
    assert [(o.debtor, o.creditor, o.amount_minor) for o in (await corridor.settlement.batch(1)).obligations] == [
        ("hk-alpha", "sz-one", 5_000)
    ]
    batch2 = await corridor.settlement.close(2, actor="operator")
    assert [(o.debtor, o.creditor, o.amount_minor) for o in batch2.obligations] == [("sz-one", "hk-alpha", 2_000)]


async def test_a_refund_replays_under_its_id_and_only_the_payer_institution_can_ask(corridor):
    payment = (await corridor.pay("hk-alpha", "sz-one", 5_000)).payment
    refund_id = uuid7()
    first = await _refund(corridor, payment.id, 1_000, refund_id)
    again = await _refund(corridor, payment.id, 1_000, refund_id)
    assert again.ok and again.replayed and again.refund == first.refund
    assert (await _refund(corridor, payment.id, 1_500, refund_id)).code == "exists_with_different_fields"
    with pytest.raises(NotFound):
        await corridor.refunds.refund("hk-beta", RefundRequest(uuid7(), payment.id, 100))
    with pytest.raises(NotFound):
        await corridor.refunds.get("hk-beta", refund_id)


async def test_a_refund_the_merchant_cannot_fund_is_refused_and_moves_nothing(corridor):
    payment = (await corridor.pay("hk-alpha", "sz-one", 5_000)).payment
    merchant = corridor.merchants["sz-one"]
    assert (await corridor.book.withdraw("sz-one", merchant, uuid7(), 4_500)).ok
    before = await _balances(corridor)
    refused = await _refund(corridor, payment.id, 1_000)
    assert refused.code == "insufficient_funds"
    assert await _balances(corridor) == before
    assert await corridor.refunds.refunded_minor("hk-alpha", payment.id) == 0
    assert (await _refund(corridor, payment.id, 500)).ok


async def test_a_refused_refund_is_answered_the_same_refusal_on_retry_even_once_it_could_pass(corridor):
    payment = (await corridor.pay("hk-alpha", "sz-one", 5_000)).payment
    merchant = corridor.merchants["sz-one"]
    assert (await corridor.book.withdraw("sz-one", merchant, uuid7(), 4_500)).ok
    refund_id = uuid7()
    first = await _refund(corridor, payment.id, 1_000, refund_id)
    assert (first.code, first.replayed) == ("insufficient_funds", False)
    assert (await corridor.book.deposit("sz-one", merchant, uuid7(), 4_500)).ok  # it could pass now
    again = await _refund(corridor, payment.id, 1_000, refund_id)
    assert (again.code, again.replayed) == ("insufficient_funds", True)
    assert (await _refund(corridor, payment.id, 900, refund_id)).code == "exists_with_different_fields"
    assert await corridor.refunds.refunded_minor("hk-alpha", payment.id) == 0
