"""What the HTTP API tests share: an app built by ``create_app`` on the test's database (SQLite and
PostgreSQL through ``database_url``) with the real authenticator, institutions with their own
Ed25519 keys, and signed requests made the way a client makes them (``service.auth.sign_request``).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from nacl.signing import SigningKey

from ledger import Batcher, Ledger
from ledger.db import create_engine
from ledger.ids import uuid7
from service.app import create_app
from service.auth import sign_request
from service.config import Settings
from service.keys import METRICS_KEY, WALLETS_KEY
from tests.conftest import assert_invariants
from wallets.model import InstitutionKind

BODY_LIMIT_BYTES = 64 * 1024
PREFUNDED = "1000000000.00"  # settlement liquidity the test institutions get, per currency


@dataclass
class Party:
    """An institution as a client: its id (the key id) and its private key."""

    id: str
    key: SigningKey = field(default_factory=SigningKey.generate)

    @property
    def public_key(self) -> str:
        return public_key_text(self.key)


def public_key_text(key: SigningKey) -> str:
    return base64.b64encode(bytes(key.verify_key)).decode("ascii")


@dataclass
class Answer:
    status: int
    headers: Any
    body: Any
    raw: bytes

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None

    @property
    def replayed(self) -> bool:
        return self.headers.get("Idempotent-Replayed") == "true"

    def problem_without_request_id(self) -> dict:
        return {name: value for name, value in self.body.items() if name != "request_id"}


class Api:
    """Signed calls to the app under test, and the usual set-up steps as one-liners."""

    def __init__(self, client: TestClient, app, ledger: Ledger, operator: Party) -> None:
        self.client = client
        self.app = app
        self.ledger = ledger
        self.operator = operator

    @property
    def metrics(self):
        return self.app[METRICS_KEY]

    async def call(
        self,
        party: Party | None,
        method: str,
        path: str,
        payload: Any = None,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        created: int | None = None,
        key: SigningKey | None = None,
        key_id: str | None = None,
    ) -> Answer:
        """``payload`` as compact JSON (or ``body`` as given), signed by ``party`` (None: unsigned)."""
        if payload is not None:
            body = json.dumps(payload).encode()
        sent = {"Content-Type": "application/json"} if body is not None else {}
        if party is not None:
            sent |= sign_request(
                method,
                path,
                body,
                key_id=key_id or party.id,
                signing_key=key or party.key,
                created=created if created is not None else int(time.time()),
            )
        sent |= headers or {}
        async with self.client.request(method, path, data=body, headers=sent) as response:
            raw = await response.read()
            parsed = json.loads(raw) if raw and "json" in response.content_type else None
            return Answer(response.status, response.headers, parsed, raw)

    async def get(self, party: Party | None, path: str, **options: Any) -> Answer:
        return await self.call(party, "GET", path, **options)

    async def post(self, party: Party | None, path: str, payload: Any = None, **options: Any) -> Answer:
        return await self.call(party, "POST", path, payload, **options)

    # -- set-up steps, each asserting its own success ------------------------------------------

    async def institution(
        self, slug: str, kind: str = "hk_payment_institution", *, liquidity: str | None = PREFUNDED
    ) -> Party:
        """Registered by the operator and, unless ``liquidity`` is None, prefunded with that much
        settlement liquidity in CNY and HKD: a transfer to another institution's wallet records an
        obligation under the payer's net debit cap in force, which liquidity bounds."""
        party = Party(slug)
        answer = await self.post(
            self.operator,
            "/v1/institutions",
            {"id": slug, "name": slug.upper(), "kind": kind, "public_key": party.public_key},
        )
        assert answer.status == 201, answer.body
        if liquidity is not None and kind != "operator":
            for currency in ("CNY", "HKD"):
                payload = {"id": str(uuid7()), "amount": liquidity, "currency": currency}
                prefunded = await self.post(self.operator, f"/v1/institutions/{slug}/liquidity", payload)
                assert prefunded.status == 201, prefunded.body
        return party

    async def wallet(self, party: Party, currency: str = "CNY", **fields: Any) -> dict:
        payload = {"owner_ref": f"cust-{uuid.uuid4().hex[:8]}", "owner_kind": "person", "currency": currency} | fields
        answer = await self.post(party, "/v1/wallets", payload)
        assert answer.status == 201, answer.body
        return answer.body

    async def deposit(self, party: Party, wallet_id: str, amount: str) -> Answer:
        answer = await self.post(party, f"/v1/wallets/{wallet_id}/deposits", {"id": str(uuid7()), "amount": amount})
        assert answer.status == 201, answer.body
        return answer

    async def transfer(self, party: Party, source: str, target: str, amount: str, **fields: Any) -> Answer:
        payload = {
            "id": str(uuid7()),
            "source_wallet_id": source,
            "target_wallet_id": target,
            "amount": amount,
            "currency": "CNY",
        } | fields
        return await self.post(party, "/v1/transfers", payload)

    async def balance(self, party: Party, wallet_id: str) -> dict:
        answer = await self.get(party, f"/v1/wallets/{wallet_id}")
        assert answer.status == 200, answer.body
        return answer.body["balance"]


def assert_problem(answer: Answer, status: int, code: str) -> dict:
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["Content-Type"].startswith("application/problem+json"), answer.headers
    problem = answer.body
    assert problem["code"] == code and problem["status"] == status, problem
    assert problem["type"].endswith(code) and problem["title"] and problem["detail"]
    assert b"Traceback" not in answer.raw
    return problem


def refusals_counted(api: Api, code: str) -> float:
    return api.metrics.registry.get_sample_value("ledger_refusals_total", {"code": code}) or 0.0


@pytest.fixture
async def api(database_url, tmp_path, clock) -> AsyncIterator[Api]:
    """The app on a fresh database, with the operator registered directly in the wallets layer
    (as ``ledger init`` does); everything else goes through signed HTTP."""
    ledger = Ledger(create_engine(database_url), SigningKey.generate(), clock=clock)
    batcher = Batcher(ledger, expiry_interval_s=None)
    batcher.start()
    app = create_app(
        Settings(tmp_path, database_url), ledger=ledger, batcher=batcher, body_size_max_bytes=BODY_LIMIT_BYTES
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    operator = Party("operator")
    try:
        await app[WALLETS_KEY].register_institution(
            operator.id, InstitutionKind.OPERATOR, "Corridor operator", bytes(operator.key.verify_key)
        )
        yield Api(client, app, ledger, operator)
    finally:
        await client.close()
        await batcher.close()
        try:
            await assert_invariants(ledger)
        finally:
            await ledger.close()
