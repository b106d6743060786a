"""The HTTP application's skeleton: middlewares, problem+json errors, read_json and money at the
edge, operations endpoints, metrics, OpenAPI and the offline docs.

A test-only route table exercises read_json and money parsing; the authenticator is a fake that
trusts an ``X-Test-Caller`` header (RFC 9421 verification is tested with ``service.auth``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from uuid import UUID

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from ledger import AccountFlags, AccountSpec, Batcher, Ledger, TransferCommand
from ledger.db import create_engine
from ledger.errors import LedgerOutcomeUnknown, LedgerOverloaded, LedgerShuttingDown, LedgerUnavailable
from ledger.ids import uuid7
from ledger.keys import write_signing_key
from ledger.money import DEFAULT_CURRENCIES, parse_amount
from service.app import create_app
from service.config import Settings
from service.handlers import BODY_SIZE_MAX_BYTES_DEFAULT, caller, read_json, shielded
from service.keys import BATCHER_KEY, BODY_SIZE_MAX_KEY, METRICS_KEY
from service.openapi import RouteTable
from service.problems import ProblemError
from service.schemas import AmountStr, CurrencyCode, RequestModel, ResponseModel

BODY_LIMIT_BYTES = 4096
TRANSFER_ID = "0190a3f2-7c4e-7000-8000-000000000001"


class FakeSignatureProblem(Exception):
    """Shaped like service.auth.SignatureProblem: the error middleware must map it by its shape."""

    def __init__(self, code: str, detail: str, status: int = 401) -> None:
        super().__init__(detail)
        self.code, self.detail, self.status = code, detail, status


class FakeCaller:
    def __init__(self, key_id: str) -> None:
        self.key_id = key_id


async def fake_authenticator(request: web.Request, body: bytes) -> FakeCaller:
    name = request.headers.get("X-Test-Caller")
    if not name:
        raise FakeSignatureProblem("signature_missing", "no Signature header")
    return FakeCaller(name)


class SampleTransferIn(RequestModel):
    id: UUID
    amount: AmountStr
    currency: CurrencyCode


class SampleTransferOut(ResponseModel):
    id: UUID
    amount_minor: int
    caller: str


test_routes = RouteTable(tag="test")


@test_routes.route(
    "POST",
    "/v1/test-transfers",
    summary="Test only: parse a transfer body",
    request=SampleTransferIn,
    responses={201: SampleTransferOut},
    problems=["invalid_amount"],
)
async def create_test_transfer(request: web.Request) -> web.Response:
    body = await read_json(request, SampleTransferIn)
    currency = DEFAULT_CURRENCIES.get(body.currency)
    if currency is None:
        raise ProblemError("invalid_request", f"unknown currency {body.currency}")
    out = SampleTransferOut(id=body.id, amount_minor=parse_amount(body.amount, currency), caller=caller(request).key_id)
    return web.json_response(out.model_dump(mode="json"), status=201)


LEDGER_ERRORS = {
    "overloaded": LedgerOverloaded("queue full"),
    "shutting_down": LedgerShuttingDown("draining"),
    "unavailable": LedgerUnavailable("database away"),
    "outcome_unknown": LedgerOutcomeUnknown("commit in flight"),
    "bug": RuntimeError("secret internal detail at /srv/ledger/core.py"),
}


@test_routes.route("GET", "/v1/test-raise/{kind}", summary="Test only: raise", responses={200: None})
async def raise_for_test(request: web.Request) -> web.Response:
    raise LEDGER_ERRORS[request.match_info["kind"]]


@pytest.fixture
async def make_client(tmp_path) -> AsyncIterator:
    """Builds apps with the factory on a given database, and closes what it opened."""
    opened: list[tuple[TestClient, Batcher, Ledger]] = []

    async def make(database_url: str | None = None, **options) -> TestClient:
        url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"
        ledger = Ledger(create_engine(url), options.pop("signing_key", None) or _key())
        batcher = Batcher(ledger, expiry_interval_s=None)
        batcher.start()
        options.setdefault("authenticator", fake_authenticator)
        options.setdefault("body_size_max_bytes", BODY_LIMIT_BYTES)
        app = create_app(Settings(tmp_path, url), ledger=ledger, batcher=batcher, route_tables=[test_routes], **options)
        client = TestClient(TestServer(app))
        await client.start_server()
        opened.append((client, batcher, ledger))
        return client

    yield make
    for client, batcher, ledger in opened:
        await client.close()
        await batcher.close()
        await ledger.close()


def _key():
    from nacl.signing import SigningKey

    return SigningKey.generate()


@pytest.fixture
async def client(make_client) -> TestClient:
    return await make_client()


async def post_transfer(client: TestClient, body: str | bytes, **headers: str):
    headers = {"Content-Type": "application/json", "X-Test-Caller": "hk-alphapay", **headers}
    return await client.post("/v1/test-transfers", data=body, headers=headers)


async def assert_problem(response, status: int, code: str) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["type"].endswith(code) and problem["title"] and problem["detail"]
    assert problem["request_id"] == response.headers["X-Request-Id"]
    assert "Traceback" not in await response.text()
    return problem


# -- read_json and money at the edge ----------------------------------------------------------


async def test_a_valid_body_is_parsed_to_minor_units(client):
    response = await post_transfer(client, f'{{"id": "{TRANSFER_ID}", "amount": "128.50", "currency": "CNY"}}')
    assert response.status == 201
    assert await response.json() == {"id": TRANSFER_ID, "amount_minor": 12850, "caller": "hk-alphapay"}


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("1.5", "JSON number"),
        ('"-5"', "no sign"),
        ('"abc"', "no sign"),
        ('""', "no sign"),
        ('"1e3"', "no sign"),
        ('" 1"', "no sign"),
        ("null", "JSON null"),
        ('"' + "9" * 65 + '"', "at most 64 characters"),
    ],
)
async def test_amounts_that_are_not_plain_decimal_strings_are_invalid_amount(client, amount, reason):
    response = await post_transfer(client, f'{{"id": "{TRANSFER_ID}", "amount": {amount}, "currency": "CNY"}}')
    problem = await assert_problem(response, 400, "invalid_amount")
    assert problem["errors"][0]["pointer"] == "#/amount"
    assert reason in problem["errors"][0]["detail"]


@pytest.mark.parametrize(
    ("amount", "reason"),
    [("1.001", "2 decimal places"), ("0.00", "greater than zero"), ("1000000000000000000000", "above the maximum")],
)
async def test_amounts_that_do_not_fit_the_currency_are_invalid_amount(client, amount, reason):
    response = await post_transfer(client, f'{{"id": "{TRANSFER_ID}", "amount": "{amount}", "currency": "CNY"}}')
    problem = await assert_problem(response, 400, "invalid_amount")
    assert reason in problem["detail"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"id": 1,}', "not valid JSON"),
        ("", "JSON body is required"),
        (f'{{"id": "{TRANSFER_ID}", "amount": "1", "currency": "CNY", "x": NaN}}', "not valid JSON"),
        (b'{"id": "\xff"}', "not valid JSON"),
        ("[1, 2]", "not valid"),
    ],
)
async def test_malformed_json_is_invalid_request(client, body, reason):
    problem = await assert_problem(await post_transfer(client, body), 400, "invalid_request")
    assert reason in problem["detail"]


async def test_field_problems_are_listed_with_pointers(client):
    body = '{"id": "not-a-uuid", "amount": "1.00", "currency": "cny", "ammount": "2"}'
    problem = await assert_problem(await post_transfer(client, body), 400, "invalid_request")
    assert {error["pointer"] for error in problem["errors"]} == {"#/id", "#/currency", "#/ammount"}


async def test_a_bad_amount_among_other_field_problems_is_invalid_request(client):
    problem = await assert_problem(await post_transfer(client, '{"amount": 1.5}'), 400, "invalid_request")
    assert {error["pointer"] for error in problem["errors"]} == {"#/id", "#/amount", "#/currency"}


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
)
async def test_a_body_that_is_not_json_is_415(client, content_type):
    response = await post_transfer(client, '{"id": 1}', **{"Content-Type": content_type})
    await assert_problem(response, 415, "invalid_request")


async def test_a_body_over_the_limit_by_content_length_is_413(client):
    response = await post_transfer(client, b"{" + b" " * BODY_LIMIT_BYTES + b"}")
    problem = await assert_problem(response, 413, "payload_too_large")
    assert str(BODY_LIMIT_BYTES) in problem["detail"]


async def test_a_chunked_body_over_the_limit_is_413(client):
    async def chunks():
        yield b'{"id": "'
        for _ in range(BODY_LIMIT_BYTES // 512 + 1):
            yield b"x" * 512
        yield b'"}'

    response = await post_transfer(client, chunks())
    assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
    await assert_problem(response, 413, "payload_too_large")


async def test_the_body_limit_is_one_mib_by_default_and_configurable(make_client):
    assert BODY_SIZE_MAX_BYTES_DEFAULT == 1024 * 1024
    client = await make_client(body_size_max_bytes=100)
    assert client.app[BODY_SIZE_MAX_KEY] == 100
    response = await post_transfer(
        client, f'{{"id": "{TRANSFER_ID}", "amount": "1", "currency": "CNY", "p": "{"x" * 100}"}}'
    )
    await assert_problem(response, 413, "payload_too_large")


# -- errors and request ids ----------------------------------------------------------------


async def test_an_unexpected_exception_is_a_500_without_its_details(client, caplog):
    with caplog.at_level(logging.ERROR):
        response = await client.get("/v1/test-raise/bug", headers={"X-Test-Caller": "hk-alphapay"})
    problem = await assert_problem(response, 500, "internal_error")
    text = await response.text()
    assert "secret" not in text and "core.py" not in text and "RuntimeError" not in text
    assert problem["request_id"] in problem["detail"]
    logged = [record for record in caplog.records if record.exc_info]
    assert logged and problem["request_id"] in logged[0].getMessage()


@pytest.mark.parametrize(
    ("kind", "retry_after"),
    [("overloaded", "1"), ("shutting_down", "5"), ("unavailable", "2"), ("outcome_unknown", None)],
)
async def test_ledger_errors_are_503_with_their_codes(client, kind, retry_after):
    response = await client.get(f"/v1/test-raise/{kind}", headers={"X-Test-Caller": "hk-alphapay"})
    await assert_problem(response, 503, kind)
    assert response.headers.get("Retry-After") == retry_after


async def test_a_sane_client_request_id_is_echoed_and_others_are_replaced(client):
    response = await client.get("/healthz", headers={"X-Request-Id": "req-42.a:b"})
    assert response.headers["X-Request-Id"] == "req-42.a:b"
    for bad in ("has spaces", "x" * 129, "semi;colon"):
        response = await client.get("/healthz", headers={"X-Request-Id": bad})
        assert response.headers["X-Request-Id"] != bad
        assert UUID(response.headers["X-Request-Id"]).version == 7
    response = await post_transfer(client, "{", **{"X-Request-Id": "client-7"})
    assert (await assert_problem(response, 400, "invalid_request"))["request_id"] == "client-7"


async def test_unknown_paths_and_methods_are_problems(client):
    await assert_problem(await client.get("/nowhere"), 404, "not_found")
    response = await client.delete("/healthz")
    await assert_problem(response, 405, "invalid_request")
    assert "GET" in response.headers["Allow"]


async def test_v1_requests_go_through_the_authenticator(client):
    response = await client.post("/v1/test-transfers", json={"id": TRANSFER_ID})
    await assert_problem(response, 401, "signature_missing")
    # Unknown /v1/ paths are authenticated first: an unsigned client learns nothing of the routes.
    await assert_problem(await client.get("/v1/no-such-thing"), 401, "signature_missing")
    await assert_problem(await client.get("/v1/no-such-thing", headers={"X-Test-Caller": "a"}), 404, "not_found")


async def test_without_an_authenticator_v1_fails_closed(make_client):
    client = await make_client(authenticator=None)
    response = await post_transfer(client, f'{{"id": "{TRANSFER_ID}", "amount": "1", "currency": "CNY"}}')
    await assert_problem(response, 503, "unavailable")
    assert (await client.get("/healthz")).status == 200


async def test_shielded_work_finishes_when_its_caller_is_cancelled():
    finished = asyncio.Event()

    async def commit() -> str:
        await asyncio.sleep(0.05)
        finished.set()
        return "committed"

    caller_task = asyncio.ensure_future(shielded(commit()))
    await asyncio.sleep(0.01)
    caller_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller_task
    await asyncio.wait_for(finished.wait(), 1)
    assert await shielded(commit()) == "committed"


# -- operations ----------------------------------------------------------------------------


async def test_healthz(client):
    response = await client.get("/healthz")
    assert response.status == 200 and await response.json() == {"status": "ok"}


async def test_readyz_is_ok_then_503_once_the_batcher_is_closed(make_client, database_url):
    client = await make_client(database_url)
    response = await client.get("/readyz")
    assert response.status == 200, await response.text()
    assert await response.json() == {"status": "ok", "checks": {"database": "ok", "batcher": "ok"}}
    await client.app[BATCHER_KEY].close()
    problem = await assert_problem(await client.get("/readyz"), 503, "unavailable")
    assert "batcher" in problem["detail"]


async def test_readyz_is_503_when_the_database_is_unreachable(make_client):
    client = await make_client("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    problem = await assert_problem(await client.get("/readyz"), 503, "unavailable")
    assert "database" in problem["detail"]


async def test_metrics_count_requests_by_route_template_and_problems_by_code(client):
    await client.get("/healthz")
    await client.get("/nowhere/at/all")
    await post_transfer(client, "{")
    response = await client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    assert 'ledger_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'ledger_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'route="/v1/test-transfers",status="400"' in text
    assert 'ledger_http_request_duration_seconds_count{method="GET",route="/healthz"} 1.0' in text
    assert 'ledger_http_problems_total{code="invalid_request"} 1.0' in text
    assert "ledger_batcher_queue_depth 0.0" in text
    assert "ledger_batcher_alive 1.0" in text
    client.app[METRICS_KEY].record_refusal("insufficient_funds")
    assert 'ledger_refusals_total{code="insufficient_funds"} 1.0' in await (await client.get("/metrics")).text()


async def test_each_app_has_its_own_registry(make_client):
    first, second = await make_client(), await make_client()
    await first.get("/healthz")
    text = await (await second.get("/metrics")).text()
    assert 'route="/healthz"' not in text


async def test_batch_sizes_are_observed_per_committed_batch(make_client, database_url, signing_key):
    client = await make_client(database_url, signing_key=signing_key)
    batcher = client.app[BATCHER_KEY]
    source, target = uuid7(), uuid7()
    await batcher.ledger.create_accounts(
        [AccountSpec(source, "CNY", "funding"), AccountSpec(target, "CNY", "wallet", flags=AccountFlags.NONE)]
    )
    results = await batcher.submit_many([TransferCommand.posted(uuid7(), source, target, 100, "CNY") for _ in range(3)])
    assert all(result.ok for result in results)
    text = await (await client.get("/metrics")).text()
    assert "ledger_batcher_batch_size_count 1.0" in text
    assert "ledger_batcher_batch_size_sum 3.0" in text
    assert "ledger_batcher_batches_committed_total 1.0" in text


# -- OpenAPI and docs ----------------------------------------------------------------------


async def test_openapi_is_valid_3_1_and_lists_routes_with_their_problems(client):
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    operation = document["paths"]["/v1/test-transfers"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SampleTransferIn"
    }
    assert set(operation["responses"]) == {"201", "400", "401", "413", "415"}
    bad_request = operation["responses"]["400"]["content"]["application/problem+json"]
    assert set(bad_request["examples"]) == {"invalid_amount", "invalid_request", "content_digest_mismatch"}
    assert operation["security"] == [{"httpMessageSignature": []}]
    assert document["components"]["securitySchemes"]["httpMessageSignature"]["name"] == "Signature"
    amount = document["components"]["schemas"]["SampleTransferIn"]["properties"]["amount"]
    assert amount["type"] == "string" and amount["pattern"]
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]
    assert document["paths"]["/v1/test-raise/{kind}"]["get"]["parameters"][0]["name"] == "kind"


def test_a_route_cannot_lie_about_being_signed():
    table = RouteTable()
    with pytest.raises(ValueError, match="signed"):
        table.route("GET", "/v1/x", summary="x", responses={200: None}, signed=False)
    with pytest.raises(ValueError, match="unknown problem code"):
        table.route("GET", "/v1/x", summary="x", responses={200: None}, problems=["nope"])(raise_for_test)


async def test_the_document_describes_itself_and_the_docs_page(client):
    # Found by tests/test_api_schemathesis.py: /openapi.json and /docs were served but not described,
    # so a run against the document never reached them.
    document = await (await client.get("/openapi.json")).json()
    own = document["paths"]["/openapi.json"]["get"]
    assert own["security"] == [] and set(own["responses"]["200"]["content"]) == {"application/json"}
    page = document["paths"]["/docs"]["get"]
    assert page["security"] == [] and set(page["responses"]["200"]["content"]) == {"text/html"}


async def test_docs_are_served_offline(client):
    response = await client.get("/docs")
    assert response.status == 200 and response.content_type == "text/html"
    page = await response.text()
    assert 'url: "openapi.json"' in page
    assert "cdn" not in page.lower() and "unpkg" not in page.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        assert f"docs/static/{asset}" in page
        served = await client.get(f"/docs/static/{asset}")
        assert served.status == 200 and len(await served.read()) > 1000
    await assert_problem(await client.get("/docs/static/../../etc/passwd"), 404, "not_found")


# -- resources the factory opens itself -------------------------------------------------------


async def test_the_factory_opens_and_closes_its_own_ledger_and_batcher(tmp_path, database_url, signing_key):
    write_signing_key(tmp_path / "ledger-signing.key", signing_key)
    app = create_app(Settings(tmp_path, database_url), authenticator=fake_authenticator)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert (await client.get("/readyz")).status == 200
        batcher = app[BATCHER_KEY]
        assert batcher.alive and batcher.on_batch is not None
    finally:
        await client.close()
    assert batcher.closing and not batcher.alive


async def test_the_factory_refuses_to_start_without_a_signing_key(tmp_path):
    app = create_app(Settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"))
    with pytest.raises(RuntimeError, match="ledger init"):
        await TestServer(app).start_server()
