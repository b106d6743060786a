"""Same-currency transfers between wallets of different institutions, over signed HTTP on SQLite and
PostgreSQL: each records the payer institution's obligation to the payee's in the open window under
its net debit cap in force (bounded by liquidity), all or nothing; holds owe nothing until posted;
atomic batches stay all or none; replays never add a second obligation; a transfer within one
institution owes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from ledger.ids import uuid7
from tests.api_support import Api, Party, api, assert_problem

__all__ = ["api"]
MERCHANT = {"name": "Tea", "city": "Shenzhen", "category_code": "5812"}


@dataclass
class Setup:
    api: Api
    alpha: Party
    beta: Party
    acquirer: Party
    payer: str  # alpha's CNY wallet, 1,000.00
    other: str  # alpha's second CNY wallet
    shop: str  # the acquirer's merchant
    beta_hkd: str  # beta's HKD wallet
    alpha_hkd: str  # alpha's HKD wallet, 1,000.00

    async def obligations(self, window_id: int) -> set[tuple[str, str, str, str]]:
        batch = await self.api.post(self.api.operator, f"/v1/settlement/windows/{window_id}/close")
        assert batch.status == 201, batch.body
        return {(o["debtor"], o["creditor"], o["currency"], o["amount"]) for o in batch.body["bilateral"]}


@pytest.fixture
async def setup(api) -> AsyncIterator[Setup]:
    alpha = await api.institution("hk-alpha", liquidity=None)
    beta = await api.institution("hk-beta")
    acquirer = await api.institution("sz-acq", "sz_acquirer")
    for currency in ("CNY", "HKD"):  # alpha's cap in force: 300.00 in each currency
        payload = {"id": str(uuid7()), "amount": "300.00", "currency": currency}
        assert (await api.post(api.operator, "/v1/institutions/hk-alpha/liquidity", payload)).status == 201
    payer = (await api.wallet(alpha, tier=2))["id"]
    other = (await api.wallet(alpha, tier=2))["id"]
    await api.deposit(alpha, payer, "1000.00")
    shop = (await api.wallet(acquirer, owner_kind="merchant", merchant=MERCHANT))["id"]
    alpha_hkd = (await api.wallet(alpha, "HKD", limit_profile="svf-verified"))["id"]
    await api.deposit(alpha, alpha_hkd, "1000.00")
    beta_hkd = (await api.wallet(beta, "HKD", limit_profile="svf-verified"))["id"]
    yield Setup(api, alpha, beta, acquirer, payer, other, shop, beta_hkd, alpha_hkd)


async def test_a_transfer_to_another_institution_records_the_obligation_and_one_within_records_none(setup):
    api = setup.api
    assert (await api.transfer(setup.alpha, setup.payer, setup.shop, "120.00")).status == 201
    assert (await api.transfer(setup.alpha, setup.payer, setup.other, "50.00")).status == 201
    hkd = await api.transfer(setup.alpha, setup.alpha_hkd, setup.beta_hkd, "70.00", currency="HKD")
    assert hkd.status == 201, hkd.body
    assert (await api.balance(setup.acquirer, setup.shop))["posted"] == "120.00"
    position = (await api.get(setup.alpha, "/v1/institutions/hk-alpha/position")).body
    assert position["open_window_net"] == "-120.00"
    assert await setup.obligations(1) == {
        ("hk-alpha", "sz-acq", "CNY", "120.00"),
        ("hk-alpha", "hk-beta", "HKD", "70.00"),
    }


async def test_past_the_cap_in_force_a_transfer_is_refused_whole_and_answered_the_same_on_retry(setup):
    api = setup.api
    assert (await api.transfer(setup.alpha, setup.payer, setup.shop, "250.00")).status == 201
    payload_id = str(uuid7())
    refused = await api.transfer(setup.alpha, setup.payer, setup.shop, "50.01", id=payload_id)
    assert_problem(refused, 422, "net_debit_cap_exceeded")
    assert (await api.balance(setup.alpha, setup.payer))["posted"] == "750.00"
    payload = {"id": str(uuid7()), "amount": "1000.00", "currency": "CNY"}
    assert (await api.post(api.operator, "/v1/institutions/hk-alpha/liquidity", payload)).status == 201
    again = await api.transfer(setup.alpha, setup.payer, setup.shop, "50.01", id=payload_id)
    assert again.status == 422 and again.replayed and again.code == "net_debit_cap_exceeded"
    assert (await api.transfer(setup.alpha, setup.payer, setup.shop, "50.01")).status == 201  # a new id passes
    assert_problem(
        await api.transfer(setup.alpha, setup.payer, setup.shop, "9.99", id=payload_id),
        409,
        "exists_with_different_fields",
    )


async def test_a_hold_owes_nothing_until_posted_and_then_the_amount_posted(setup):
    api = setup.api
    hold = await api.transfer(setup.alpha, setup.payer, setup.shop, "200.00", pending=True)
    voided = await api.transfer(setup.alpha, setup.payer, setup.shop, "30.00", pending=True)
    assert hold.status == voided.status == 201
    assert (await api.get(setup.alpha, "/v1/institutions/hk-alpha/position")).body["open_window_net"] == "0.00"
    posted = await api.post(setup.alpha, f"/v1/transfers/{hold.body['id']}/post", {"amount": "150.00"})
    assert posted.status == 200, posted.body
    assert (await api.post(setup.alpha, f"/v1/transfers/{voided.body['id']}/void")).status == 200
    assert await setup.obligations(1) == {("hk-alpha", "sz-acq", "CNY", "150.00")}


async def test_an_atomic_batch_across_institutions_stays_all_or_none_under_the_cap(setup):
    api = setup.api
    items = [
        {"id": str(uuid7()), "source_wallet_id": setup.payer, "target_wallet_id": target, "amount": amount,
         "currency": "CNY"}
        for target, amount in ((setup.other, "10.00"), (setup.shop, "200.00"), (setup.shop, "100.01"))
    ]  # fmt: skip
    refused = await api.post(setup.alpha, "/v1/transfer-batches", {"transfers": items, "atomic": True})
    assert refused.status == 200, refused.body
    assert [r["status"] for r in refused.body["items"]] == [424, 424, 422]
    assert refused.body["items"][2]["problem"]["code"] == "net_debit_cap_exceeded"
    assert (await api.balance(setup.alpha, setup.payer))["posted"] == "1000.00"
    items[2]["id"], items[2]["amount"] = str(uuid7()), "90.00"
    for item in items[:2]:
        item["id"] = str(uuid7())
    done = await api.post(setup.alpha, "/v1/transfer-batches", {"transfers": items, "atomic": True})
    assert [r["status"] for r in done.body["items"]] == [201, 201, 201], done.body
    again = await api.post(setup.alpha, "/v1/transfer-batches", {"transfers": items, "atomic": True})
    assert [r["status"] for r in again.body["items"]] == [200, 200, 200], again.body
    loose = await api.post(setup.alpha, "/v1/transfer-batches", {"transfers": [
        {**items[1], "id": str(uuid7()), "amount": "0.01"}, {**items[1], "id": str(uuid7()), "amount": "500.00"}
    ], "atomic": False})  # fmt: skip
    assert [r["status"] for r in loose.body["items"]] == [201, 422]
    assert await setup.obligations(1) == {("hk-alpha", "sz-acq", "CNY", "290.01")}


async def test_a_retry_after_the_window_closed_answers_the_original_and_owes_once(setup):
    api = setup.api
    transfer_id = str(uuid7())
    first = await api.transfer(setup.alpha, setup.payer, setup.shop, "80.00", id=transfer_id)
    assert first.status == 201
    assert await setup.obligations(1) == {("hk-alpha", "sz-acq", "CNY", "80.00")}
    again = await api.transfer(setup.alpha, setup.payer, setup.shop, "80.00", id=transfer_id)
    assert again.status == 200 and again.replayed
    assert await setup.obligations(2) == set()
