"""Every way a caller can fail to authenticate or to send a readable request, end to end through
the app's real authenticator (institutions' keys from the wallets layer) on both databases."""

from __future__ import annotations

import json
import time

import pytest
from nacl.signing import SigningKey

from ledger.ids import uuid7
from service.auth import content_digest, sign_request
from tests.api_support import BODY_LIMIT_BYTES, Party, api, assert_problem

__all__ = ["api"]


def transfer_body(source: str, target: str, amount: str = "1.00") -> dict:
    return {
        "id": str(uuid7()),
        "source_wallet_id": source,
        "target_wallet_id": target,
        "amount": amount,
        "currency": "CNY",
    }


async def test_a_signed_request_by_a_registered_key_is_served(api):
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)
    assert (await api.get(alpha, f"/v1/wallets/{wallet['id']}")).status == 200


async def test_unsigned_requests_are_refused_before_anything_else(api):
    assert_problem(await api.get(None, "/v1/audit/head"), 401, "signature_missing")
    assert_problem(await api.post(None, "/v1/transfers", {"id": "x"}), 401, "signature_missing")
    # Unknown /v1 paths too: no unsigned probing of which routes exist.
    assert_problem(await api.get(None, "/v1/no-such-thing"), 401, "signature_missing")


async def test_a_signature_by_another_key_is_invalid(api):
    alpha = await api.institution("hk-alphapay")
    answer = await api.get(alpha, "/v1/audit/head", key=SigningKey.generate())
    assert_problem(answer, 401, "signature_invalid")


async def test_an_unregistered_key_id_is_unknown_key(api):
    stranger = Party("hk-nobody")
    assert_problem(await api.get(stranger, "/v1/audit/head"), 401, "unknown_key")


@pytest.mark.parametrize("age_s", [400, -400])
async def test_a_signature_outside_the_300_second_window_is_expired(api, age_s):
    alpha = await api.institution("hk-alphapay")
    answer = await api.get(alpha, "/v1/audit/head", created=int(time.time()) - age_s)
    assert_problem(answer, 401, "signature_expired")


async def test_a_body_changed_after_signing_is_refused(api):
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)
    signed = json.dumps(transfer_body(wallet["id"], wallet["id"], "1.00")).encode()
    tampered = signed.replace(b'"1.00"', b'"9.00"')
    headers = sign_request("POST", "/v1/transfers", signed, key_id=alpha.id, signing_key=alpha.key)
    # The signed digest no longer matches the body.
    answer = await api.call(None, "POST", "/v1/transfers", body=tampered, headers=headers)
    assert_problem(answer, 400, "content_digest_mismatch")
    # A digest recomputed for the new body is not the one the signature covers.
    answer = await api.call(
        None, "POST", "/v1/transfers", body=tampered, headers=headers | {"Content-Digest": content_digest(tampered)}
    )
    assert_problem(answer, 401, "signature_invalid")


async def test_a_body_without_content_digest_is_refused(api):
    alpha = await api.institution("hk-alphapay")
    body = json.dumps({"owner_ref": "c1", "owner_kind": "person", "currency": "CNY"}).encode()
    headers = sign_request("POST", "/v1/wallets", body, key_id=alpha.id, signing_key=alpha.key)
    del headers["Content-Digest"]
    answer = await api.call(None, "POST", "/v1/wallets", body=body, headers=headers)
    assert_problem(answer, 400, "content_digest_mismatch")


async def test_an_oversized_body_is_payload_too_large(api):
    alpha = await api.institution("hk-alphapay")
    answer = await api.post(alpha, "/v1/wallets", body=b'{"owner_ref": "' + b"x" * BODY_LIMIT_BYTES + b'"}')
    assert_problem(answer, 413, "payload_too_large")


async def test_malformed_json_is_invalid_request(api):
    alpha = await api.institution("hk-alphapay")
    assert_problem(await api.post(alpha, "/v1/wallets", body=b'{"owner_ref": '), 400, "invalid_request")


async def test_a_body_that_is_not_json_is_415(api):
    alpha = await api.institution("hk-alphapay")
    answer = await api.post(alpha, "/v1/wallets", body=b"owner_ref=c1", headers={"Content-Type": "text/plain"})
    assert_problem(answer, 415, "invalid_request")


async def test_every_415_is_declared_in_the_document(api):
    # Found by tests/test_api_schemathesis.py: a POST without a body, or with a body that is not JSON
    # (to a route that takes none too), answers 415, which /openapi.json did not declare.
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)
    no_body = await api.post(alpha, "/v1/transfers")
    text_body = await api.post(
        alpha, f"/v1/wallets/{wallet['id']}/freeze", body=b"please", headers={"Content-Type": "text/plain"}
    )
    assert_problem(no_body, 415, "invalid_request")
    assert_problem(text_body, 415, "invalid_request")
    async with api.client.get("/openapi.json") as response:
        paths = (await response.json())["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            assert ("415" in operation["responses"]) == (method == "post"), (method, path)


async def test_unknown_fields_are_refused_with_their_pointer(api):
    alpha = await api.institution("hk-alphapay")
    answer = await api.post(alpha, "/v1/wallets", {"owner_ref": "c", "owner_kind": "person", "currency": "CNY", "x": 1})
    problem = assert_problem(answer, 400, "invalid_request")
    assert problem["errors"][0]["pointer"] == "#/x"


async def test_the_openapi_document_declares_every_route_and_its_problems(api):
    from openapi_spec_validator import validate

    async with api.client.get("/openapi.json") as response:
        document = await response.json()
    validate(document)
    paths = document["paths"]
    for path, method in [
        ("/v1/institutions", "post"),
        ("/v1/institutions/{id}", "get"),
        ("/v1/institutions/{id}/keys", "post"),
        ("/v1/institutions/{id}/keys/retire", "post"),
        ("/v1/wallets", "post"),
        ("/v1/wallets/{id}", "get"),
        ("/v1/wallets/{id}/transfers", "get"),
        ("/v1/wallets/{id}/freeze", "post"),
        ("/v1/wallets/{id}/unfreeze", "post"),
        ("/v1/wallets/{id}/close", "post"),
        ("/v1/wallets/{id}/tier", "post"),
        ("/v1/wallets/{id}/deposits", "post"),
        ("/v1/wallets/{id}/withdrawals", "post"),
        ("/v1/transfers", "post"),
        ("/v1/transfers/{id}", "get"),
        ("/v1/transfers/{id}/post", "post"),
        ("/v1/transfers/{id}/void", "post"),
        ("/v1/transfer-batches", "post"),
        ("/v1/audit/head", "get"),
    ]:
        operation = paths[path][method]
        assert operation["security"], path
        assert "401" in operation["responses"], path
    transfer_problems = paths["/v1/transfers"]["post"]["responses"]
    assert {"201", "200", "400", "404", "409", "422"} <= set(transfer_problems)
    assert "insufficient_funds" in transfer_problems["422"]["description"]
