"""LedgerClient against a loopback aiohttp server that verifies every request with verify_aiohttp_request."""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
from decimal import Decimal
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from http_message_signatures import HTTPMessageSigner
from http_message_signatures.algorithms import ED25519
from nacl.signing import SigningKey, VerifyKey

from service import sign
from service.auth import SignatureProblem, content_digest, verify_aiohttp_request, verify_request
from service.client import (
    AuthenticationError,
    ConflictError,
    LedgerApiError,
    LedgerClient,
    LedgerConnectionError,
    NotFoundError,
    RefusedError,
    ServerError,
    ValidationError,
    encode_json_body,
    retry_after_s,
    signed_curl_headers,
)

KEY_ID = "hk-alphapay"
PROBLEM = "application/problem+json"


class Ledger:
    """A stand-in ledger: verifies signatures, records what arrived, answers scripted statuses."""

    def __init__(self, verify_key: VerifyKey) -> None:
        self.verify_key = verify_key
        self.received: list[tuple[str, str, bytes, dict[str, str]]] = []
        self.scripted: list[web.Response] = []
        self.delays_s: list[float] = []

    async def resolve_keys(self, key_id: str) -> list[VerifyKey]:
        return [self.verify_key] if key_id == KEY_ID else []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delays_s:
            await asyncio.sleep(self.delays_s.pop(0))
        try:
            verified = await verify_aiohttp_request(request, body, resolve_keys=self.resolve_keys)
        except SignatureProblem as problem:
            return problem_response(problem.status, problem.code, problem.detail)
        self.received.append((request.method, request.raw_path, body, dict(request.headers)))
        if self.scripted:
            return self.scripted.pop(0)
        return web.json_response({"key_id": verified.key_id, "echo": json.loads(body) if body else None}, status=201)


def problem_response(status: int, code: str, detail: str, headers: dict | None = None) -> web.Response:
    problem = {"type": f"https://ledger.example/problems/{code}", "title": code, "status": status, "detail": detail}
    problem["code"] = code
    return web.Response(status=status, text=json.dumps(problem), content_type=PROBLEM, headers=headers)


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
async def ledger(signing_key):
    fake = Ledger(signing_key.verify_key)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app)
    await server.start_server()
    fake.base_url = str(server.make_url("")).rstrip("/")
    yield fake
    await server.close()


def client_for(ledger: Ledger, signing_key: SigningKey, **options) -> LedgerClient:
    return LedgerClient(ledger.base_url, key_id=KEY_ID, signing_key=signing_key, backoff_base_s=0.01, **options)


async def test_signed_post_passes_verification(ledger, signing_key):
    transfer = {"id": "0190a0b0-0000-7000-8000-000000000001", "amount": "128.50", "currency": "HKD", "memo": "茶"}
    async with client_for(ledger, signing_key) as client:
        result = await client.post("/v1/transfers", transfer)
    assert result.status == 201
    assert result.data == {"key_id": KEY_ID, "echo": transfer}
    assert result.replayed is False
    method, target, body, headers = ledger.received[0]
    assert (method, target) == ("POST", "/v1/transfers")
    assert (
        body == encode_json_body(transfer) == json.dumps(transfer, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert headers["Content-Digest"] == content_digest(body)


async def test_signed_get_with_params_passes_verification(ledger, signing_key):
    async with client_for(ledger, signing_key) as client:
        result = await client.get("/v1/wallets/w-1/transfers", params={"limit": 50, "cursor": "a+b/c="})
    assert result.status == 201
    # The target arrives exactly as signed: yarl must not re-quote the encoded query.
    assert ledger.received[0][1] == "/v1/wallets/w-1/transfers?limit=50&cursor=a%2Bb%2Fc%3D"


async def test_503_then_201_is_retried_with_the_same_bytes(ledger, signing_key):
    ledger.scripted.append(problem_response(503, "unavailable", "restarting", headers={"Retry-After": "0"}))
    transfer = {"id": "0190a0b0-0000-7000-8000-000000000002", "amount": "1.00", "currency": "CNY"}
    async with client_for(ledger, signing_key) as client:
        result = await client.post("/v1/transfers", transfer)
    assert result.status == 201
    assert len(ledger.received) == 2
    first, second = ledger.received
    assert first[2] == second[2] == encode_json_body(transfer)
    assert first[3]["Content-Digest"] == second[3]["Content-Digest"]


async def test_timeout_is_retried_with_the_same_bytes(ledger, signing_key):
    ledger.delays_s.append(1.0)
    transfer = {"id": "0190a0b0-0000-7000-8000-000000000003"}
    async with client_for(ledger, signing_key, timeout_s=0.2) as client:
        result = await client.post("/v1/transfers", transfer)
    assert result.status == 201
    # The slow first attempt may or may not be recorded before the client gives up; every body is the same.
    assert {body for _, _, body, _ in ledger.received} == {encode_json_body(transfer)}


async def test_a_client_covering_authority_is_verified_with_the_host_header(ledger, signing_key):
    # Another conforming client may also cover @authority; the server resolves it from the Host header.
    url = ledger.base_url + "/v1/wallets/w-1"
    message = SimpleNamespace(method="GET", url=url, headers={})
    signer = HTTPMessageSigner(signature_algorithm=ED25519)
    prepared = signer.prepare(
        message, key_id=KEY_ID, label="sig1", covered_component_ids=("@method", "@path", "@authority")
    )
    signer.apply(message, prepared, signing_key.sign(prepared.signature_base).signature)
    async with aiohttp.ClientSession() as session, session.get(url, headers=message.headers) as response:
        assert response.status == 201


async def test_retries_stop_at_retries_max_and_raise_server_error(ledger, signing_key):
    ledger.scripted.extend(problem_response(502, "bad_gateway", "upstream") for _ in range(5))
    async with client_for(ledger, signing_key, retries_max=2) as client:
        with pytest.raises(ServerError) as caught:
            await client.post("/v1/transfers", {"id": "x"})
    assert caught.value.status == 502
    assert len(ledger.received) == 3


async def test_replayed_header_is_exposed(ledger, signing_key):
    ledger.scripted.append(web.json_response({"id": "t-1"}, headers={"Idempotent-Replayed": "true"}))
    async with client_for(ledger, signing_key) as client:
        result = await client.post("/v1/transfers", {"id": "t-1"})
    assert (result.status, result.replayed) == (200, True)


@pytest.mark.parametrize(
    ("status", "code", "error_class"),
    [
        (422, "insufficient_funds", RefusedError),
        (422, "net_debit_cap_exceeded", RefusedError),
        (409, "exists_with_different_fields", ConflictError),
        (404, "not_found", NotFoundError),
        (400, "invalid_amount", ValidationError),
        (418, "something_new", LedgerApiError),
    ],
)
async def test_problem_answers_raise_typed_errors(ledger, signing_key, status, code, error_class):
    ledger.scripted.append(problem_response(status, code, f"because {code}"))
    async with client_for(ledger, signing_key) as client:
        with pytest.raises(error_class) as caught:
            await client.post("/v1/transfers", {"id": "t-2"})
    assert (caught.value.status, caught.value.code, caught.value.detail) == (status, code, f"because {code}")
    assert caught.value.problem["code"] == code


async def test_wrong_key_is_an_authentication_error_from_the_real_verifier(ledger):
    async with client_for(ledger, SigningKey.generate()) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get("/v1/wallets/w-1")
    assert (caught.value.status, caught.value.code) == (401, "signature_invalid")


async def test_connection_refused_is_retried_then_raised(signing_key):
    async with LedgerClient(
        "http://127.0.0.1:9", key_id=KEY_ID, signing_key=signing_key, retries_max=1, backoff_base_s=0.01
    ) as client:
        with pytest.raises(LedgerConnectionError) as caught:
            await client.get("/v1/wallets/w-1")
    assert caught.value.code == "connection_failed"


async def test_a_passed_session_is_left_open(ledger, signing_key):
    async with aiohttp.ClientSession() as session:
        async with client_for(ledger, signing_key, session=session) as client:
            await client.get("/healthz")
        assert not session.closed


def test_money_as_float_is_refused_and_decimal_is_a_string():
    with pytest.raises(TypeError, match="decimal strings"):
        encode_json_body({"amount": 128.5})
    assert (
        encode_json_body({"amount": Decimal("128.50"), "rate": Decimal("1E-2")}) == b'{"amount":"128.50","rate":"0.01"}'
    )


def test_retry_after_reads_seconds_and_dates_with_a_cap():
    assert retry_after_s({"Retry-After": "2"}) == 2.0
    assert retry_after_s({"Retry-After": "99999"}) == 30.0
    assert retry_after_s({"Retry-After": "Tue, 20 Apr 2021 02:07:55 GMT"}) == 0.0
    assert retry_after_s({"Retry-After": "soon"}) is None
    assert retry_after_s({}) is None


async def test_curl_headers_verify(signing_key):
    body = b'{"id":"t-3","amount":"5.00","currency":"HKD"}'
    arguments = signed_curl_headers(
        "POST", "http://localhost/v1/transfers", body, key_id=KEY_ID, signing_key=signing_key
    )
    headers = dict(shlex.split(argument)[1].split(": ", 1) for argument in arguments)

    async def resolve_keys(key_id):
        return [signing_key.verify_key]

    verified = await verify_request("POST", "/v1/transfers", headers, body, resolve_keys=resolve_keys)
    assert verified.key_id == KEY_ID


def test_sign_script_prints_curl_headers(tmp_path, signing_key, capsys):
    key_file = tmp_path / "hk-alphapay.key"
    key_file.write_text(base64.b64encode(bytes(signing_key)).decode() + "\n")
    exit_code = sign.main(
        ["POST", "http://localhost/v1/transfers", "--key-id", KEY_ID, "--key-file", str(key_file), "--data", "{}"]
    )
    printed = capsys.readouterr().out
    assert exit_code == 0
    assert '-H \'Signature-Input: sig1=("@method" "@path" "content-digest")' in printed
    assert sign.main(["GET", "http://localhost/", "--key-id", KEY_ID, "--key-file", str(tmp_path / "nope")]) == 2
