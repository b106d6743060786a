"""Wallets over HTTP: open (idempotent), read, statement pages, freeze, unfreeze, close, tier
changes, deposits and withdrawals, and every refusal a caller can cause, on both databases."""

from __future__ import annotations

import uuid

import pytest

from ledger.ids import uuid7
from tests.api_support import api, assert_problem, refusals_counted

__all__ = ["api"]

BAD_AMOUNTS = [
    ('"1.001"', "invalid_amount"),
    ('"-5"', "invalid_amount"),
    ("1.5", "invalid_amount"),
    ('"abc"', "invalid_amount"),
    ('"1000000000000000000000"', "invalid_amount"),
    ('""', "invalid_amount"),
    ('"0.00"', "invalid_amount"),
]


async def test_a_wallet_opens_with_its_category_limits_and_reads_back(api):
    alpha = await api.institution("hk-alphapay")
    wallet_id = str(uuid7())
    payload = {"id": wallet_id, "owner_ref": "cust-1", "owner_kind": "person", "currency": "CNY"}
    opened = await api.post(alpha, "/v1/wallets", payload)
    assert opened.status == 201, opened.body
    wallet = opened.body
    assert wallet["id"] == wallet_id and wallet["institution_id"] == "hk-alphapay"
    assert wallet["owner_kind"] == "person" and wallet["currency"] == "CNY" and wallet["status"] == "open"
    assert wallet["tier"] == 4  # the default e-CNY category
    assert wallet["balance"] == {
        "available": "0.00",
        "pending": "0.00",
        "posted": "0.00",
        "pending_debits": "0.00",
        "pending_credits": "0.00",
    }
    assert wallet["limits"]["balance_cap"] == "10000.00" and wallet["limits"]["transfer_cap"] == "2000.00"
    assert wallet["limits"]["daily_debit_cap"] == "5000.00"
    assert wallet["created_at"].endswith("Z")
    read = await api.get(alpha, f"/v1/wallets/{wallet_id}")
    assert read.status == 200 and read.body == wallet

    again = await api.post(alpha, "/v1/wallets", payload)
    assert again.status == 200 and again.replayed and again.body == wallet
    other = await api.post(alpha, "/v1/wallets", payload | {"owner_ref": "cust-2"})
    assert_problem(other, 409, "exists_with_different_fields")


async def test_hkd_and_merchant_wallets_take_their_own_profiles(api):
    alpha = await api.institution("hk-alphapay")
    hkd = await api.wallet(alpha, "HKD")
    assert hkd["tier"] is None and hkd["limit_profile"] == "svf-basic" and hkd["limits"]["balance_cap"] == "3000.00"
    sz = await api.institution("sz-bank", "sz_acquirer")
    merchant = {"name": "Noodle House", "city": "Shenzhen", "category_code": "5812"}
    shop = await api.wallet(sz, "CNY", owner_kind="merchant", merchant=merchant)
    assert shop["merchant"] == merchant and shop["owner_kind"] == "merchant"


@pytest.mark.parametrize(
    ("fields", "pointer"),
    [
        ({"currency": "XYZ"}, "#/currency"),
        ({"currency": "cny"}, "#/currency"),
        ({"tier": 5}, "#/tier"),
        ({"owner_kind": "robot"}, "#/owner_kind"),
        ({"owner_ref": ""}, "#/owner_ref"),
        ({"id": "not-a-uuid"}, "#/id"),
    ],
)
async def test_malformed_wallets_are_invalid_request(api, fields, pointer):
    alpha = await api.institution("hk-alphapay")
    payload = {"owner_ref": "c", "owner_kind": "person", "currency": "CNY"} | fields
    problem = assert_problem(await api.post(alpha, "/v1/wallets", payload), 400, "invalid_request")
    assert problem["errors"][0]["pointer"] == pointer


async def test_a_tier_on_an_hkd_wallet_is_invalid_request(api):
    alpha = await api.institution("hk-alphapay")
    answer = await api.post(
        alpha, "/v1/wallets", {"owner_ref": "c", "owner_kind": "person", "currency": "HKD", "tier": 2}
    )
    assert_problem(answer, 400, "invalid_request")


async def test_another_institutions_wallet_is_not_found(api):
    alpha = await api.institution("hk-alphapay")
    beta = await api.institution("hk-beta")
    wallet = await api.wallet(alpha)
    await api.deposit(alpha, wallet["id"], "10.00")
    path = f"/v1/wallets/{wallet['id']}"
    for answer in [
        await api.get(beta, path),
        await api.get(beta, f"{path}/transfers"),
        await api.post(beta, f"{path}/freeze"),
        await api.post(beta, f"{path}/close"),
        await api.post(beta, f"{path}/tier", {"tier": 2}),
        await api.post(beta, f"{path}/deposits", {"id": str(uuid7()), "amount": "1.00"}),
        await api.post(beta, f"{path}/withdrawals", {"id": str(uuid7()), "amount": "1.00"}),
    ]:
        # The same answer as for a wallet that does not exist: nothing about alpha's leaks.
        assert_problem(answer, 404, "not_found")
    assert_problem(await api.get(beta, f"/v1/wallets/{uuid.uuid4()}"), 404, "not_found")
    assert_problem(await api.get(beta, "/v1/wallets/not-a-uuid"), 404, "not_found")
    assert (await api.balance(alpha, wallet["id"]))["posted"] == "10.00"


async def test_deposits_and_withdrawals_move_money_and_replay_by_id(api):
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)
    deposit = {"id": str(uuid7()), "amount": "100.50"}
    first = await api.post(alpha, f"/v1/wallets/{wallet['id']}/deposits", deposit)
    assert first.status == 201, first.body
    assert first.body["id"] == deposit["id"] and first.body["kind"] == "deposit" and first.body["status"] == "posted"
    assert first.body["amount"] == "100.50" and first.body["currency"] == "CNY"
    assert first.body["target_wallet_id"] == wallet["id"]
    again = await api.post(alpha, f"/v1/wallets/{wallet['id']}/deposits", deposit)
    assert again.status == 200 and again.replayed and again.body == first.body
    changed = await api.post(alpha, f"/v1/wallets/{wallet['id']}/deposits", deposit | {"amount": "100.51"})
    assert_problem(changed, 409, "exists_with_different_fields")

    withdrawal = await api.post(
        alpha, f"/v1/wallets/{wallet['id']}/withdrawals", {"id": str(uuid7()), "amount": "0.50"}
    )
    assert withdrawal.status == 201 and withdrawal.body["kind"] == "withdrawal"
    assert (await api.balance(alpha, wallet["id"]))["available"] == "100.00"

    before = refusals_counted(api, "insufficient_funds")
    too_much = await api.post(
        alpha, f"/v1/wallets/{wallet['id']}/withdrawals", {"id": str(uuid7()), "amount": "100.01"}
    )
    assert_problem(too_much, 422, "insufficient_funds")
    assert refusals_counted(api, "insufficient_funds") == before + 1


@pytest.mark.parametrize(("amount", "code"), BAD_AMOUNTS)
async def test_bad_deposit_amounts_are_invalid_amount(api, amount, code):
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)
    body = f'{{"id": "{uuid7()}", "amount": {amount}}}'.encode()
    problem = assert_problem(await api.post(alpha, f"/v1/wallets/{wallet['id']}/deposits", body=body), 400, code)
    assert problem["errors"][0]["pointer"] == "#/amount"


async def test_the_balance_cap_refuses_a_deposit(api):
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)  # tier 4: at most 10,000.00
    await api.deposit(alpha, wallet["id"], "10000.00")
    over = await api.post(alpha, f"/v1/wallets/{wallet['id']}/deposits", {"id": str(uuid7()), "amount": "0.01"})
    assert_problem(over, 422, "limit_exceeded")


async def test_freeze_unfreeze_and_close(api):
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)
    path = f"/v1/wallets/{wallet['id']}"
    await api.deposit(alpha, wallet["id"], "5.00")

    frozen = await api.post(alpha, f"{path}/freeze")
    assert frozen.status == 200 and frozen.body["status"] == "frozen"
    refused = await api.post(alpha, f"{path}/deposits", {"id": str(uuid7()), "amount": "1.00"})
    assert_problem(refused, 422, "wallet_frozen")
    assert (await api.post(alpha, f"{path}/unfreeze")).body["status"] == "open"

    assert_problem(await api.post(alpha, f"{path}/close"), 422, "wallet_not_empty")
    await api.post(alpha, f"{path}/withdrawals", {"id": str(uuid7()), "amount": "5.00"})
    closed = await api.post(alpha, f"{path}/close")
    assert closed.status == 200 and closed.body["status"] == "closed"
    refused = await api.post(alpha, f"{path}/deposits", {"id": str(uuid7()), "amount": "1.00"})
    assert_problem(refused, 422, "wallet_closed")
    assert_problem(await api.post(alpha, f"{path}/unfreeze"), 422, "wallet_closed")


async def test_tier_changes_raise_caps_and_a_downgrade_below_the_balance_is_refused(api):
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)
    path = f"/v1/wallets/{wallet['id']}/tier"
    upgraded = await api.post(alpha, path, {"tier": 2})
    assert upgraded.status == 200 and upgraded.body["tier"] == 2
    assert upgraded.body["limits"]["balance_cap"] == "500000.00"
    await api.deposit(alpha, wallet["id"], "15000.00")
    assert_problem(await api.post(alpha, path, {"tier": 4}), 422, "limit_exceeded")
    assert_problem(await api.post(alpha, path, {"tier": 0}), 400, "invalid_request")
    assert_problem(await api.post(alpha, path, {"tier": "2"}), 400, "invalid_request")


async def test_the_statement_is_newest_first_with_balances_and_pages(api):
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)
    for amount in ("1.00", "2.00", "3.00"):
        await api.deposit(alpha, wallet["id"], amount)
    path = f"/v1/wallets/{wallet['id']}/transfers"
    page = await api.get(alpha, f"{path}?limit=2")
    assert page.status == 200, page.body
    assert [item["amount"] for item in page.body["items"]] == ["3.00", "2.00"]
    assert [item["balance_after"]["posted"] for item in page.body["items"]] == ["6.00", "3.00"]
    assert all(item["side"] == "credit" and item["kind"] == "deposit" for item in page.body["items"])
    rest = await api.get(alpha, f"{path}?limit=2&cursor={page.body['next_cursor']}")
    assert [item["amount"] for item in rest.body["items"]] == ["1.00"] and rest.body["next_cursor"] is None
    everything = await api.get(alpha, path)
    assert len(everything.body["items"]) == 3

    for query in ("limit=0", "limit=501", "limit=abc", "cursor=xyz"):
        assert_problem(await api.get(alpha, f"{path}?{query}"), 400, "invalid_request")
