"""LedgerClient's typed conveniences against the real app over loopback HTTP, on both databases."""

from __future__ import annotations

import pytest

from service.client import LedgerClient, NotFoundError, RefusedError, transfer_payload
from tests.api_support import Party, api

__all__ = ["api"]


def client_for(api, party: Party) -> LedgerClient:
    return LedgerClient(str(api.client.make_url("")).rstrip("/"), key_id=party.id, signing_key=party.key, retries_max=0)


async def test_the_client_covers_the_resource_endpoints(api):
    alpha = Party("hk-alphapay")
    sz = Party("sz-bank")
    async with client_for(api, api.operator) as operator:
        created = await operator.create_institution(alpha.id, "AlphaPay", "hk_payment_institution", alpha.public_key)
        assert created["id"] == alpha.id
        await operator.create_institution(sz.id, "SZ Bank", "sz_acquirer", sz.public_key)
        assert [item["id"] for item in (await operator.list_institutions(limit=500))["items"]] == [
            alpha.id,
            "operator",
            sz.id,
        ]
        assert (await operator.get_institution(alpha.id))["name"] == "AlphaPay"
        # Liquidity, so that alpha's transfers to sz's merchant fit its net debit cap in force.
        assert (await operator.prefund(alpha.id, "1000.00"))["position"]["cap_in_force"] == "1000.00"
    async with client_for(api, alpha) as client, client_for(api, sz) as acquirer:
        wallet = await client.create_wallet("cust-1", "CNY", tier=2)
        shop = await acquirer.create_wallet(
            "shop-1", "CNY", owner_kind="merchant", merchant={"name": "N", "city": "SZ", "category_code": "5812"}
        )
        assert (await client.deposit(wallet["id"], "100.00"))["kind"] == "deposit"
        assert (await client.withdraw(wallet["id"], "10.00"))["kind"] == "withdrawal"
        moved = await client.transfer(wallet["id"], shop["id"], "12.50", "CNY", metadata={"order": "1"})
        assert moved["status"] == "posted" and (await client.get_transfer(moved["id"])) == moved
        held = await client.transfer(wallet["id"], shop["id"], "5.00", "CNY", pending=True)
        assert (await client.post_transfer(held["id"], "2.00"))["amount"] == "2.00"
        other = await client.transfer(wallet["id"], shop["id"], "1.00", "CNY", pending=True)
        assert (await client.void_transfer(other["id"]))["kind"] == "void"
        batch = await client.transfer_batch(
            [transfer_payload(wallet["id"], shop["id"], "1.00", "CNY") for _ in range(2)], atomic=True
        )
        assert [item["status"] for item in batch["items"]] == [201, 201]
        assert (await client.get_wallet(wallet["id"]))["balance"]["available"] == "73.50"
        page = await client.statement(wallet["id"], limit=2)
        assert len(page["items"]) == 2 and page["next_cursor"]
        assert (await client.change_tier(wallet["id"], 1))["tier"] == 1
        assert (await client.freeze_wallet(wallet["id"]))["status"] == "frozen"
        assert (await client.unfreeze_wallet(wallet["id"]))["status"] == "open"
        assert (await client.audit_head())["sequence"] >= 1
        with pytest.raises(RefusedError) as refused:
            await client.transfer(wallet["id"], shop["id"], "1000.00", "CNY")
        assert refused.value.code == "insufficient_funds"
        with pytest.raises(NotFoundError):
            await client.get_wallet(shop["id"])
        new_key = Party(alpha.id)
        assert len((await client.add_key(alpha.id, new_key.public_key))["keys"]) == 2
        retired = await client.retire_key(alpha.id, new_key.public_key)
        assert [key["active"] for key in retired["keys"]] == [True, False]
        empty = await client.create_wallet("cust-2", "HKD")
        assert (await client.close_wallet(empty["id"]))["status"] == "closed"
