"""Schemathesis against the served ``/openapi.json``: every operation, signed and unsigned
(``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``, ``/docs``), on SQLite and PostgreSQL,
must answer without a 5xx, with a documented status code, the declared content type, and a body
that matches the declared schema.

The app is the real one (``create_app`` with the default authenticator) on the test's database,
served on loopback from a thread of its own: schemathesis sends synchronous ``requests`` calls, so
the server's event loop cannot be the test's. An operator, two institutions, four wallets (two of
them funded) and a posted and a pending transfer are set up first, and the generated path
parameters and transfer bodies name them some of the time, so that the run reaches real resources
rather than only 404s.

The run is schemathesis' own engine (what ``schemathesis run`` drives): the examples, coverage and
fuzzing phases, positive and negative data, ``MAX_EXAMPLES`` fuzzed cases per operation, a fixed
seed; the stateful phase is off. (``schemathesis.pytest.from_fixture`` would give one subtest per
operation, but 4.32 reads ``request.node._nodeid``, which pytest 9 no longer has.)

Signing: ``RequestSigner`` is an auth provider, registered with the loaded schema's ``auth()``
decorator (the same one as ``@schemathesis.auth()``, scoped to this schema so that nothing stays
registered for the rest of the session). Schemathesis applies providers to the generated ``Case``,
before its body is serialised, so its ``set`` gives the case a ``requests`` auth (``case._auth``,
the slot schemathesis' own ``set_from_requests`` provider fills), which ``requests`` calls on the
*prepared* request: the final method, path with its encoded query and body bytes are what
``service.auth.sign_request`` signs (Content-Digest, Signature-Input, Signature), exactly as they go
on the wire. Caching is off (``refresh_interval=None``): every request gets its own signature.
Requests schemathesis sends unsigned on purpose (negative tests of the security scheme) must
answer 401, which the document declares.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import strategies as st
from nacl.signing import SigningKey
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events

from ledger import Batcher, Ledger
from ledger.db import create_engine
from service.app import create_app
from service.auth import sign_request
from service.config import Settings
from service.keys import WALLETS_KEY
from tests.api_support import BODY_LIMIT_BYTES, Api, Party
from tests.conftest import assert_invariants
from wallets.model import InstitutionKind

# Fuzzed examples per operation (the examples and coverage phases add their own, bounded, cases).
MAX_EXAMPLES = 15
REQUEST_TIMEOUT_S = 10
# The whole test's deadline (pytest-timeout), per database: a run takes about 15-25 s here.
RUN_DEADLINE_S = 90
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20260501,
        "workers": 1,
        "request-timeout": REQUEST_TIMEOUT_S,
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    }
)
SERVER_START_TIMEOUT_S = 30.0

# The parties and resources, fixed so that the generation hooks can name them on every database.
OPERATOR = Party("operator")
ALPHA = Party("hk-alphapay")  # signs wallets, transfers and the audit head
BETA = Party("sz-betapay")  # signs key rotation only
ALPHA_CNY = uuid.UUID("019a0000-0000-7000-8000-000000000001")  # funded
ALPHA_CNY_EMPTY = uuid.UUID("019a0000-0000-7000-8000-000000000002")
ALPHA_HKD = uuid.UUID("019a0000-0000-7000-8000-000000000003")  # funded
BETA_MERCHANT = uuid.UUID("019a0000-0000-7000-8000-000000000004")  # another institution's
POSTED_TRANSFER = uuid.UUID("019a0000-0000-7000-8000-0000000000a1")
PENDING_TRANSFER = uuid.UUID("019a0000-0000-7000-8000-0000000000a2")
WALLET_IDS = [str(ALPHA_CNY), str(ALPHA_CNY_EMPTY), str(ALPHA_HKD), str(BETA_MERCHANT)]
TRANSFER_IDS = [str(POSTED_TRANSFER), str(PENDING_TRANSFER)]
INSTITUTION_IDS = [OPERATOR.id, ALPHA.id, BETA.id]
# Quote ids are the ledger's, learnt when the seed asks for one (refilled for each database's run).
QUOTE_IDS: list[str] = []
KNOWN_PATH_IDS = {
    "/v1/institutions/": INSTITUTION_IDS,
    "/v1/wallets/": WALLET_IDS,
    "/v1/transfers/": TRANSFER_IDS,
    "/v1/fx/quotes/": QUOTE_IDS,
}


class LedgerServer:
    """The app on ``database_url``, served on 127.0.0.1 by an event loop in a thread of its own."""

    def __init__(self, database_url: str, data_dir) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self.base_url = ""
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="ledger-under-schemathesis", daemon=True)

    def __enter__(self) -> LedgerServer:
        self._thread.start()
        if not self._ready.wait(SERVER_START_TIMEOUT_S):
            raise TimeoutError("the ledger server did not start")
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(SERVER_START_TIMEOUT_S)
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # handed to the test's thread
            self._failure = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ledger = Ledger(create_engine(self.database_url), SigningKey.generate())
        batcher = Batcher(ledger, expiry_interval_s=None)
        batcher.start()
        app = create_app(
            Settings(self.data_dir, self.database_url),
            ledger=ledger,
            batcher=batcher,
            body_size_max_bytes=BODY_LIMIT_BYTES,
        )
        client = TestClient(TestServer(app, host="127.0.0.1"))
        try:
            await client.start_server()
            await app[WALLETS_KEY].register_institution(
                OPERATOR.id, InstitutionKind.OPERATOR, "Corridor operator", bytes(OPERATOR.key.verify_key)
            )
            await _seed(Api(client, app, ledger, OPERATOR))
            self.base_url = str(client.make_url("")).rstrip("/")
            self._ready.set()
            await self._stop.wait()
        finally:
            await client.close()
            await batcher.close()
            try:
                await assert_invariants(ledger)
            finally:
                await ledger.close()


async def _seed(api: Api) -> None:
    async def ok(party: Party, path: str, payload: dict[str, Any]) -> None:
        answer = await api.post(party, path, payload)
        assert answer.status == 201, (path, answer.body)

    for party, kind in ((ALPHA, "hk_payment_institution"), (BETA, "sz_acquirer")):
        payload = {"id": party.id, "name": party.id.upper(), "kind": kind, "public_key": party.public_key}
        await ok(OPERATOR, "/v1/institutions", payload)
    person = {"owner_kind": "person", "currency": "CNY"}
    await ok(ALPHA, "/v1/wallets", {"id": str(ALPHA_CNY), "owner_ref": "cust-1", **person})
    await ok(ALPHA, "/v1/wallets", {"id": str(ALPHA_CNY_EMPTY), "owner_ref": "cust-2", **person})
    await ok(ALPHA, "/v1/wallets", {"id": str(ALPHA_HKD), "owner_ref": "cust-3", **person, "currency": "HKD"})
    merchant = {"name": "Futian Noodles", "city": "Shenzhen", "category_code": "5812"}
    shop = {"id": str(BETA_MERCHANT), "owner_ref": "m-1", "owner_kind": "merchant", "currency": "CNY"}
    await ok(BETA, "/v1/wallets", shop | {"merchant": merchant})
    await ok(ALPHA, f"/v1/wallets/{ALPHA_CNY}/deposits", {"id": str(uuid.uuid4()), "amount": "800.00"})
    await ok(ALPHA, f"/v1/wallets/{ALPHA_HKD}/deposits", {"id": str(uuid.uuid4()), "amount": "800.00"})
    transfer = {"source_wallet_id": str(ALPHA_CNY), "target_wallet_id": str(ALPHA_CNY_EMPTY), "currency": "CNY"}
    await ok(ALPHA, "/v1/transfers", {"id": str(POSTED_TRANSFER), "amount": "10.00", **transfer})
    await ok(ALPHA, "/v1/transfers", {"id": str(PENDING_TRANSFER), "amount": "5.00", "pending": True, **transfer})
    # Rates for both directions, so that generated quote requests can be priced.
    for source, target, mid in (("HKD", "CNY", "0.9234"), ("CNY", "HKD", "1.083")):
        rate = {"source_currency": source, "target_currency": target, "mid_rate": mid, "spread_bps": 50}
        await ok(OPERATOR, "/v1/fx/rates", rate)
    quote = await api.post(
        ALPHA, "/v1/fx/quotes", {"source_currency": "HKD", "target_currency": "CNY", "target_amount": "10.00"}
    )
    assert quote.status == 201, quote.body
    QUOTE_IDS[:] = [quote.body["id"]]


# -- signing -----------------------------------------------------------------------------------


class SignedBy(requests.auth.AuthBase):
    """Signs the prepared request, i.e. the bytes ``requests`` is about to send."""

    def __init__(self, party: Party) -> None:
        self.party = party

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body.encode() if isinstance(request.body, str) else request.body
        for name in ("Content-Digest", "Signature-Input", "Signature"):
            request.headers.pop(name, None)  # whatever was generated for the security scheme
        request.headers.update(
            sign_request(
                request.method or "GET",
                request.path_url,
                body or None,
                key_id=self.party.id,
                signing_key=self.party.key,
                created=int(time.time()),
            )
        )
        return request


def signer_for(path: str) -> Party | None:
    """Who signs an operation's requests. Key rotation is signed by ``sz-betapay``, which may change
    only its own keys and signs nothing else: schemathesis learns public keys from responses, and
    with the operator's signature it retired the operator's own key, after which every later
    operator request answered 401 and the run reached nothing behind them."""
    if not path.startswith("/v1/"):
        return None
    if path.startswith("/v1/institutions/{id}/keys"):
        return BETA
    return OPERATOR if path.startswith(("/v1/institutions", "/v1/fx/rates")) else ALPHA


# -- the run ---------------------------------------------------------------------------------


class RequestSigner:
    """RFC 9421 for every /v1/ operation, by ``signer_for``'s party; unsigned operations get nothing."""

    def get(self, case, context) -> Party | None:
        return signer_for(context.operation.path)

    def set(self, case, party: Party, context) -> None:
        case._auth = SignedBy(party)


def load_schema(server: LedgerServer):
    loaded = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", config=CONFIG)
    # Every operation: schemathesis leaves out the one that served the document unless a filter names it.
    schema = loaded.include(path_regex=r"^/")
    schema.auth(refresh_interval=None)(RequestSigner)

    @schema.hook
    def before_generate_path_parameters(context, strategy):
        path = context.operation.path
        for prefix, ids in KNOWN_PATH_IDS.items():
            if path.startswith(prefix) and "{id}" in path:
                return st.one_of(strategy, st.fixed_dictionaries({"id": st.sampled_from(ids)}))
        return strategy

    @schema.hook
    def flatmap_body(context, body):
        # Transfers name the caller's funded wallets some of the time.
        if isinstance(body, dict) and "source_wallet_id" in body:
            return st.one_of(
                st.just(body),
                st.builds(
                    lambda source, target: {**body, "source_wallet_id": source, "target_wallet_id": target},
                    st.sampled_from(WALLET_IDS[:3]),
                    st.sampled_from(WALLET_IDS),
                ),
            )
        return st.just(body)

    return schema


@pytest.fixture
def ledger_server(database_url, tmp_path) -> Iterator[LedgerServer]:
    with LedgerServer(database_url, tmp_path) as server:
        yield server


@pytest.mark.slow  # about 20 s a database: in CI's full run, out of the fast loop
@pytest.mark.timeout(RUN_DEADLINE_S)
def test_every_operation_conforms_to_the_served_schema(ledger_server: LedgerServer) -> None:
    schema = load_schema(ledger_server)
    started = time.perf_counter()
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations: set[str] = set()
    phases: list[str] = []
    stop_reason = "no EngineFinished event"
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.NonFatalError | events.FatalError):
            failures.append(f"{type(event).__name__}: {getattr(event, 'info', event)}")
        if isinstance(event, events.PhaseFinished):
            phases.append(f"{event.phase.name.value} {event.status.value} at {time.perf_counter() - started:.1f} s")
        if isinstance(event, events.EngineFinished):
            stop_reason = event.stop_reason.value
        if not isinstance(event, events.ScenarioFinished):
            continue
        if event.label:
            operations.add(event.label)
        recorder = event.recorder
        for interaction in recorder.interactions.values():
            if interaction.response is not None:
                statuses[interaction.response.status_code] += 1
        for case_id, checks in recorder.checks.items():
            for check in checks:
                if check.status is Status.FAILURE and check.failure_info is not None:
                    failures.append(_describe(recorder, case_id, check))
    elapsed = time.perf_counter() - started
    print(
        f"\nschemathesis: {len(operations)} operations, {statuses.total()} requests in {elapsed:.1f} s; "
        f"statuses {dict(sorted(statuses.items()))}; phases: {', '.join(phases)}; stopped: {stop_reason}"
    )
    assert not failures, "\n\n".join(dict.fromkeys(failures))
    assert stop_reason == "completed"
    served = {f"{method.upper()} {path}" for path, item in schema.raw_schema["paths"].items() for method in item}
    assert {"GET /healthz", "GET /readyz", "GET /metrics", "GET /openapi.json"} <= served
    assert operations == served, served ^ operations


def _describe(recorder, case_id: str, check) -> str:
    failure = check.failure_info.failure
    interaction = recorder.interactions.get(case_id)
    request = interaction.request if interaction is not None else None
    response = interaction.response if interaction is not None else None
    lines = [f"{recorder.label}: {check.name}: {failure.title}", failure.message]
    if request is not None:
        lines.append(f"  request: {request.method} {request.uri} body={request.body!r}"[:600])
    if response is not None:
        lines.append(f"  response: {response.status_code} {response.content[:400]!r}")
    return "\n".join(lines)
