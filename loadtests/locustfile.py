"""Locust users for the corridor, signing every request with the project's own signer.

    locust -f loadtests/locustfile.py HotTransferUser      # normally started by `python -m loadtests run`

Users (``FastHttpUser``, gevent) sign with ``service.auth.sign_request``, the same pure function
``LedgerClient`` uses (RFC 9421 over @method, @path, @query and an RFC 9530 Content-Digest):

- ``HotTransferUser``: wallet-to-wallet transfers between the seeded e-CNY wallets of its
  institution and all others; ``LOADTEST_HOT_SHARE`` of them go to the one hot merchant;
  ``LOADTEST_REFUSAL_SHARE`` are overdrafts that must be refused (``insufficient_funds``).
- ``OperatorUser``: the back office while load runs: wallets, statements, the audit head,
  institutions; settlement windows (and one window close) only when the server's /openapi.json
  has them.
- ``MerchantLoadUser``: Hong Kong payers paying Shenzhen merchants (Zipf popularity) through an FX
  quote and a payment, with refunds and expected refusals (overdrafts, reused and expired quotes).
  Needs the settlement API (``/v1/payments``).
- ``BaselineUser``: ``GET /healthz`` (no database, no signature): the same Locust set-up against
  a trivial endpoint, so that figures read as a ratio.

Expected business refusals are counted as successes in Locust (named ``… [refused]`` when the
request was meant to be refused); anything else that is not 2xx is a failure. A 503, or no answer,
is retried with the same body (the same ids), as a client must. Every money request's final answer
is written to a per-user CSV in ``LOADTEST_LOG_DIR`` (kind, institution, id, status, code, amount
in minor units) for ``loadtests.verify``. Settings come from the environment so that Locust workers
on other machines read them the same way: ``LOADTEST_SEED_FILE``, ``LOADTEST_LOG_DIR``,
``LOADTEST_HOT_SHARE`` (0.3), ``LOADTEST_REFUSAL_SHARE`` (0.02), ``LOADTEST_REFUND_SHARE`` (0.05),
``LOADTEST_ZIPF_S`` (1.1).
"""

from __future__ import annotations

# isort: off
import locust  # first: it monkey-patches the standard library for gevent

# isort: on
import bisect
import itertools
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, task

from ledger.ids import uuid7
from loadtests.seed import SeedResult, key_from_text, read_seed
from service.auth import sign_request
from service.client import encode_json_body

HOT_SHARE = float(os.environ.get("LOADTEST_HOT_SHARE", "0.3"))
REFUSAL_SHARE = float(os.environ.get("LOADTEST_REFUSAL_SHARE", "0.02"))
REFUND_SHARE = float(os.environ.get("LOADTEST_REFUND_SHARE", "0.05"))
ZIPF_S = float(os.environ.get("LOADTEST_ZIPF_S", "1.1"))
ATTEMPTS_MAX = 3  # a 503 or no answer is retried with the same body, at most this often in all
RETRY_PAUSE_S = 0.2
AMOUNT_MINOR_MAX = 2_000  # 20.00 per ordinary transfer
OVERDRAFT = "45000.00"  # below a tier-2 wallet's per-payment cap, far above what any wallet holds
EXPECTED_REFUSALS = frozenset({"insufficient_funds", "limit_exceeded"})
PAYMENT_REFUSALS = frozenset({"insufficient_funds", "limit_exceeded", "quote_expired", "quote_already_used"})
RETRY_STATUSES = frozenset({0, 502, 503, 504})
STATEMENT_LIMIT = 20
LOG_HEADER = "kind,institution,id,status,code,amount_minor\n"

_seed_lock = threading.Lock()
_seed: SeedResult | None = None
_user_numbers = itertools.count()
_routes: set[str] | None = None
_window_closed = False
_loaded_at = time.monotonic()
WINDOW_CLOSE_AFTER_S = 5.0


def seed() -> SeedResult:
    """The seed file, read once per process."""
    global _seed
    with _seed_lock:
        if _seed is None:
            _seed = read_seed(Path(os.environ["LOADTEST_SEED_FILE"]))
        return _seed


class RequestLog:
    """One user's money requests and their final answers, a CSV line each, flushed as written so
    that a user stopped mid-run leaves every answer it got on disk."""

    def __init__(self, user_number: int) -> None:
        directory = Path(os.environ.get("LOADTEST_LOG_DIR", "loadtest-requests"))
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"requests-{os.getpid()}-{user_number}.csv"
        self._file = self.path.open("w", buffering=1)
        self._file.write(LOG_HEADER)

    def record(self, kind: str, institution: str, request_id: str, status: int, code: str, amount_minor: int) -> None:
        self._file.write(f"{kind},{institution},{request_id},{status},{code},{amount_minor}\n")

    def close(self) -> None:
        self._file.close()


def minor_text(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def minor_of(text: str) -> int:
    units, _, cents = text.partition(".")
    return int(units) * 100 + int(cents.ljust(2, "0"))


class SignedUser(FastHttpUser):
    """A user that signs as one seeded institution and logs its money requests."""

    abstract = True
    wait_time = constant(0)  # closed loop: each user sends its next request when the last is answered

    def on_start(self) -> None:
        self.seed = seed()
        self.number = next(_user_numbers)
        self.log = RequestLog(self.number)

    def on_stop(self) -> None:
        self.log.close()

    def signed(
        self,
        method: str,
        path: str,
        key_id: str,
        key_text: str,
        payload: Any = None,
        *,
        name: str,
        expected: frozenset[str] = frozenset(),
    ) -> tuple[int, dict[str, Any] | None]:
        """Send a signed request; retry 503 and silence with the same bytes. Answers (status,
        JSON body). A 2xx or a problem whose code is in ``expected`` is a success, the rest a failure."""
        body = encode_json_body(payload) if payload is not None else None
        key = _signing_key(key_text)
        status, data = 0, None
        for attempt in range(ATTEMPTS_MAX):
            headers = {"Content-Type": "application/json"} if body is not None else {}
            headers |= sign_request(method, path, body, key_id=key_id, signing_key=key)
            with self.client.request(
                method, path, data=body, headers=headers, name=name, catch_response=True
            ) as response:
                status = response.status_code or 0
                data = _json(response)
                code = data.get("code", "") if isinstance(data, dict) and status >= 400 else ""
                if 200 <= status < 300 or code in expected:
                    response.success()
                elif status in RETRY_STATUSES and attempt < ATTEMPTS_MAX - 1:
                    response.failure(f"{status} {code or response.error}: retried with the same id")
                else:
                    response.failure(f"{status} {code or response.error}")
            if status not in RETRY_STATUSES:
                break
            time.sleep(RETRY_PAUSE_S)
        return status, data


_keys: dict[str, Any] = {}


def _signing_key(text: str):
    key = _keys.get(text)
    if key is None:
        key = _keys[text] = key_from_text(text)
    return key


def _json(response) -> dict[str, Any] | None:
    try:
        data = json.loads(response.content or b"null")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _problem_code(status: int, data: dict[str, Any] | None) -> str:
    return (data or {}).get("code", "") if status >= 300 else ""


class HotTransferUser(SignedUser):
    """Transfers from the wallets of one institution (users take the institutions in turn)."""

    def on_start(self) -> None:
        super().on_start()
        hk = sorted(self.seed.wallets)
        self.institution_id = hk[self.number % len(hk)]
        self.key_text = self.seed.institutions[self.institution_id]
        self.own_wallets = self.seed.wallets[self.institution_id]
        self.all_wallets = [wallet for institution in hk for wallet in self.seed.wallets[institution]]
        self.hot_merchant = self.seed.merchants[0]

    @task
    def transfer(self) -> None:
        source = random.choice(self.own_wallets)
        overdraft = random.random() < REFUSAL_SHARE
        if random.random() < HOT_SHARE:
            target = self.hot_merchant
        else:
            target = random.choice(self.all_wallets)
            while target == source:
                target = random.choice(self.all_wallets)
        amount = OVERDRAFT if overdraft else minor_text(random.randint(1, AMOUNT_MINOR_MAX))
        transfer_id = str(uuid7())
        payload = {
            "id": transfer_id,
            "source_wallet_id": source,
            "target_wallet_id": target,
            "amount": amount,
            "currency": self.seed.currency,
        }
        name = "POST /v1/transfers [refused]" if overdraft else "POST /v1/transfers"
        expected = frozenset({"insufficient_funds"}) if overdraft else EXPECTED_REFUSALS
        status, data = self.signed(
            "POST", "/v1/transfers", self.institution_id, self.key_text, payload, name=name, expected=expected
        )
        if overdraft and 200 <= status < 300:
            # The funds check let an overdraft through: a failure of the ledger, not of the load.
            self.environment.events.request.fire(
                request_type="CHECK", name="overdraft refused", response_time=0, response_length=0,
                exception=AssertionError(f"overdraft {transfer_id} was accepted"), context={},
            )  # fmt: skip
        self.log.record(
            "transfer", self.institution_id, transfer_id, status, _problem_code(status, data), minor_of(amount)
        )


def server_routes(user: FastHttpUser) -> set[str]:
    """The server's paths from /openapi.json, read once per process (not counted in the stats)."""
    global _routes
    if _routes is None:
        with user.client.get("/openapi.json", name="GET /openapi.json", catch_response=True) as response:
            try:
                _routes = set(json.loads(response.content)["paths"])
            except (ValueError, KeyError, TypeError):
                _routes = set()
            response.success()
    return _routes


class OperatorUser(SignedUser):
    """Back-office reads while load runs: institutions read their wallets and statements, the
    operator the audit head and the institutions; settlement windows when the server has them."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.hk = sorted(self.seed.wallets)
        self.settlement = "/v1/settlement/windows" in server_routes(self)

    def _some_wallet(self) -> tuple[str, str]:
        institution_id = random.choice(self.hk)
        return institution_id, random.choice(self.seed.wallets[institution_id])

    @task(4)
    def wallet(self) -> None:
        institution_id, wallet_id = self._some_wallet()
        key = self.seed.institutions[institution_id]
        self.signed("GET", f"/v1/wallets/{wallet_id}", institution_id, key, name="GET /v1/wallets/{id}")

    @task(3)
    def statement(self) -> None:
        if random.random() < 0.2:  # the hot merchant's statement: its newest lines, under load
            institution_id, wallet_id = self.seed.acquirer, self.seed.merchants[0]
        else:
            institution_id, wallet_id = self._some_wallet()
        key = self.seed.institutions[institution_id]
        path = f"/v1/wallets/{wallet_id}/transfers?limit={STATEMENT_LIMIT}"
        self.signed("GET", path, institution_id, key, name="GET /v1/wallets/{id}/transfers")

    @task(1)
    def audit_head(self) -> None:
        self.signed("GET", "/v1/audit/head", "operator", self.seed.operator_key, name="GET /v1/audit/head")

    @task(1)
    def institutions(self) -> None:
        institution_id = random.choice(self.hk)
        self.signed(
            "GET", f"/v1/institutions/{institution_id}", "operator", self.seed.operator_key,
            name="GET /v1/institutions/{id}",
        )  # fmt: skip
        self.signed("GET", "/v1/institutions", "operator", self.seed.operator_key, name="GET /v1/institutions")

    @task(1)
    def settlement_windows(self) -> None:
        global _window_closed
        if not self.settlement:
            return
        _, data = self.signed(
            "GET", "/v1/settlement/windows", "operator", self.seed.operator_key, name="GET /v1/settlement/windows"
        )
        items = (data or {}).get("items") or []
        open_windows = [window for window in items if window.get("status") == "open"]
        if open_windows and not _window_closed and time.monotonic() - _loaded_at > WINDOW_CLOSE_AFTER_S:
            _window_closed = True  # one close per load generator process, a few seconds into the run
            window_id = open_windows[0]["id"]
            self.signed(
                "POST", f"/v1/settlement/windows/{window_id}/close", "operator", self.seed.operator_key,
                name="POST /v1/settlement/windows/{id}/close",
            )  # fmt: skip


class MerchantLoadUser(SignedUser):
    """A Hong Kong payment institution's customers paying Shenzhen merchants: an FX quote for the
    merchant's CNY price, then the payment; some payments are refunded; some requests are meant to
    be refused (an overdraft, a quote used twice, a quote past its expiry)."""

    def on_start(self) -> None:
        super().on_start()
        if "/v1/payments" not in server_routes(self):
            raise locust.exception.StopUser("merchant-load needs the settlement API (/v1/payments)")
        hk = sorted(self.seed.wallets)
        self.institution_id = hk[self.number % len(hk)]
        self.key_text = self.seed.institutions[self.institution_id]
        self.payers = self.seed.wallets[self.institution_id]
        weights = [1 / (rank**ZIPF_S) for rank in range(1, len(self.seed.merchants) + 1)]
        self.cumulative = list(itertools.accumulate(weights))
        self.paid: list[tuple[str, int]] = []  # (payment id, CNY minor) of this user's payments
        self.used_quotes: list[dict[str, Any]] = []

    def _merchant(self) -> str:
        point = random.random() * self.cumulative[-1]
        return self.seed.merchants[bisect.bisect_left(self.cumulative, point)]

    def _quote(self, price: str) -> dict[str, Any] | None:
        payload = {"source_currency": "HKD", "target_currency": "CNY", "target_amount": price}
        status, data = self.signed(
            "POST", "/v1/fx/quotes", self.institution_id, self.key_text, payload, name="POST /v1/fx/quotes"
        )
        return data if 200 <= status < 300 else None

    @task(10)
    def pay(self) -> None:
        refusal = random.random() < REFUSAL_SHARE
        kind = random.choice(("overdraft", "reused_quote", "expired_quote")) if refusal else "ok"
        price_minor = random.randint(100, 50_000)  # CNY 1.00 to 500.00
        if kind == "overdraft":
            price_minor = 900_000_00  # CNY 900,000: more than any payer holds
        quote = self._stale_quote(kind) or self._quote(minor_text(price_minor))
        if quote is None:
            return
        price_minor = minor_of(quote.get("target_amount", minor_text(price_minor)))
        payment_id = str(uuid7())
        payload = {
            "id": payment_id,
            "payer_wallet_id": random.choice(self.payers),
            "merchant_wallet_id": self._merchant(),
            "amount": minor_text(price_minor),
            "currency": "CNY",
            "quote_id": quote["id"],
        }
        name = "POST /v1/payments" if kind == "ok" else f"POST /v1/payments [refused: {kind}]"
        status, data = self.signed(
            "POST", "/v1/payments", self.institution_id, self.key_text, payload, name=name, expected=PAYMENT_REFUSALS
        )
        self.log.record("payment", self.institution_id, payment_id, status, _problem_code(status, data), price_minor)
        if 200 <= status < 300:
            self.paid.append((payment_id, price_minor))
        self.used_quotes.append(quote)
        del self.used_quotes[:-50]

    def _stale_quote(self, kind: str) -> dict[str, Any] | None:
        """A quote already used (refused: quote_already_used), or one past its expiry (quote_expired)."""
        if kind == "reused_quote" and self.used_quotes:
            return self.used_quotes[-1]
        if kind == "expired_quote":
            now = time.time()
            for quote in self.used_quotes:
                if _epoch_s(quote.get("expires_at")) < now:
                    return quote
        return None

    @task(1)
    def refund(self) -> None:
        if not self.paid or random.random() > REFUND_SHARE * 10:
            return
        payment_id, price_minor = self.paid.pop(random.randrange(len(self.paid)))
        refund_id = str(uuid7())
        amount = random.choice((None, max(1, price_minor // 2)))
        payload: dict[str, Any] = {"id": refund_id} | ({"amount": minor_text(amount)} if amount else {})
        status, data = self.signed(
            "POST", f"/v1/payments/{payment_id}/refunds", self.institution_id, self.key_text, payload,
            name="POST /v1/payments/{id}/refunds",
        )  # fmt: skip
        self.log.record(
            "refund", self.institution_id, refund_id, status, _problem_code(status, data), amount or price_minor
        )


def _epoch_s(text: str | None) -> float:
    if not text:
        return float("inf")
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class BaselineUser(FastHttpUser):
    """The trivial endpoint: no signature, no database. The yardstick of the same Locust set-up."""

    wait_time = constant(0)

    @task
    def healthz(self) -> None:
        self.client.get("/healthz", name="GET /healthz")
