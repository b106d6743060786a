"""Locust users for the corridor, signing every request with the project's own signer.

    locust -f loadtests/locustfile.py HotTransferUser      # normally started by `python -m loadtests run`

Users (``FastHttpUser``, gevent) sign with ``service.auth.sign_request``, the same pure function
``LedgerClient`` uses (RFC 9421 over @method, @path, @query and an RFC 9530 Content-Digest):

- ``HotTransferUser``: wallet-to-wallet transfers between the seeded e-CNY wallets of its
  institution and all others; ``LOADTEST_HOT_SHARE`` of them go to the one hot merchant;
  ``LOADTEST_REFUSAL_SHARE`` are overdrafts that must be refused (``insufficient_funds``).
- ``OperatorUser``: the back office while load runs: wallets, statements, the audit head,
  institutions; settlement windows and batches, and one close of window 1 (when the server's
  /openapi.json has them).
- ``MerchantLoadUser``: Hong Kong payers paying Shenzhen merchants (Zipf popularity) through an FX
  quote and a payment, with full and partial refunds and expected refusals (a reused quote, a
  payer with no funds, an institution over its net debit cap). Needs the settlement API.
- ``BaselineUser``: ``GET /healthz`` (no database, no signature): the same Locust set-up against
  a trivial endpoint, so that figures read as a ratio.

Expected business refusals are counted as successes in Locust (named ``… [refused]`` when the
request was meant to be refused); anything else that is not 2xx is a failure. A 503, or no answer,
is retried with the same body (the same ids), as a client must. Every money request's final answer
is written to a per-user CSV in ``LOADTEST_LOG_DIR`` (kind, institution, id, status, code, amount
in minor units) for ``loadtests.verify``. Settings come from the environment so that Locust workers
on other machines read them the same way: ``LOADTEST_SEED_FILE``, ``LOADTEST_LOG_DIR``,
``LOADTEST_HOT_SHARE`` (0.3), ``LOADTEST_REFUSAL_SHARE`` (0.02), ``LOADTEST_REFUND_SHARE`` (0.05),
``LOADTEST_ZIPF_S`` (1.1), ``LOADTEST_WINDOW_CLOSE_AFTER_S`` (5), ``LOADTEST_OPERATOR_USERS`` (0:
by weight).
"""

from __future__ import annotations

# isort: off
import locust  # first: it monkey-patches the standard library for gevent

# isort: on
import bisect
import csv
import itertools
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task
from locust.runners import WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from ledger.ids import uuid7
from loadtests.report import FINAL_SUFFIX
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
RETRY_STATUSES = frozenset({0, 502, 503, 504})
STATEMENT_LIMIT = 20
LOG_HEADER = "kind,institution,id,status,code,amount_minor\n"

_seed_lock = threading.Lock()
_seed: SeedResult | None = None
_user_numbers = itertools.count()
_routes: set[str] | None = None
_window_closed = False
_loaded_at = time.monotonic()
WINDOW_CLOSE_AFTER_S = float(os.environ.get("LOADTEST_WINDOW_CLOSE_AFTER_S", "5"))
OPERATOR_USERS = int(os.environ.get("LOADTEST_OPERATOR_USERS", "0"))


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
    operator the audit head and the institutions, the settlement windows and batches (when the
    server has them), and closes window 1 once ``LOADTEST_WINDOW_CLOSE_AFTER_S`` into the run.
    ``LOADTEST_OPERATOR_USERS`` > 0 makes it that many users whatever the others' weights."""

    weight = 1
    fixed_count = OPERATOR_USERS

    def on_start(self) -> None:
        super().on_start()
        self.hk = sorted(self.seed.wallets)
        self.settlement = "/v1/settlement/windows" in server_routes(self)

    def _some_wallet(self) -> tuple[str, str]:
        institution_id = random.choice(self.hk)
        return institution_id, random.choice(self.seed.wallets[institution_id])

    @task(4)
    def wallet(self) -> None:
        self._close_once()
        institution_id, wallet_id = self._some_wallet()
        key = self.seed.institutions[institution_id]
        self.signed("GET", f"/v1/wallets/{wallet_id}", institution_id, key, name="GET /v1/wallets/{id}")

    @task(3)
    def statement(self) -> None:
        self._close_once()
        if random.random() < 0.2:  # the hot merchant's statement: its newest lines, under load
            institution_id, wallet_id = self.seed.acquirer, self.seed.merchants[0]
        else:
            institution_id, wallet_id = self._some_wallet()
        key = self.seed.institutions[institution_id]
        path = f"/v1/wallets/{wallet_id}/transfers?limit={STATEMENT_LIMIT}"
        self.signed("GET", path, institution_id, key, name="GET /v1/wallets/{id}/transfers")

    @task(1)
    def position(self) -> None:
        """A Hong Kong institution's liquidity, cap in force and open-window position (reading it
        opens window 1 if no payment has yet)."""
        if self.settlement:
            institution_id = random.choice(self.hk)
            self.signed(
                "GET", f"/v1/institutions/{institution_id}/position", "operator", self.seed.operator_key,
                name="GET /v1/institutions/{id}/position",
            )  # fmt: skip

    @task(1)
    def audit_head(self) -> None:
        self._close_once()
        self.signed("GET", "/v1/audit/head", "operator", self.seed.operator_key, name="GET /v1/audit/head")

    @task(1)
    def institutions(self) -> None:
        self._close_once()
        institution_id = random.choice(self.hk)
        self.signed(
            "GET", f"/v1/institutions/{institution_id}", "operator", self.seed.operator_key,
            name="GET /v1/institutions/{id}",
        )  # fmt: skip
        self.signed("GET", "/v1/institutions", "operator", self.seed.operator_key, name="GET /v1/institutions")

    @task(2)
    def settlement(self) -> None:
        """The settlement windows, then a closed window's batch (sometimes its CSV report); and, once
        per run, the close of window 1 a while into the load."""
        self._close_once()
        if not self.settlement:
            return
        key = self.seed.operator_key
        _, data = self.signed("GET", "/v1/settlement/windows", "operator", key, name="GET /v1/settlement/windows")
        windows = (data or {}).get("items") or []
        closed = [window["id"] for window in windows if window.get("status") != "open"]
        if closed:
            window_id = random.choice(closed)
            path, name = f"/v1/settlement/batches/{window_id}", "GET /v1/settlement/batches/{id}"
            if random.random() < 0.2:
                path, name = f"{path}/report?format=csv", f"{name}/report"
            self.signed("GET", path, "operator", key, name=name)

    def _close_once(self) -> None:
        """Close window 1 while load runs, once, when ``WINDOW_CLOSE_AFTER_S`` have passed: only
        window 1, so that Locust processes that each try close it once between them (the loser's
        ``window_not_open`` is expected). A position read first opens window 1 if nothing has."""
        global _window_closed
        if not self.settlement or _window_closed or time.monotonic() - _loaded_at < WINDOW_CLOSE_AFTER_S:
            return
        _window_closed = True
        self.position()
        self.signed(
            "POST", "/v1/settlement/windows/1/close", "operator", self.seed.operator_key,
            name="POST /v1/settlement/windows/{id}/close", expected=frozenset({"window_not_open"}),
        )  # fmt: skip


class MerchantLoadUser(SignedUser):
    """A Hong Kong payment institution's customers paying Shenzhen merchants: an FX quote for the
    merchant's CNY price, then the payment; some payments are refunded, in full or in part; some
    payments are meant to be refused, each with its code:

    - ``reused_quote``: a quote that already paid, named by a new payment: ``quote_already_used``;
    - ``poor_wallet``: from one of the institution's never-funded wallets: ``insufficient_funds``;
    - ``over_cap``: by ``lt-hk-capped``, whose cap in force is zero: ``net_debit_cap_exceeded``.

    (A quote past its 60 s expiry would be refused ``quote_expired`` too, but waiting a minute
    does not fit a load test's short runs.) An ordinary payment may be refused
    ``insufficient_funds`` when its payer's wallet ran dry: a business answer, counted as expected."""

    def on_start(self) -> None:
        super().on_start()
        if "/v1/payments" not in server_routes(self):
            raise locust.exception.StopUser("merchant-load needs the settlement API (/v1/payments)")
        hk = sorted(self.seed.wallets)
        self.institution_id = hk[self.number % len(hk)]
        self.key_text = self.seed.institutions[self.institution_id]
        self.payers = self.seed.wallets[self.institution_id]
        self.poor = self.seed.poor_wallets.get(self.institution_id, [])
        weights = [1 / (rank**ZIPF_S) for rank in range(1, len(self.seed.merchants) + 1)]
        self.cumulative = list(itertools.accumulate(weights))
        self.paid: list[tuple[str, int]] = []  # (payment id, CNY minor) of this user's unrefunded payments
        self.used_quotes: list[dict[str, Any]] = []  # quotes that paid
        self.payments_asked = self.refusals_asked = 0

    def _merchant(self) -> str:
        point = random.random() * self.cumulative[-1]
        return self.seed.merchants[min(bisect.bisect_left(self.cumulative, point), len(self.seed.merchants) - 1)]

    def _quote(self, institution_id: str, price: str) -> dict[str, Any] | None:
        payload = {"source_currency": "HKD", "target_currency": "CNY", "target_amount": price}
        key = self.seed.institutions[institution_id]
        status, data = self.signed("POST", "/v1/fx/quotes", institution_id, key, payload, name="POST /v1/fx/quotes")
        return data if 200 <= status < 300 else None

    def _kind(self) -> str:
        """Every ``1 / REFUSAL_SHARE``-th payment of a user is meant to be refused (a steady share,
        so that even a short run sees refusals), the kinds taken in turn."""
        self.payments_asked += 1
        every = round(1 / REFUSAL_SHARE) if REFUSAL_SHARE > 0 else 0
        if every == 0 or self.payments_asked % every != 0:
            return "ok"
        kinds = ["poor_wallet"] if self.poor else []
        kinds += ["over_cap"] if self.seed.capped_institution else []
        kinds += ["reused_quote"] if self.used_quotes else []
        self.refusals_asked += 1
        return kinds[self.refusals_asked % len(kinds)] if kinds else "ok"

    @task(10)
    def pay(self) -> None:
        kind = self._kind()
        institution_id, payer = self.institution_id, random.choice(self.payers)
        if kind == "poor_wallet":
            payer = random.choice(self.poor)
        elif kind == "over_cap":
            institution_id, payer = self.seed.capped_institution, random.choice(self.seed.capped_wallets)
        if kind == "reused_quote":
            quote: dict[str, Any] | None = random.choice(self.used_quotes)
        else:
            quote = self._quote(institution_id, minor_text(random.randint(100, 50_000)))  # CNY 1.00 to 500.00
        if quote is None:
            return
        price_minor = minor_of(quote["target_amount"])
        payment_id = str(uuid7())
        payload = {
            "id": payment_id,
            "payer_wallet_id": payer,
            "merchant_wallet_id": self._merchant(),
            "amount": quote["target_amount"],
            "currency": "CNY",
            "quote_id": quote["id"],
        }
        name = "POST /v1/payments" if kind == "ok" else f"POST /v1/payments [refused: {kind}]"
        status, data = self.signed(
            "POST", "/v1/payments", institution_id, self.seed.institutions[institution_id], payload,
            name=name, expected=PAYMENT_EXPECTED[kind],
        )  # fmt: skip
        code = _problem_code(status, data)
        self.log.record("payment", institution_id, payment_id, status, code, price_minor)
        if kind != "ok" and 200 <= status < 300:
            _check_failed(self, f"payment {payment_id} ({kind}) was accepted")
        if kind == "ok" and 200 <= status < 300:
            self.paid.append((payment_id, price_minor))
            self.used_quotes.append(quote)
            del self.used_quotes[:-20]

    @task(1)
    def refund(self) -> None:
        """A refund of one of this user's payments (each refunded at most once): in full, or half."""
        if not self.paid or random.random() > REFUND_SHARE * 10:
            return
        payment_id, price_minor = self.paid.pop(random.randrange(len(self.paid)))
        refund_id = str(uuid7())
        partial = price_minor >= 2 and random.random() < 0.5
        amount = price_minor // 2 if partial else price_minor
        payload: dict[str, Any] = {"id": refund_id} | ({"amount": minor_text(amount)} if partial else {})
        name = "POST /v1/payments/{id}/refunds" + (" [partial]" if partial else " [full]")
        status, data = self.signed(
            "POST", f"/v1/payments/{payment_id}/refunds", self.institution_id, self.key_text, payload, name=name
        )
        self.log.record("refund", self.institution_id, refund_id, status, _problem_code(status, data), amount)


PAYMENT_EXPECTED = {
    "ok": frozenset({"insufficient_funds"}),  # a payer whose wallet ran dry
    "reused_quote": frozenset({"quote_already_used"}),
    "poor_wallet": frozenset({"insufficient_funds"}),
    "over_cap": frozenset({"net_debit_cap_exceeded"}),
}


def _check_failed(user: FastHttpUser, message: str) -> None:
    """A request meant to be refused was accepted: a failure of the ledger, not of the load."""
    user.environment.events.request.fire(
        request_type="CHECK", name="refusal expected", response_time=0, response_length=0,
        exception=AssertionError(message), context={},
    )  # fmt: skip


_environments: list[Any] = []


@events.init.add_listener
def remember_environment(environment, **_kwargs) -> None:
    _environments.append(environment)


@events.quit.add_listener
def write_final_stats(**_kwargs) -> None:
    """The final figures, as Locust's ``_stats.csv`` has them, to ``<prefix>_final_stats.csv``:
    Locust's own file is rewritten only once a second and may miss a short run's end (see
    ``loadtests.report.stats_rows``). A Locust worker has no figures of the whole run: the master writes."""
    if not _environments:
        return
    environment = _environments[-1]
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return
    with open(f"{prefix}{FINAL_SUFFIX}", "w", newline="") as file:
        StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(file))


class BaselineUser(FastHttpUser):
    """The trivial endpoint: no signature, no database. The yardstick of the same Locust set-up."""

    wait_time = constant(0)

    @task
    def healthz(self) -> None:
        self.client.get("/healthz", name="GET /healthz")
