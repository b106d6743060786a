"""The corridor over signed HTTP on SQLite and PostgreSQL: rates, quotes, payments, refunds,
liquidity and positions, a window closed into a batch, settled or unwound, and its signed report in
JSON and CSV; institutions see only their own part, and every refusal is a problem with its code."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from ledger.ids import uuid7
from settlement.reports import verify_signed
from tests.api_support import Api, Party, api, assert_problem

__all__ = ["api"]


@dataclass
class Corridor:
    api: Api
    alpha: Party
    beta: Party
    acquirer: Party
    alpha_customer: str
    beta_customer: str
    merchant: str

    async def quote(self, party: Party, target_amount: str) -> dict:
        answer = await self.api.post(
            party, "/v1/fx/quotes", {"source_currency": "HKD", "target_currency": "CNY", "target_amount": target_amount}
        )
        assert answer.status == 201, answer.body
        return answer.body

    async def pay(self, party: Party, customer: str, amount: str, **fields):
        quote_id = fields.pop("quote_id", None) or (await self.quote(party, amount))["id"]
        payload = {
            "id": str(uuid7()), "payer_wallet_id": customer, "merchant_wallet_id": self.merchant,
            "amount": amount, "currency": "CNY", "quote_id": quote_id,
        } | fields  # fmt: skip
        return await self.api.post(party, "/v1/payments", payload)

    async def liquidity(self, party: Party, amount: str):
        payload = {"id": str(uuid7()), "amount": amount, "currency": "CNY"}
        return await self.api.post(self.api.operator, f"/v1/institutions/{party.id}/liquidity", payload)


@pytest.fixture
async def corridor(api) -> AsyncIterator[Corridor]:
    rate = {"source_currency": "HKD", "target_currency": "CNY", "mid_rate": "0.9234", "spread_bps": 50}
    assert (await api.post(api.operator, "/v1/fx/rates", rate)).status == 201
    parties = {}
    for slug, kind, cap in (
        ("hk-alpha", "hk_payment_institution", "5000.00"),
        ("hk-beta", "hk_payment_institution", "5000.00"),
        ("sz-acq", "sz_acquirer", None),
        ("settlement-bank", "settlement_bank", None),
    ):
        party = Party(slug)
        payload = {"id": slug, "name": slug, "kind": kind, "public_key": party.public_key}
        if cap is not None:
            payload["net_debit_cap"] = {"amount": cap, "currency": "CNY"}
        assert (await api.post(api.operator, "/v1/institutions", payload)).status == 201
        parties[slug] = party
    customers = {}
    for slug in ("hk-alpha", "hk-beta"):
        wallet = await api.wallet(parties[slug], "HKD", limit_profile="svf-verified")
        await api.deposit(parties[slug], wallet["id"], "100000.00")
        customers[slug] = wallet["id"]
    merchant = await api.wallet(
        parties["sz-acq"],
        "CNY",
        owner_kind="merchant",
        merchant={"name": "Tea", "city": "Shenzhen", "category_code": "5812"},
    )
    corridor = Corridor(
        api, parties["hk-alpha"], parties["hk-beta"], parties["sz-acq"], customers["hk-alpha"], customers["hk-beta"],
        merchant["id"],
    )  # fmt: skip
    for party in (corridor.alpha, corridor.beta):
        assert (await corridor.liquidity(party, "5000.00")).status == 201
    yield corridor


async def test_a_payment_pays_the_exact_cny_price_and_shows_in_the_payers_position(corridor):
    api = corridor.api
    answer = await corridor.pay(corridor.alpha, corridor.alpha_customer, "128.50")
    assert answer.status == 201, answer.body
    payment = answer.body
    assert (payment["target_amount"], payment["currency"], payment["status"]) == ("128.50", "CNY", "completed")
    assert payment["settlement_window_id"] == 1
    assert (await api.balance(corridor.acquirer, corridor.merchant))["posted"] == "128.50"
    assert (await api.get(corridor.alpha, f"/v1/payments/{payment['id']}")).body == payment
    assert (await api.get(corridor.beta, f"/v1/payments/{payment['id']}")).status == 404
    position = (await api.get(corridor.alpha, "/v1/institutions/hk-alpha/position")).body
    assert (position["open_window_net"], position["cap_in_force"], position["liquidity"]) == (
        "-128.50", "5000.00", "5000.00",
    )  # fmt: skip
    assert (await api.get(corridor.beta, "/v1/institutions/hk-alpha/position")).status == 404


async def test_payment_refusals_have_their_codes_replay_and_leave_nothing_behind(corridor):
    api = corridor.api
    before = await api.balance(corridor.alpha, corridor.alpha_customer)
    over_cap = await corridor.pay(corridor.alpha, corridor.alpha_customer, "5000.01")
    assert_problem(over_cap, 422, "net_debit_cap_exceeded")
    assert await api.balance(corridor.alpha, corridor.alpha_customer) == before
    quote = await corridor.quote(corridor.alpha, "10.00")
    first = await corridor.pay(corridor.alpha, corridor.alpha_customer, "10.00", quote_id=quote["id"])
    assert first.status == 201
    reused = await corridor.pay(corridor.alpha, corridor.alpha_customer, "10.00", quote_id=quote["id"])
    assert_problem(reused, 409, "quote_already_used")
    foreign = await corridor.pay(corridor.beta, corridor.beta_customer, "10.00", quote_id=quote["id"])
    assert_problem(foreign, 404, "not_found")
    wrong_amount = await corridor.pay(
        corridor.alpha, corridor.alpha_customer, "11.00", quote_id=(await corridor.quote(corridor.alpha, "10.00"))["id"]
    )
    assert_problem(wrong_amount, 400, "invalid_request")
    payload = {
        "id": str(uuid7()), "payer_wallet_id": corridor.alpha_customer, "merchant_wallet_id": corridor.merchant,
        "amount": "5000.01", "currency": "CNY", "quote_id": (await corridor.quote(corridor.alpha, "5000.01"))["id"],
    }  # fmt: skip
    refused = await api.post(corridor.alpha, "/v1/payments", payload)
    again = await api.post(corridor.alpha, "/v1/payments", payload)
    assert again.replayed and again.status == refused.status == 422
    assert again.problem_without_request_id() == refused.problem_without_request_id()


async def test_refunds_run_backwards_at_the_payments_rate_and_never_beyond_it(corridor):
    api = corridor.api
    before = await api.balance(corridor.alpha, corridor.alpha_customer)
    payment = (await corridor.pay(corridor.alpha, corridor.alpha_customer, "100.01")).body
    path = f"/v1/payments/{payment['id']}/refunds"
    part = await api.post(corridor.alpha, path, {"id": str(uuid7()), "amount": "40.00"})
    assert part.status == 201 and part.body["amount"] == "40.00"
    rest = await api.post(corridor.alpha, path, {"id": str(uuid7())})
    assert rest.status == 201 and rest.body["amount"] == "60.01"
    assert await api.balance(corridor.alpha, corridor.alpha_customer) == before
    assert (await api.get(corridor.alpha, f"/v1/payments/{payment['id']}")).body["status"] == "refunded"
    assert_problem(await api.post(corridor.alpha, path, {"id": str(uuid7()), "amount": "0.01"}), 422, "invalid_amount")
    assert (await api.post(corridor.beta, path, {"id": str(uuid7())})).status == 404


async def test_the_operator_closes_settles_and_exports_a_signed_report(corridor):
    api = corridor.api
    assert (await corridor.pay(corridor.alpha, corridor.alpha_customer, "300.00")).status == 201
    assert (await corridor.pay(corridor.beta, corridor.beta_customer, "200.00")).status == 201
    assert_problem(await api.post(corridor.alpha, "/v1/settlement/windows/1/close"), 403, "forbidden")
    closed = await api.post(api.operator, "/v1/settlement/windows/1/close")
    assert closed.status == 201 and closed.body["status"] == "closed"
    assert_problem(await api.post(api.operator, "/v1/settlement/windows/1/close"), 409, "window_not_open")
    public_key = base64.b64decode((await api.get(api.operator, "/v1/audit/head")).body["public_key"])
    assert verify_signed(closed.body, public_key)
    assert {(p["institution_id"], p["net_amount"], p["direction"]) for p in closed.body["positions"]} == {
        ("hk-alpha", "300.00", "pay"), ("hk-beta", "200.00", "pay"), ("sz-acq", "500.00", "receive"),
    }  # fmt: skip
    assert closed.body["totals"] == [
        {"currency": "CNY", "gross": "500.00", "net": "500.00", "liquidity_saved": "0.00",
         "liquidity_saving_ratio": "0.0000"}
    ]  # fmt: skip
    own = await api.get(corridor.alpha, "/v1/settlement/batches/1")
    assert [p["institution_id"] for p in own.body["positions"]] == ["hk-alpha"] and verify_signed(own.body, public_key)
    settled = await api.post(api.operator, "/v1/settlement/batches/1/settle")
    assert settled.status == 200 and settled.body["status"] == "settled"
    assert (await api.get(corridor.alpha, "/v1/institutions/hk-alpha/position")).body["liquidity"] == "4700.00"
    report = await api.get(api.operator, "/v1/settlement/batches/1/report?format=csv")
    assert report.status == 200 and report.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(report.raw.decode())))
    assert {(r["institution_id"], r["amount"]) for r in rows if r["section"] == "position"} == {
        ("hk-alpha", "300.00"), ("hk-beta", "200.00"), ("sz-acq", "500.00"),
    }  # fmt: skip
    json_report = (await api.get(api.operator, "/v1/settlement/batches/1/report")).body
    assert report.headers["Report-Signature"] == json_report["signature"] and verify_signed(json_report, public_key)
    windows = (await api.get(corridor.alpha, "/v1/settlement/windows")).body["items"]
    assert [(w["id"], w["status"]) for w in windows] == [(2, "open"), (1, "settled")]


async def test_a_participant_short_of_liquidity_is_unwound_and_its_payments_settle_in_the_next_batch(corridor):
    api = corridor.api
    gamma = await api.institution("hk-gamma", liquidity=None)
    customer = await api.wallet(gamma, "HKD", limit_profile="svf-verified")
    await api.deposit(gamma, customer["id"], "1000.00")
    assert (await corridor.liquidity(gamma, "100.00")).status == 201
    assert_problem(await corridor.pay(gamma, customer["id"], "500.00"), 422, "net_debit_cap_exceeded")
    allow = await api.post(api.operator, "/v1/institutions/hk-gamma/net-debit-cap-policy", {"beyond_liquidity": True})
    assert allow.status == 200 and allow.body["cap_in_force"] is None  # no registered cap: none in force
    assert (await corridor.pay(gamma, customer["id"], "500.00")).status == 201
    assert (await corridor.pay(corridor.alpha, corridor.alpha_customer, "300.00")).status == 201
    await api.post(api.operator, "/v1/settlement/windows/1/close")
    unwound = (await api.post(api.operator, "/v1/settlement/batches/1/settle")).body
    assert unwound["status"] == "unwound"
    assert unwound["exclusions"] == [
        {"institution_id": "hk-gamma", "currency": "CNY", "net_debit": "500.00", "liquidity": "100.00"}
    ]
    assert unwound["carried_out"] == [
        {"debtor": "hk-gamma", "creditor": "sz-acq", "currency": "CNY", "amount": "500.00"}
    ]
    assert {p["institution_id"] for p in unwound["positions"]} == {"hk-alpha", "sz-acq"}
    assert (await api.get(gamma, "/v1/institutions/hk-gamma/position")).body["unsettled_debit"] == "500.00"
    assert (await corridor.liquidity(gamma, "400.00")).status == 201
    batch2 = (await api.post(api.operator, "/v1/settlement/windows/2/close")).body
    assert batch2["carried_in"] == unwound["carried_out"]
    assert (await api.post(api.operator, "/v1/settlement/batches/2/settle")).body["status"] == "settled"
    acquirer = await api.get(api.operator, "/v1/institutions/sz-acq/position")
    assert acquirer.body["liquidity"] == "800.00"  # both payments settled, each once
    assert (await api.get(gamma, "/v1/institutions/hk-gamma/position")).body["unsettled_debit"] == "0.00"


async def test_settlement_refusals_answer_their_codes(corridor):
    api = corridor.api
    assert_problem(await api.post(api.operator, "/v1/settlement/batches/1/settle"), 409, "batch_not_settleable")
    assert_problem(await api.get(api.operator, "/v1/settlement/batches/1"), 404, "not_found")
    assert_problem(await api.get(api.operator, "/v1/settlement/batches/x"), 404, "not_found")
    assert_problem(await api.get(api.operator, "/v1/settlement/batches/1/report?format=xml"), 400, "invalid_request")
    payload = {"id": str(uuid7()), "amount": "1.00", "currency": "CNY"}
    assert_problem(await api.post(corridor.alpha, "/v1/institutions/hk-alpha/liquidity", payload), 403, "forbidden")
    assert_problem(await api.post(api.operator, "/v1/institutions/nobody/liquidity", payload), 404, "not_found")
    bad = payload | {"amount": "1.001"}
    assert_problem(await api.post(api.operator, "/v1/institutions/hk-alpha/liquidity", bad), 400, "invalid_amount")
    again = await api.post(api.operator, "/v1/institutions/hk-alpha/liquidity", payload)
    replay = await api.post(api.operator, "/v1/institutions/hk-alpha/liquidity", payload)
    assert (again.status, replay.status, replay.replayed) == (201, 200, True)
    other = await api.post(api.operator, "/v1/institutions/hk-alpha/liquidity", payload | {"amount": "2.00"})
    assert_problem(other, 409, "exists_with_different_fields")
