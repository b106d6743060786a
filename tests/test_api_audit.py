"""GET /v1/audit/head: the newest sealed block, verifiable with the ledger's public key."""

from __future__ import annotations

import base64

from nacl.signing import VerifyKey

from tests.api_support import api

__all__ = ["api"]


async def test_the_audit_head_is_signed_by_the_ledger_key_it_names(api):
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)
    await api.deposit(alpha, wallet["id"], "10.00")
    answer = await api.get(alpha, "/v1/audit/head")
    assert answer.status == 200
    head = answer.body
    assert head["sequence"] >= 1
    assert len(head["hash"]) == 64 and int(head["hash"], 16) >= 0
    public_key = base64.b64decode(head["public_key"])
    assert public_key == bytes(api.ledger.verify_key) and len(public_key) == 32
    # The signature is over the block hash: anyone holding the public key can check the head.
    VerifyKey(public_key).verify(bytes.fromhex(head["hash"]), base64.b64decode(head["signature"]))
    assert head["created_at"].endswith("Z")

    await api.deposit(alpha, wallet["id"], "1.00")
    assert (await api.get(alpha, "/v1/audit/head")).body["sequence"] > head["sequence"]
