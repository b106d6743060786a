"""Institutions over HTTP: registration by the operator only, who may read whom, idempotent
registration, and key rotation (a retired key stops signing at once)."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from tests.api_support import Party, api, assert_problem, public_key_text

__all__ = ["api"]


async def test_the_operator_registers_an_institution(api):
    alpha = Party("hk-alphapay")
    payload = {"id": alpha.id, "name": "AlphaPay", "kind": "hk_payment_institution", "public_key": alpha.public_key}
    answer = await api.post(api.operator, "/v1/institutions", payload)
    assert answer.status == 201, answer.body
    body = answer.body
    assert body["id"] == "hk-alphapay" and body["name"] == "AlphaPay" and body["kind"] == "hk_payment_institution"
    assert [key["public_key"] for key in body["keys"]] == [alpha.public_key]
    assert body["keys"][0]["active"] is True and body["created_at"].endswith("Z")
    # The new institution signs at once.
    own = await api.get(alpha, "/v1/institutions/hk-alphapay")
    assert own.status == 200 and own.body == body
    assert (await api.get(api.operator, "/v1/institutions/hk-alphapay")).body == body


async def test_registering_again_is_idempotent_and_other_fields_conflict(api):
    alpha = Party("hk-alphapay")
    payload = {"id": alpha.id, "name": "AlphaPay", "kind": "hk_payment_institution", "public_key": alpha.public_key}
    first = await api.post(api.operator, "/v1/institutions", payload)
    again = await api.post(api.operator, "/v1/institutions", payload)
    assert again.status == 200 and again.replayed and again.body == first.body
    renamed = await api.post(api.operator, "/v1/institutions", payload | {"name": "Other"})
    assert_problem(renamed, 409, "exists_with_different_fields")


async def test_only_an_operator_registers_institutions(api):
    alpha = await api.institution("hk-alphapay")
    payload = {"id": "hk-beta", "name": "Beta", "kind": "operator", "public_key": Party("hk-beta").public_key}
    assert_problem(await api.post(alpha, "/v1/institutions", payload), 403, "forbidden")
    assert_problem(await api.get(api.operator, "/v1/institutions/hk-beta"), 404, "not_found")


async def test_an_institution_reads_only_itself(api):
    alpha = await api.institution("hk-alphapay")
    await api.institution("sz-bank", "sz_acquirer")
    assert_problem(await api.get(alpha, "/v1/institutions/sz-bank"), 403, "forbidden")
    # Existence is not revealed either: an unknown id is the same 403.
    assert_problem(await api.get(alpha, "/v1/institutions/sz-nobody"), 403, "forbidden")
    assert_problem(await api.get(api.operator, "/v1/institutions/sz-nobody"), 404, "not_found")


async def test_the_operator_lists_institutions_a_page_at_a_time(api):
    for slug in ("hk-a", "hk-b", "hk-c"):
        await api.institution(slug)
    first = await api.get(api.operator, "/v1/institutions?limit=2")
    assert first.status == 200
    assert [item["id"] for item in first.body["items"]] == ["hk-a", "hk-b"]
    second = await api.get(api.operator, f"/v1/institutions?limit=2&cursor={first.body['next_cursor']}")
    assert [item["id"] for item in second.body["items"]] == ["hk-c", "operator"]
    assert second.body["next_cursor"] is None
    assert_problem(await api.get(api.operator, "/v1/institutions?limit=501"), 400, "invalid_request")
    alpha = Party("hk-a", key=SigningKey.generate())
    assert_problem(await api.get(alpha, "/v1/institutions"), 401, "signature_invalid")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("public_key", "not base64!"),
        ("public_key", public_key_text(SigningKey.generate())[:-4] + "===="),
        ("public_key", "AAAA"),
        ("id", "HK AlphaPay"),
        ("id", "-leading-hyphen"),
        ("kind", "bank"),
        ("name", ""),
    ],
)
async def test_malformed_registrations_are_invalid_request(api, field, value):
    payload = {"id": "hk-alphapay", "name": "A", "kind": "hk_payment_institution"}
    payload |= {"public_key": Party("x").public_key, field: value}
    problem = assert_problem(await api.post(api.operator, "/v1/institutions", payload), 400, "invalid_request")
    assert problem["errors"][0]["pointer"] == f"#/{field}"


async def test_a_net_debit_cap_with_a_bad_amount_is_invalid_amount(api):
    payload = {"id": "hk-alphapay", "name": "A", "kind": "hk_payment_institution", "public_key": Party("x").public_key}
    answer = await api.post(
        api.operator, "/v1/institutions", payload | {"net_debit_cap": {"amount": "1.001", "currency": "CNY"}}
    )
    problem = assert_problem(answer, 400, "invalid_amount")
    assert problem["errors"][0]["pointer"] == "#/net_debit_cap/amount"


async def test_a_net_debit_cap_outside_the_corridors_currencies_is_invalid_request(api):
    payload = {"id": "hk-alphapay", "name": "A", "kind": "hk_payment_institution", "public_key": Party("x").public_key}
    answer = await api.post(
        api.operator, "/v1/institutions", payload | {"net_debit_cap": {"amount": "1000.00", "currency": "USD"}}
    )
    problem = assert_problem(answer, 400, "invalid_request")
    assert "net_debit_cap" in problem["detail"]


async def test_keys_rotate_and_a_retired_key_stops_signing(api):
    alpha = await api.institution("hk-alphapay")
    new_key = SigningKey.generate()
    added = await api.post(alpha, "/v1/institutions/hk-alphapay/keys", {"public_key": public_key_text(new_key)})
    assert added.status == 200, added.body
    assert [key["active"] for key in added.body["keys"]] == [True, True]
    # Both keys sign during the rotation.
    assert (await api.get(alpha, "/v1/institutions/hk-alphapay")).status == 200
    assert (await api.get(alpha, "/v1/institutions/hk-alphapay", key=new_key)).status == 200

    retired = await api.post(
        alpha, "/v1/institutions/hk-alphapay/keys/retire", {"public_key": alpha.public_key}, key=new_key
    )
    assert retired.status == 200, retired.body
    old = next(key for key in retired.body["keys"] if key["public_key"] == alpha.public_key)
    assert old["active"] is False and old["retired_at"] is not None
    assert_problem(await api.get(alpha, "/v1/institutions/hk-alphapay"), 401, "signature_invalid")
    assert (await api.get(alpha, "/v1/institutions/hk-alphapay", key=new_key)).status == 200

    # The last active key cannot be retired: the institution would lock itself out.
    last = await api.post(
        alpha, "/v1/institutions/hk-alphapay/keys/retire", {"public_key": public_key_text(new_key)}, key=new_key
    )
    assert_problem(last, 400, "invalid_request")


async def test_only_the_operator_or_the_institution_changes_its_keys(api):
    alpha = await api.institution("hk-alphapay")
    beta = await api.institution("hk-beta")
    stolen = {"public_key": beta.public_key}
    assert_problem(await api.post(beta, "/v1/institutions/hk-alphapay/keys", stolen), 403, "forbidden")
    assert_problem(await api.post(beta, "/v1/institutions/hk-alphapay/keys/retire", stolen), 403, "forbidden")
    # The operator may, e.g. for an institution that lost its key.
    replacement = SigningKey.generate()
    answer = await api.post(
        api.operator, "/v1/institutions/hk-alphapay/keys", {"public_key": public_key_text(replacement)}
    )
    assert answer.status == 200
    answer = await api.post(api.operator, "/v1/institutions/hk-alphapay/keys/retire", {"public_key": alpha.public_key})
    assert answer.status == 200
    assert_problem(await api.get(alpha, "/v1/institutions/hk-alphapay"), 401, "signature_invalid")
    unknown = await api.post(
        api.operator, "/v1/institutions/hk-alphapay/keys/retire", {"public_key": Party("z").public_key}
    )
    assert_problem(unknown, 404, "not_found")


async def test_a_net_debit_cap_is_kept_as_registered_and_shown(api):
    party = Party("hk-capped")
    payload = {"id": party.id, "name": "Capped", "kind": "hk_payment_institution", "public_key": party.public_key}
    cap = {"amount": "250000.00", "currency": "CNY"}
    created = await api.post(api.operator, "/v1/institutions", payload | {"net_debit_cap": cap})
    assert created.status == 201 and created.body["net_debit_cap"] == cap
    again = await api.post(api.operator, "/v1/institutions", payload | {"net_debit_cap": cap})
    assert again.status == 200 and again.replayed
    other = await api.post(api.operator, "/v1/institutions", payload | {"net_debit_cap": cap | {"amount": "1.00"}})
    assert_problem(other, 409, "exists_with_different_fields")
    read = await api.get(party, f"/v1/institutions/{party.id}")
    assert read.body["net_debit_cap"] == cap
