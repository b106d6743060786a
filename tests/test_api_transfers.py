"""Transfers over HTTP: one at a time, idempotent and conflicting replays, replayed refusals,
tenancy of ids, category caps, wallet states, two-phase holds, batches, on both databases."""

from __future__ import annotations

import uuid

import pytest

from ledger.ids import uuid7
from tests.api_support import api, assert_problem, refusals_counted
from tests.test_api_wallets import BAD_AMOUNTS

__all__ = ["api"]


async def corridor(api, *, tier: int = 2, funds: str = "1000.00"):
    """alpha (Hong Kong) with a funded CNY personal wallet, and a Shenzhen merchant wallet."""
    alpha = await api.institution("hk-alphapay")
    sz = await api.institution("sz-bank", "sz_acquirer")
    payer = await api.wallet(alpha, "CNY", tier=tier)
    if funds:
        await api.deposit(alpha, payer["id"], funds)
    merchant = {"name": "Noodle House", "city": "Shenzhen", "category_code": "5812"}
    shop = await api.wallet(sz, "CNY", owner_kind="merchant", merchant=merchant)
    return alpha, sz, payer, shop


def transfer_payload(source: str, target: str, amount: str, **fields) -> dict:
    ids = {"id": str(uuid7()), "source_wallet_id": source, "target_wallet_id": target}
    return ids | {"amount": amount, "currency": "CNY"} | fields


async def test_a_transfer_moves_money_and_reads_back(api):
    alpha, sz, payer, shop = await corridor(api)
    payload = transfer_payload(payer["id"], shop["id"], "128.50", metadata={"order": "A-1"})
    answer = await api.post(alpha, "/v1/transfers", payload)
    assert answer.status == 201, answer.body
    body = answer.body
    assert body["id"] == payload["id"] and body["status"] == "posted" and body["kind"] == "transfer"
    assert body["source_wallet_id"] == payer["id"] and body["target_wallet_id"] == shop["id"]
    assert body["amount"] == "128.50" and body["currency"] == "CNY" and body["created_at"].endswith("Z")
    assert body["metadata"] == {"order": "A-1"}
    assert not answer.replayed
    assert (await api.balance(alpha, payer["id"]))["available"] == "871.50"
    assert (await api.balance(sz, shop["id"]))["posted"] == "128.50"
    read = await api.get(alpha, f"/v1/transfers/{payload['id']}")
    assert read.status == 200 and read.body == body and not read.replayed


async def test_the_same_id_and_body_replays_and_another_body_conflicts(api):
    alpha, _, payer, shop = await corridor(api)
    payload = transfer_payload(payer["id"], shop["id"], "10.00")
    first = await api.post(alpha, "/v1/transfers", payload)
    again = await api.post(alpha, "/v1/transfers", payload)
    assert again.status == 200 and again.replayed and again.body == first.body
    conflict = await api.post(alpha, "/v1/transfers", payload | {"amount": "10.01"})
    assert_problem(conflict, 409, "exists_with_different_fields")
    assert (await api.balance(alpha, payer["id"]))["available"] == "990.00"  # moved once


async def test_a_refusal_replays_with_the_same_status_and_body(api):
    alpha, _, payer, shop = await corridor(api, funds="5.00")
    payload = transfer_payload(payer["id"], shop["id"], "10.00")
    before = refusals_counted(api, "insufficient_funds")
    first = await api.post(alpha, "/v1/transfers", payload)
    assert_problem(first, 422, "insufficient_funds")
    assert not first.replayed
    # Money arrives meanwhile, but the id's answer does not change: it was refused.
    await api.deposit(alpha, payer["id"], "100.00")
    again = await api.post(alpha, "/v1/transfers", payload)
    assert again.status == 422 and again.replayed
    assert again.raw == first.raw
    assert refusals_counted(api, "insufficient_funds") == before + 2
    # Reading the id answers the refusal too.
    read = await api.get(alpha, f"/v1/transfers/{payload['id']}")
    assert read.status == 422 and read.body == first.body


async def test_transfer_ids_belong_to_the_institution_that_chose_them(api):
    alpha, sz, payer, shop = await corridor(api)
    beta = await api.institution("hk-beta")
    beta_wallet = await api.wallet(beta, "CNY", tier=2)
    await api.deposit(beta, beta_wallet["id"], "50.00")
    shared_id = str(uuid7())
    mine = await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], shop["id"], "1.00", id=shared_id))
    assert mine.status == 201
    # The same id with a different body from another institution is its own transfer, not a 409.
    theirs = await api.post(
        beta, "/v1/transfers", transfer_payload(beta_wallet["id"], shop["id"], "2.00", id=shared_id)
    )
    assert theirs.status == 201, theirs.body
    assert theirs.body["amount"] == "2.00" and not theirs.replayed
    assert (await api.get(alpha, f"/v1/transfers/{shared_id}")).body["amount"] == "1.00"
    assert (await api.get(beta, f"/v1/transfers/{shared_id}")).body["amount"] == "2.00"
    # An id only alpha used is unknown to everyone else.
    alpha_only = str(uuid7())
    await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], shop["id"], "1.00", id=alpha_only))
    assert_problem(await api.get(beta, f"/v1/transfers/{alpha_only}"), 404, "not_found")
    assert_problem(await api.get(sz, f"/v1/transfers/{alpha_only}"), 404, "not_found")
    assert_problem(await api.post(beta, f"/v1/transfers/{alpha_only}/void"), 404, "pending_transfer_not_found")
    assert_problem(await api.get(alpha, f"/v1/transfers/{uuid.uuid4()}"), 404, "not_found")


async def test_the_source_must_be_the_callers_wallet(api):
    alpha, sz, payer, shop = await corridor(api)
    stolen = await api.post(sz, "/v1/transfers", transfer_payload(payer["id"], shop["id"], "1.00"))
    assert_problem(stolen, 404, "not_found")
    nowhere = await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], str(uuid.uuid4()), "1.00"))
    assert_problem(nowhere, 404, "not_found")
    assert (await api.balance(alpha, payer["id"]))["available"] == "1000.00"


@pytest.mark.parametrize(("amount", "code"), BAD_AMOUNTS)
async def test_bad_transfer_amounts_are_invalid_amount(api, amount, code):
    alpha, _, payer, shop = await corridor(api, funds="")
    body = (
        f'{{"id": "{uuid7()}", "source_wallet_id": "{payer["id"]}", "target_wallet_id": "{shop["id"]}", '
        f'"amount": {amount}, "currency": "CNY"}}'
    ).encode()
    problem = assert_problem(await api.post(alpha, "/v1/transfers", body=body), 400, code)
    assert problem["errors"][0]["pointer"] == "#/amount"


async def test_currencies_must_exist_and_match(api):
    alpha, _, payer, shop = await corridor(api)
    unknown = await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], shop["id"], "1.00", currency="XYZ"))
    problem = assert_problem(unknown, 400, "invalid_request")
    assert problem["errors"][0]["pointer"] == "#/currency"
    hkd = await api.wallet(alpha, "HKD")
    mismatch = await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], hkd["id"], "1.00"))
    assert_problem(mismatch, 422, "currency_mismatch")


async def test_frozen_and_closed_wallets_refuse_transfers(api):
    alpha, sz, payer, shop = await corridor(api)
    await api.post(sz, f"/v1/wallets/{shop['id']}/freeze")
    assert_problem(
        await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], shop["id"], "1.00")), 422, "wallet_frozen"
    )
    empty = await api.wallet(
        sz, "CNY", owner_kind="merchant", merchant={"name": "B", "city": "SZ", "category_code": "5411"}
    )
    await api.post(sz, f"/v1/wallets/{empty['id']}/close")
    assert_problem(
        await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], empty["id"], "1.00")), 422, "wallet_closed"
    )


async def test_category_caps_per_payment_per_day_and_balance(api):
    alpha, _, payer, shop = await corridor(api, tier=4, funds="9000.00")
    before = refusals_counted(api, "limit_exceeded")
    over_payment = await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], shop["id"], "2000.01"))
    assert_problem(over_payment, 422, "limit_exceeded")
    for _ in range(2):
        assert (
            await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], shop["id"], "2000.00"))
        ).status == 201
    assert (await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], shop["id"], "1000.00"))).status == 201
    over_day = await api.post(alpha, "/v1/transfers", transfer_payload(payer["id"], shop["id"], "0.01"))
    assert_problem(over_day, 422, "limit_exceeded")
    # The balance cap: a tier-4 target may hold at most 10,000.00.
    full = await api.wallet(alpha, "CNY", tier=4)
    await api.deposit(alpha, full["id"], "9999.00")
    big = await api.wallet(alpha, "CNY", tier=1)
    await api.deposit(alpha, big["id"], "50.00")
    over_balance = await api.post(alpha, "/v1/transfers", transfer_payload(big["id"], full["id"], "1.01"))
    assert_problem(over_balance, 422, "limit_exceeded")
    assert refusals_counted(api, "limit_exceeded") == before + 3


async def test_a_pending_transfer_posts_in_part_and_then_is_resolved(api):
    alpha, sz, payer, shop = await corridor(api)
    payload = transfer_payload(payer["id"], shop["id"], "100.00", pending=True, timeout_seconds=600)
    held = await api.post(alpha, "/v1/transfers", payload)
    assert held.status == 201 and held.body["status"] == "pending", held.body
    assert held.body["timeout_seconds"] == 600 and held.body["expires_at"].endswith("Z")
    balance = await api.balance(alpha, payer["id"])
    assert balance["pending"] == "-100.00"
    assert balance["available"] == "900.00" and balance["posted"] == "1000.00" and balance["pending_debits"] == "100.00"

    too_much = await api.post(alpha, f"/v1/transfers/{payload['id']}/post", {"amount": "100.01"})
    assert_problem(too_much, 422, "invalid_amount")
    assert_problem(
        await api.post(alpha, f"/v1/transfers/{payload['id']}/post", {"amount": "1.001"}), 400, "invalid_amount"
    )
    posted = await api.post(alpha, f"/v1/transfers/{payload['id']}/post", {"amount": "60.00"})
    assert posted.status == 200, posted.body
    assert posted.body["amount"] == "60.00"
    assert (await api.balance(alpha, payer["id"]))["available"] == "940.00"
    assert (await api.balance(sz, shop["id"]))["posted"] == "60.00"
    replay = await api.post(alpha, f"/v1/transfers/{payload['id']}/post", {"amount": "60.00"})
    assert replay.status == 200 and replay.replayed
    assert_problem(
        await api.post(alpha, f"/v1/transfers/{payload['id']}/void"), 409, "pending_transfer_already_resolved"
    )
    read = await api.get(alpha, f"/v1/transfers/{payload['id']}")
    assert read.body["status"] == "posted_from_pending"


async def test_a_pending_transfer_posts_whole_without_a_body_or_is_voided(api):
    alpha, _, payer, shop = await corridor(api)
    whole = transfer_payload(payer["id"], shop["id"], "30.00", pending=True)
    await api.post(alpha, "/v1/transfers", whole)
    posted = await api.post(alpha, f"/v1/transfers/{whole['id']}/post")
    assert posted.status == 200 and posted.body["amount"] == "30.00", posted.body

    voided = transfer_payload(payer["id"], shop["id"], "20.00", pending=True)
    await api.post(alpha, "/v1/transfers", voided)
    answer = await api.post(alpha, f"/v1/transfers/{voided['id']}/void")
    assert answer.status == 200, answer.body
    assert (await api.balance(alpha, payer["id"]))["available"] == "970.00"
    assert (await api.get(alpha, f"/v1/transfers/{voided['id']}")).body["status"] == "voided"
    again = await api.post(alpha, f"/v1/transfers/{voided['id']}/post")
    assert_problem(again, 409, "pending_transfer_already_resolved")
    assert_problem(await api.post(alpha, f"/v1/transfers/{uuid7()}/post"), 404, "pending_transfer_not_found")
    assert_problem(await api.post(alpha, "/v1/transfers/not-a-uuid/void"), 404, "pending_transfer_not_found")


async def test_an_expired_hold_cannot_be_posted(api, clock):
    alpha, _, payer, shop = await corridor(api)
    payload = transfer_payload(payer["id"], shop["id"], "10.00", pending=True, timeout_seconds=60)
    assert (await api.post(alpha, "/v1/transfers", payload)).status == 201
    clock.advance(seconds=61)
    assert await api.ledger.expire_pending() == 1
    assert_problem(await api.post(alpha, f"/v1/transfers/{payload['id']}/post"), 409, "pending_transfer_expired")
    assert (await api.get(alpha, f"/v1/transfers/{payload['id']}")).body["status"] == "expired"
    assert (await api.balance(alpha, payer["id"]))["available"] == "1000.00"


async def test_a_batch_answers_per_transfer(api):
    alpha, _, payer, shop = await corridor(api, funds="100.00")
    good = transfer_payload(payer["id"], shop["id"], "10.00")
    broke = transfer_payload(payer["id"], shop["id"], "500.00")
    answer = await api.post(alpha, "/v1/transfer-batches", {"transfers": [good, broke], "atomic": False})
    assert answer.status == 200, answer.body
    first, second = answer.body["items"]
    assert first["id"] == good["id"] and first["status"] == 201 and first["transfer"]["amount"] == "10.00"
    assert second["id"] == broke["id"] and second["status"] == 422
    assert second["problem"]["code"] == "insufficient_funds" and second["transfer"] is None
    assert (await api.balance(alpha, payer["id"]))["available"] == "90.00"
    again = await api.post(alpha, "/v1/transfer-batches", {"transfers": [good], "atomic": False})
    assert again.body["items"][0]["status"] == 200 and again.body["items"][0]["replayed"] is True


async def test_an_atomic_batch_is_all_or_none(api):
    alpha, _, payer, shop = await corridor(api, funds="100.00")
    good = transfer_payload(payer["id"], shop["id"], "10.00")
    broke = transfer_payload(payer["id"], shop["id"], "500.00")
    answer = await api.post(alpha, "/v1/transfer-batches", {"transfers": [good, broke], "atomic": True})
    assert answer.status == 200, answer.body
    statuses = [(item["status"], item["problem"]["code"]) for item in answer.body["items"]]
    assert statuses == [(424, "invalid_request"), (422, "insufficient_funds")]
    assert (await api.balance(alpha, payer["id"]))["available"] == "100.00"
    fine = [transfer_payload(payer["id"], shop["id"], "10.00") for _ in range(3)]
    answer = await api.post(alpha, "/v1/transfer-batches", {"transfers": fine, "atomic": True})
    assert [item["status"] for item in answer.body["items"]] == [201, 201, 201]
    assert (await api.balance(alpha, payer["id"]))["available"] == "70.00"


async def test_a_batch_with_a_bad_item_is_refused_whole_with_its_pointer(api):
    alpha, _, payer, shop = await corridor(api)
    items = [transfer_payload(payer["id"], shop["id"], "1.00"), transfer_payload(payer["id"], shop["id"], "1.001")]
    problem = assert_problem(await api.post(alpha, "/v1/transfer-batches", {"transfers": items}), 400, "invalid_amount")
    assert problem["errors"][0]["pointer"] == "#/transfers/1/amount"
    assert_problem(await api.post(alpha, "/v1/transfer-batches", {"transfers": []}), 400, "invalid_request")
    assert (await api.balance(alpha, payer["id"]))["available"] == "1000.00"
