"""Wallets opened in bulk (``POST /v1/wallet-batches``), as the load tests seed them, and
``GET /v1/whoami`` (the signed endpoint that does no ledger work), on both databases."""

from __future__ import annotations

from ledger.ids import uuid7
from tests.api_support import api, assert_problem

__all__ = ["api"]


def person(wallet_id: str, ref: str, **fields) -> dict:
    return {"id": wallet_id, "owner_ref": ref, "owner_kind": "person", "currency": "CNY"} | fields


SHOP = {"name": "Futian Dim Sum House", "city": "Shenzhen", "category_code": "5812"}


async def test_a_batch_opens_each_wallet_as_the_single_route_would_and_answers_per_item(api):
    alpha = await api.institution("hk-alphapay")
    ids = [str(uuid7()) for _ in range(3)]
    batch = {
        "wallets": [
            person(ids[0], "cust-1", tier=2),
            {"id": ids[1], "owner_ref": "shop-1", "owner_kind": "merchant", "currency": "CNY", "merchant": SHOP},
            person(ids[2], "cust-2", currency="HKD"),
        ]
    }
    answer = await api.post(alpha, "/v1/wallet-batches", batch)
    assert answer.status == 200, answer.body
    items = answer.body["items"]
    assert [item["status"] for item in items] == [201, 201, 201]
    assert [item["id"] for item in items] == ids
    assert [item["wallet"]["limit_profile"] for item in items] == ["ecny-2", "merchant", "svf-basic"]
    assert not any(item["replayed"] for item in items)
    # Each reads back through the single route exactly as the batch answered it.
    for item in items:
        single = await api.get(alpha, f"/v1/wallets/{item['id']}")
        assert single.status == 200 and single.body == item["wallet"]
    # Funded and moved like any wallet.
    await api.deposit(alpha, ids[0], "100.00")
    assert (await api.transfer(alpha, ids[0], ids[1], "30.00")).status == 201


async def test_a_batch_again_is_replayed_per_wallet_and_other_fields_conflict(api):
    alpha = await api.institution("hk-alphapay")
    ids = [str(uuid7()) for _ in range(2)]
    batch = {"wallets": [person(ids[0], "cust-1"), person(ids[1], "cust-2")]}
    first = await api.post(alpha, "/v1/wallet-batches", batch)
    assert [item["status"] for item in first.body["items"]] == [201, 201]
    again = await api.post(alpha, "/v1/wallet-batches", batch)
    assert again.status == 200
    assert [(item["status"], item["replayed"]) for item in again.body["items"]] == [(200, True), (200, True)]
    assert [item["wallet"] for item in again.body["items"]] == [item["wallet"] for item in first.body["items"]]
    # The single route agrees: the same body replays, another body conflicts.
    assert (await api.post(alpha, "/v1/wallets", person(ids[0], "cust-1"))).status == 200
    changed = {"wallets": [person(ids[0], "someone-else"), person(str(uuid7()), "cust-3")]}
    mixed = await api.post(alpha, "/v1/wallet-batches", changed)
    assert mixed.status == 200
    conflict, opened = mixed.body["items"]
    assert conflict["status"] == 409 and conflict["problem"]["code"] == "exists_with_different_fields"
    assert conflict["wallet"] is None and conflict["id"] == ids[0]
    assert opened["status"] == 201


async def test_a_refused_item_does_not_stop_the_others(api):
    alpha = await api.institution("hk-alphapay")
    good = str(uuid7())
    batch = {
        "wallets": [
            person(str(uuid7()), "cust-1", currency="HKD", tier=2),  # a tier is for CNY wallets only
            person(good, "cust-2"),
            {"id": str(uuid7()), "owner_ref": "shop", "owner_kind": "merchant", "currency": "CNY"},  # no merchant
        ]
    }
    answer = await api.post(alpha, "/v1/wallet-batches", batch)
    assert answer.status == 200, answer.body
    statuses = [(item["status"], (item["problem"] or {}).get("code")) for item in answer.body["items"]]
    assert statuses == [(400, "invalid_request"), (201, None), (400, "invalid_request")]
    assert (await api.get(alpha, f"/v1/wallets/{good}")).status == 200
    refused_id = batch["wallets"][0]["id"]
    assert (await api.get(alpha, f"/v1/wallets/{refused_id}")).status == 404


async def test_a_malformed_batch_is_refused_whole(api):
    alpha = await api.institution("hk-alphapay")
    same = str(uuid7())
    duplicate = await api.post(alpha, "/v1/wallet-batches", {"wallets": [person(same, "a"), person(same, "b")]})
    problem = assert_problem(duplicate, 400, "invalid_request")
    assert problem["errors"][0]["pointer"] == "#/wallets"
    unknown = await api.post(alpha, "/v1/wallet-batches", {"wallets": [person(str(uuid7()), "a", currency="EUR")]})
    assert assert_problem(unknown, 400, "invalid_request")["errors"][0]["pointer"] == "#/wallets/0/currency"
    assert_problem(await api.post(alpha, "/v1/wallet-batches", {"wallets": []}), 400, "invalid_request")
    too_many = {"wallets": [{"owner_ref": "c", "owner_kind": "person", "currency": "CNY"}] * 1001}
    assert_problem(await api.post(alpha, "/v1/wallet-batches", too_many), 400, "invalid_request")
    assert_problem(await api.post(None, "/v1/wallet-batches", {"wallets": []}), 401, "signature_missing")


async def test_whoami_answers_the_signer_and_needs_a_signature(api):
    alpha = await api.institution("hk-alphapay")
    answer = await api.get(alpha, "/v1/whoami")
    assert answer.status == 200, answer.body
    assert answer.body["institution_id"] == "hk-alphapay"
    assert answer.body["covered_components"] == ["@method", "@path"]
    assert answer.body["signed_at"].endswith("Z")
    assert_problem(await api.get(None, "/v1/whoami"), 401, "signature_missing")
