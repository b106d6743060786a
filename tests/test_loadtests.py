"""The load tests' own correctness: the verifier catches a lost write, a duplicate and a trace of a
refused request (on a small ledger of both databases, and as pure checks), and short smoke runs of
``python -m loadtests run`` (hot-transfer, operator; SQLite, a few users, a few seconds) finish
verified with no unexpected failure. Speed is never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa

from ledger import Batcher, Ledger
from ledger.db import create_engine
from ledger.ids import uuid7
from ledger.schema import transfers
from loadtests.run import duration_s
from loadtests.verify import (
    LoggedRequest,
    StoredRow,
    check_batches,
    check_books,
    check_requests,
    read_request_logs,
    stored_rows,
)
from wallets.ids import Origin
from wallets.model import InstitutionKind, OwnerKind, TransferRequest, WalletSpec
from wallets.service import WalletBook

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_TIMEOUT_S = 120


# -- the pure checks ----------------------------------------------------------------------------------


def row(client_id: UUID, operation: str = "transfer", amount: int = 100, leg: str | None = None) -> StoredRow:
    return StoredRow(uuid7(), "hk", client_id, operation, leg, amount)


def logged(client_id: UUID, status: int = 201, code: str = "", amount: int = 100, kind: str = "transfer"):
    return LoggedRequest(kind, "hk", client_id, status, code, amount)


def test_the_pure_checks_pass_a_clean_run_and_name_each_planted_fault():
    paid, refused, unanswered = uuid7(), uuid7(), uuid7()
    clean, counts = check_requests(
        [logged(paid), logged(refused, 422, "insufficient_funds"), logged(unanswered, 0)], [row(paid), row(unanswered)]
    )
    assert all(check.ok for check in clean.values()), clean
    assert counts["acknowledged"] == 1 and counts["refused"] == 1 and counts["unresolved"] == 1

    lost, _ = check_requests([logged(paid)], [])
    assert (
        not lost["acknowledged_stored_once"].ok and "not in the ledger" in lost["acknowledged_stored_once"].problems[0]
    )

    twice, _ = check_requests([logged(paid)], [row(paid), row(paid)])
    assert "stored 2 times" in twice["acknowledged_stored_once"].problems[0]

    other_amount, _ = check_requests([logged(paid, amount=100)], [row(paid, amount=101)])
    assert "another amount" in other_amount["acknowledged_stored_once"].detail

    trace, _ = check_requests([logged(refused, 422, "insufficient_funds")], [row(refused)])
    assert not trace["refused_left_no_trace"].ok and str(refused) in trace["refused_left_no_trace"].problems[0]

    unlogged, _ = check_requests([], [row(uuid7())])
    assert not unlogged["no_unlogged_load_transfers"].ok
    seeded = StoredRow(uuid7(), "hk", uuid7(), "transfer", None, 100, seed=True)
    assert check_requests([], [seeded])[0]["no_unlogged_load_transfers"].ok

    # A payment is its merchant credit leg: its other legs are not a second payment.
    payment = uuid7()
    legs = [
        row(payment, "payment", leg="fx"),
        row(payment, "payment", leg="obligation"),
        row(payment, "payment", leg="credit"),
    ]
    assert check_requests([logged(payment, kind="payment")], legs)[0]["acknowledged_stored_once"].ok


def payment_rows(client_id: UUID, amount: int, window: int, *, skip: str = "") -> list[StoredRow]:
    legs = [("fx", amount + 10, None), ("obligation", amount, window), ("credit", amount, window)]
    return [
        StoredRow(uuid7(), "hk", client_id, "payment", leg, minor, window=w) for leg, minor, w in legs if leg != skip
    ]


def refund_rows(client_id: UUID, amount: int, window: int) -> list[StoredRow]:
    legs = [("claim", amount, None), ("debit", amount, None), ("obligation", amount, None)]
    legs.append(("credit", amount + 9, window))  # the customer's HKD
    return [StoredRow(uuid7(), "hk", client_id, "refund", leg, minor, window=w) for leg, minor, w in legs]


def test_payments_and_refunds_are_checked_leg_by_leg_and_against_the_batches():
    paid, later, refund = uuid7(), uuid7(), uuid7()
    log = [
        logged(paid, amount=1_000, kind="payment"),
        logged(later, amount=500, kind="payment"),
        logged(refund, amount=400, kind="refund"),
    ]
    stored = payment_rows(paid, 1_000, 1) + payment_rows(later, 500, 2) + refund_rows(refund, 400, 2)
    checks, counts = check_requests(log, stored)
    assert all(check.ok for check in checks.values()) and counts["acknowledged"] == 3, checks

    def obligation(debtor: str, creditor: str, amount: str) -> dict[str, str]:
        return {"debtor": debtor, "creditor": creditor, "currency": "CNY", "amount": amount}

    batches = {
        1: [obligation("hk", "acq", "10.00")],
        2: [obligation("hk", "acq", "5.00"), obligation("acq", "hk", "4.00")],
    }
    assert check_batches(log, stored, batches, ["acq"]).ok, check_batches(log, stored, batches, ["acq"]).problems

    short = {1: batches[1], 2: [obligation("hk", "acq", "5.00")]}  # the refund missing from window 2's batch
    assert "window 2" in check_batches(log, stored, short, ["acq"]).problems[0]
    unclosed = {1: batches[1]}  # window 2 never became a batch
    assert not check_batches(log, stored, unclosed, ["acq"]).ok

    half_applied = payment_rows(paid, 1_000, 1, skip="obligation")
    assert "legs" in check_requests(log[:1], half_applied)[0]["acknowledged_stored_once"].problems[0]
    other_amount = check_requests([logged(paid, amount=999, kind="payment")], payment_rows(paid, 1_000, 1))[0]
    assert not other_amount["acknowledged_stored_once"].ok
    refused_trace = check_requests([logged(paid, 422, "insufficient_funds", kind="payment")], payment_rows(paid, 1, 1))
    assert not refused_trace[0]["refused_left_no_trace"].ok
    unlogged_refund = check_requests([], refund_rows(refund, 400, 2))[0]
    assert not unlogged_refund["no_unlogged_load_transfers"].ok


# -- against a small ledger ---------------------------------------------------------------------------


@pytest.fixture
async def small_ledger(database_url, signing_key):
    """A ledger with two funded wallets, three answered transfers and their log; no teardown check
    (the tests plant faults on purpose)."""
    ledger = Ledger(create_engine(database_url), signing_key)
    batcher = Batcher(ledger, expiry_interval_s=None)
    batcher.start()
    book = WalletBook(ledger, batcher)
    await book.register_institution("hk", InstitutionKind.HK_PAYMENT_INSTITUTION, "HK", bytes(32))
    payer, _ = await book.open_wallet("hk", WalletSpec("p", OwnerKind.PERSON, "CNY", tier=2))
    payee, _ = await book.open_wallet("hk", WalletSpec("q", OwnerKind.PERSON, "CNY", tier=2))
    await book.deposit("hk", payer.id, uuid7(), 10_000)
    log = []
    for amount in (1_000, 2_000, 50_000):  # the last is more than the payer holds: refused
        request = TransferRequest(uuid7(), payer.id, payee.id, amount, "CNY")
        outcome = await book.transfer("hk", request)
        status, code = (201, "") if outcome.ok else (422, "insufficient_funds")
        log.append(LoggedRequest("transfer", "hk", request.id, status, code, amount))
    assert [entry.status for entry in log] == [201, 201, 422]
    try:
        yield ledger, log
    finally:
        await batcher.close()
        await ledger.close()


async def checks_of(ledger: Ledger, log: list[LoggedRequest]):
    checks, _ = check_requests(log, await stored_rows(ledger.engine, ["hk"]))
    checks["books_balance"] = await check_books(ledger.engine)
    return checks


async def plant_copy(ledger: Ledger, of_client_id: UUID) -> None:
    """A second transfer row carrying another request's origin: what a double write would leave."""
    async with ledger.engine.begin() as conn:
        rows = (await conn.execute(sa.select(transfers))).mappings().all()
        original = next(r for r in rows if (o := Origin.decode(r["user_data"])) and o.client_id == of_client_id)
        copy = dict(original) | {"seq": max(r["seq"] for r in rows) + 1, "id": uuid7()}
        await conn.execute(transfers.insert().values(**copy))


async def test_a_clean_small_ledger_passes_every_check(small_ledger):
    ledger, log = small_ledger
    checks = await checks_of(ledger, log)
    assert all(check.ok for check in checks.values()), {name: check.problems for name, check in checks.items()}


async def test_the_verifier_catches_a_planted_lost_write(small_ledger):
    ledger, log = small_ledger
    log.append(LoggedRequest("transfer", "hk", uuid7(), 201, "", 500))  # acknowledged, never stored
    checks = await checks_of(ledger, log)
    assert not checks["acknowledged_stored_once"].ok
    assert "not in the ledger" in checks["acknowledged_stored_once"].problems[0]


async def test_the_verifier_catches_a_planted_duplicate(small_ledger):
    ledger, log = small_ledger
    await plant_copy(ledger, log[0].client_id)
    checks = await checks_of(ledger, log)
    assert "stored 2 times" in checks["acknowledged_stored_once"].problems[0]
    # The copy moved no balance, so the balances recomputed from the transfers disagree: audit verify says so.
    assert not (await ledger.verify_audit()).ok


async def test_the_verifier_catches_a_planted_trace_of_a_refused_request(small_ledger):
    ledger, log = small_ledger
    refused = log[2]
    async with ledger.engine.begin() as conn:  # a row naming the refused request, as a leak would leave it
        rows = (await conn.execute(sa.select(transfers))).mappings().all()
        leak = dict(rows[-1]) | {"seq": max(r["seq"] for r in rows) + 1, "id": uuid7()}
        leak["user_data"] = Origin("hk", refused.client_id, "transfer").encode()
        await conn.execute(transfers.insert().values(**leak))
    checks = await checks_of(ledger, log)
    assert not checks["refused_left_no_trace"].ok
    assert str(refused.client_id) in checks["refused_left_no_trace"].problems[0]


def test_durations_read_as_locust_writes_them():
    assert duration_s("60s") == 60 and duration_s("2m") == 120 and duration_s("1h1m1s") == 3661
    assert duration_s("90") == 90
    with pytest.raises(ValueError):
        duration_s("soon")


# -- smoke runs of the whole command ------------------------------------------------------------------


def run_command(tmp_path: Path, scenario: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / scenario
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "loadtests", "run", "--scenario", scenario, "--users", "4", "--spawn-rate", "20",
        "--duration", "3s", "--baseline-duration", "2s", "--database", "sqlite", "--wallets", "60", "--out", str(out),
        *extra,
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, check=False
    )
    summary_path = out / "summary.json"
    assert summary_path.exists(), completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed, json.loads(summary_path.read_text())


def assert_verified_smoke_run(completed: subprocess.CompletedProcess, summary: dict, out: Path) -> set[str]:
    """The figures and reports are there, verification passed, nothing unexpected failed; answers
    the names of the endpoints Locust counted."""
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert summary["verified"] is True and summary["failures_unexpected"] == 0, summary
    figures = {key: summary[key] for key in ("requests", "rps", "baseline_rps", "baseline")}
    assert summary["requests"] > 0 and summary["rps"] > 0 and summary["baseline_rps"] > 0, figures
    assert {"p50_ms", "p95_ms", "p99_ms"} <= summary.keys()
    assert summary["verification"]["counts"]["acknowledged"] > 0
    assert (out / "chart.png").stat().st_size > 0 and (out / "locust.html").exists()
    return {endpoint["name"] for endpoint in summary["endpoints"]}


@pytest.mark.slow  # a real server and a Locust run, about 13 s each: in CI's full run
@pytest.mark.parametrize("scenario", ["hot-transfer", "operator"])
def test_a_smoke_run_finishes_verified_with_no_unexpected_failure(tmp_path, scenario):
    completed, summary = run_command(tmp_path, scenario)
    names = assert_verified_smoke_run(completed, summary, tmp_path / scenario)
    assert "POST /v1/transfers" in names
    if scenario == "operator":
        assert {"GET /v1/wallets/{id}", "GET /v1/wallets/{id}/transfers", "GET /v1/audit/head"} & names, names
        assert "GET /v1/settlement/windows" in names, names
        # Window 1 was closed while the transfers ran (at half the duration), and all still verified.
        assert "POST /v1/settlement/windows/{id}/close" in names, names


@pytest.mark.slow
def test_a_merchant_load_smoke_run_pays_refunds_refuses_closes_and_finishes_verified(tmp_path):
    completed, summary = run_command(tmp_path, "merchant-load", "--refusal-share", "0.5", "--refund-share", "0.1")
    out = tmp_path / "merchant-load"
    names = assert_verified_smoke_run(completed, summary, out)
    assert {"POST /v1/fx/quotes", "POST /v1/payments"} <= names, names
    # The operator closed window 1 while payments ran, then the run closed the last window: every
    # acknowledged payment is in exactly one batch, whose obligations net to the payments less refunds.
    assert "POST /v1/settlement/windows/{id}/close" in names, names
    verification = summary["verification"]
    assert verification["checks"]["settlement_batches"]["ok"] and verification["counts"]["settlement_batches"] >= 2
    logs = read_request_logs(out / "requests")
    assert {request.kind for request in logs if request.acknowledged} >= {"payment"}
    # Every other payment was meant to be refused: each answered its code (anything else would have
    # been an unexpected failure), and nothing it asked for is in the ledger (refused_left_no_trace).
    refused_codes = {request.code for request in logs if not request.acknowledged}
    assert refused_codes and refused_codes <= {"quote_already_used", "insufficient_funds", "net_debit_cap_exceeded"}


@pytest.mark.slow
def test_merchant_load_refuses_a_server_without_the_settlement_api(tmp_path, monkeypatch):
    """Against a server whose /openapi.json has no /v1/payments, the run stops with exit 2 before
    seeding (what a tester sees pointing merchant-load at an older server)."""
    from loadtests import run

    monkeypatch.setattr(run, "_server_paths", lambda url: {"/v1/transfers"})
    target = "http://127.0.0.1:9"
    args = run.parse_args(
        ["--scenario", "merchant-load", "--out", str(tmp_path), "--target", target, "--data-dir", str(tmp_path)]
    )
    ledger = run.server.FreshLedger(tmp_path, "sqlite+aiosqlite:///unused.db")
    assert run._run_against(args, tmp_path, ledger, target, None) == run.EXIT_USAGE
