"""FX over HTTP on SQLite and PostgreSQL: operators set rates, institutions read them and take
signed quotes, read only their own, and check a quote's signature from the answers alone (the
quote's fields and ``GET /v1/audit/head``'s public key). Every caller error has its status and code."""

from __future__ import annotations

import base64
import json
import uuid
from decimal import Decimal

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from service.client import LedgerClient, ValidationError, verify_quote
from service.errors_map import wallet_problem
from service.keys import QUOTES_KEY
from settlement.fx_errors import QuoteExpired
from settlement.fx_tables import fx_quotes
from tests.api_support import Api, api, assert_problem

__all__ = ["api"]

SIGNED_FIELDS = ("id", "source_currency", "target_currency", "rate", "source_amount", "target_amount")
RATE = {"source_currency": "HKD", "target_currency": "CNY", "mid_rate": "0.9234", "spread_bps": 50}


async def set_rate(api: Api, **fields) -> dict:
    answer = await api.post(api.operator, "/v1/fx/rates", RATE | fields)
    assert answer.status == 201, answer.body
    return answer.body


async def quote(api: Api, party, **fields) -> dict:
    payload = {"source_currency": "HKD", "target_currency": "CNY"} | fields
    answer = await api.post(party, "/v1/fx/quotes", payload)
    assert answer.status == 201, answer.body
    return answer.body


async def test_an_operator_sets_rates_and_any_institution_reads_the_current_ones_and_the_history(api, clock):
    alpha = await api.institution("hk-alphapay")
    first = await set_rate(api, mid_rate="0.9200", spread_bps=40)
    assert first["customer_rate"] == "0.9163200000" and first["set_by"] == "operator"
    assert first["mid_rate"] == "0.9200" and first["set_at"].endswith("Z")
    clock.advance(seconds=1)
    reverse = await set_rate(api, source_currency="CNY", target_currency="HKD", mid_rate="1.083", spread_bps=0)
    clock.advance(seconds=1)
    second = await set_rate(api)
    assert second["customer_rate"] == "0.9187830000"

    current = await api.get(alpha, "/v1/fx/rates")
    assert current.status == 200 and current.body == {"items": [reverse, second], "next_cursor": None}
    page = await api.get(alpha, "/v1/fx/rates?history=true&limit=2")
    assert page.body["items"] == [second, reverse] and page.body["next_cursor"]
    last = await api.get(alpha, f"/v1/fx/rates?history=true&limit=2&cursor={page.body['next_cursor']}")
    assert last.body == {"items": [first], "next_cursor": None}


async def test_rate_listing_refuses_a_bad_history_flag_limit_or_cursor(api):
    alpha = await api.institution("hk-alphapay")
    for query in ("history=yes", "history=true&limit=0", "history=true&limit=501", "history=true&cursor=abc"):
        assert_problem(await api.get(alpha, f"/v1/fx/rates?{query}"), 400, "invalid_request")


async def test_only_an_operator_may_set_a_rate(api):
    alpha = await api.institution("hk-alphapay")
    assert_problem(await api.post(alpha, "/v1/fx/rates", RATE), 403, "forbidden")
    assert (await api.get(alpha, "/v1/fx/rates")).body["items"] == []


@pytest.mark.parametrize(
    ("fields", "pointer"),
    [
        ({"mid_rate": "0"}, "#/mid_rate"),
        ({"mid_rate": "0.00000000000000000000000000001"}, "#/mid_rate"),  # more than 28 places
        ({"mid_rate": "2000000"}, "#/mid_rate"),
        ({"mid_rate": 0.9234}, "#/mid_rate"),  # a JSON number: never a float
        ({"mid_rate": "-0.92"}, "#/mid_rate"),
        ({"mid_rate": "9.2e-1"}, "#/mid_rate"),
        ({"spread_bps": -1}, "#/spread_bps"),
        ({"spread_bps": 10_001}, "#/spread_bps"),
        ({"spread_bps": "50"}, "#/spread_bps"),
        ({"spread_bps": 10_000}, "#/mid_rate"),  # the customer rate would be zero
        ({"target_currency": "usd"}, "#/target_currency"),
    ],
)
async def test_a_bad_mid_rate_or_spread_is_400_invalid_request_naming_the_field(api, fields, pointer):
    problem = assert_problem(await api.post(api.operator, "/v1/fx/rates", RATE | fields), 400, "invalid_request")
    assert pointer in [error["pointer"] for error in problem["errors"]]


@pytest.mark.parametrize("pair", [("HKD", "USD"), ("HKD", "HKD"), ("XYZ", "CNY")])
async def test_a_pair_the_corridor_does_not_convert_is_400(api, pair):
    source, target = pair
    answer = await api.post(api.operator, "/v1/fx/rates", RATE | {"source_currency": source, "target_currency": target})
    assert_problem(answer, 400, "invalid_request")
    alpha = await api.institution("hk-alphapay")
    answer = await api.post(
        alpha, "/v1/fx/quotes", {"source_currency": source, "target_currency": target, "source_amount": "10.00"}
    )
    assert_problem(answer, 400, "invalid_request")


async def test_a_quote_by_target_and_by_source_answers_201_with_signed_amounts_as_decimal_strings(api, clock):
    alpha = await api.institution("hk-alphapay")
    await set_rate(api)
    by_target = await quote(api, alpha, target_amount="128.50")
    assert {name: by_target[name] for name in ("rate", "source_amount", "target_amount")} == {
        "rate": "0.9187830000", "source_amount": "139.86", "target_amount": "128.50",
    }  # fmt: skip
    assert by_target["created_at"] == "2026-11-25T09:46:40.000000Z"  # the test clock's start
    assert by_target["expires_at"] == "2026-11-25T09:47:40.000000Z"  # 60 s later
    assert len(base64.b64decode(by_target["signature"])) == 64
    by_source = await quote(api, alpha, source_amount="100.00")
    assert (by_source["source_amount"], by_source["target_amount"]) == ("100.00", "91.87")


@pytest.mark.parametrize(
    ("amounts", "status", "code"),
    [
        ({}, 400, "invalid_request"),
        ({"source_amount": "100.00", "target_amount": "91.87"}, 400, "invalid_request"),
        ({"target_amount": "1.005"}, 400, "invalid_amount"),  # more decimals than CNY has
        ({"target_amount": 128.5}, 400, "invalid_amount"),  # a JSON number
        ({"target_amount": "0"}, 400, "invalid_amount"),
        ({"source_amount": "0.01"}, 422, "invalid_amount"),  # buys less than one fen
    ],
)
async def test_quote_amount_errors_have_their_codes(api, amounts, status, code):
    alpha = await api.institution("hk-alphapay")
    await set_rate(api)
    answer = await api.post(alpha, "/v1/fx/quotes", {"source_currency": "HKD", "target_currency": "CNY"} | amounts)
    assert_problem(answer, status, code)


async def test_a_quote_before_any_rate_is_409_invalid_request_saying_an_operator_sets_one(api):
    alpha = await api.institution("hk-alphapay")
    answer = await api.post(
        alpha, "/v1/fx/quotes", {"source_currency": "HKD", "target_currency": "CNY", "target_amount": "10.00"}
    )
    assert "POST /v1/fx/rates" in assert_problem(answer, 409, "invalid_request")["detail"]


async def test_an_institution_reads_its_own_quote_and_another_institutions_is_404_like_an_unknown_one(api):
    alpha, beta = await api.institution("hk-alphapay"), await api.institution("hk-betapay")
    await set_rate(api)
    issued = await quote(api, alpha, target_amount="10.00")
    own = await api.get(alpha, f"/v1/fx/quotes/{issued['id']}")
    assert own.status == 200 and own.body == issued
    foreign = assert_problem(await api.get(beta, f"/v1/fx/quotes/{issued['id']}"), 404, "not_found")
    unknown = assert_problem(await api.get(beta, f"/v1/fx/quotes/{uuid.uuid4()}"), 404, "not_found")
    assert foreign.keys() == unknown.keys() and foreign["title"] == unknown["title"]
    assert_problem(await api.get(alpha, "/v1/fx/quotes/not-a-uuid"), 404, "not_found")


async def test_a_quotes_signature_verifies_from_the_http_answers_alone(api):
    """What an integrator does: rebuild the canonical JSON from the quote's fields (sorted keys, no
    spaces) and check the signature with the public key that GET /v1/audit/head publishes."""
    alpha = await api.institution("hk-alphapay")
    await set_rate(api)
    answer = await quote(api, alpha, target_amount="128.50")
    public_key = (await api.get(alpha, "/v1/audit/head")).body["public_key"]

    signed = {name: answer[name] for name in (*SIGNED_FIELDS, "created_at", "expires_at")}
    canonical = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    VerifyKey(base64.b64decode(public_key)).verify(canonical, base64.b64decode(answer["signature"]))

    forged = json.dumps(signed | {"rate": "0.9900000000"}, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(BadSignatureError):
        VerifyKey(base64.b64decode(public_key)).verify(forged, base64.b64decode(answer["signature"]))


async def test_an_expired_quote_is_still_readable_but_the_payment_lookup_answers_409_quote_expired(api, clock):
    alpha = await api.institution("hk-alphapay")
    await set_rate(api)
    issued = await quote(api, alpha, target_amount="10.00")
    clock.advance(seconds=60)
    assert (await api.get(alpha, f"/v1/fx/quotes/{issued['id']}")).status == 200
    with pytest.raises(QuoteExpired) as expired:
        await api.app[QUOTES_KEY].lookup(alpha.id, uuid.UUID(issued["id"]), clock())
    problem = wallet_problem(expired.value)
    assert (problem.code, problem.status) == ("quote_expired", 409) and "ask for a new one" in problem.detail


async def test_a_quote_changed_in_the_database_answers_500_without_details(api):
    alpha = await api.institution("hk-alphapay")
    await set_rate(api)
    issued = await quote(api, alpha, target_amount="10.00")
    async with api.ledger.engine.begin() as conn:
        await conn.execute(fx_quotes.update().values(rate="0.9900000000"))
    answer = await api.get(alpha, f"/v1/fx/quotes/{issued['id']}")
    problem = assert_problem(answer, 500, "internal_error")
    assert "signature" not in problem["detail"]


async def test_the_client_sets_rates_lists_them_quotes_and_verifies_the_quotes_signature(api):
    alpha = await api.institution("hk-alphapay")
    base_url = str(api.client.make_url("")).rstrip("/")
    operator = LedgerClient(base_url, key_id=api.operator.id, signing_key=api.operator.key, retries_max=0)
    client = LedgerClient(base_url, key_id=alpha.id, signing_key=alpha.key, retries_max=0)
    async with operator, client:
        with pytest.raises(ValidationError):
            await client.quote("HKD", "CNY", target_amount="10.00", source_amount="10.00")
        with pytest.raises(ValidationError) as no_rate:  # 409 invalid_request: no rate yet
            await client.quote("HKD", "CNY", target_amount="10.00")
        assert no_rate.value.status == 409
        rate = await operator.set_rate("HKD", "CNY", Decimal("0.9234"), 50)
        assert (await client.rates())["items"] == [rate]
        assert (await client.rates(history=True, limit=1))["items"] == [rate]
        issued = await client.quote("HKD", "CNY", target_amount=Decimal("128.50"))
        assert await client.get_quote(issued["id"]) == issued
        public_key = (await client.audit_head())["public_key"]
        verify_quote(issued, public_key)
        with pytest.raises(BadSignatureError):
            verify_quote(issued | {"source_amount": "100.00"}, public_key)
