"""After a load run: did the ledger keep exactly what it acknowledged?

Checked from the database (the server stopped and drained first) against the Locust users'
request logs (``requests-*.csv``: every money request's final answer):

- ``acknowledged_stored_once``: every 2xx transfer (payment, refund) is in the ledger exactly once,
  with the amount that was asked for. A transfer is found by what the wallets layer wrote in its
  ``user_data`` (the institution and its client id), not by the derived ledger id, so that a second
  row for the same request under another id is caught as a duplicate, not missed;
- ``refused_left_no_trace``: no transfer row names a request that was answered non-2xx. A refusal
  the ledger remembers (``transfer_refusals``) is expected and allowed: it is what makes a late
  retry answer the same refusal. A request that got no answer, or a 5xx, may or may not have been
  applied: it is allowed at most once and counted as ``unresolved``;
- ``no_unlogged_load_transfers``: no transfer of the load institutions that no user logged
  (seeding's fundings are marked and left out);
- ``books_balance``: per currency, posted and pending debits equal credits; no account breaks its
  no-overdraft flags; no ledger id stored twice;
- ``audit_verify``: ``ledger audit verify`` (a separate process, as an operator runs it) passes.

The pure checks (:func:`check_requests`) take plain data, so tests can plant a lost write, a
duplicate and a trace of a refused request without a server.
"""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.schema import accounts, transfers
from wallets.ids import Origin

# Operations whose rows a request of each logged kind leaves, and which leg counts as "the" row.
KIND_OPERATION = {"transfer": "transfer", "payment": "payment", "refund": None}  # None: any operation
PAYMENT_COUNTED_LEG = "credit"  # the merchant's credit: one per payment
UNRESOLVED_STATUSES = frozenset({0, 500, 502, 503, 504})
AUDIT_VERIFY_TIMEOUT_S = 600
PROBLEMS_SHOWN_MAX = 10
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    kind: str  # transfer, payment, refund
    institution_id: str
    client_id: UUID
    status: int
    code: str
    amount_minor: int

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A transfer row as the verifier sees it: who asked for it, under which id, which leg."""

    ledger_id: UUID
    institution_id: str
    client_id: UUID
    operation: str
    leg: str | None
    amount_minor: int
    seed: bool = False


@dataclass
class Check:
    ok: bool
    detail: str
    problems: list[str] = field(default_factory=list)


@dataclass
class Verification:
    checks: dict[str, Check] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks.values())

    def as_json(self) -> dict:
        return {
            "ok": self.ok,
            "counts": self.counts,
            "checks": {
                name: {"ok": check.ok, "detail": check.detail, "problems": check.problems[:PROBLEMS_SHOWN_MAX]}
                for name, check in self.checks.items()
            },
        }


# -- reading ----------------------------------------------------------------------------------------


def read_request_logs(directory: Path) -> list[LoggedRequest]:
    logged = []
    for path in sorted(directory.glob("requests-*.csv")):
        with path.open(newline="") as file:
            for row in csv.DictReader(file):
                logged.append(
                    LoggedRequest(
                        row["kind"], row["institution"], UUID(row["id"]), int(row["status"]), row["code"],
                        int(row["amount_minor"]),
                    )
                )  # fmt: skip
    return logged


async def stored_rows(engine: AsyncEngine, institution_ids: Iterable[str]) -> list[StoredRow]:
    """Every transfer row made by one of ``institution_ids`` through the wallets layer."""
    wanted = set(institution_ids)
    rows = []
    query = sa.select(transfers.c.id, transfers.c.user_data, transfers.c.amount_minor)
    async with engine.connect() as conn:
        result = await conn.stream(query.execution_options(yield_per=10_000))
        async for ledger_id, user_data, amount_minor in result:
            origin = Origin.decode(user_data)
            if origin is None or origin.institution_id not in wanted:
                continue
            meta = origin.metadata if isinstance(origin.metadata, dict) else {}
            rows.append(
                StoredRow(
                    ledger_id, origin.institution_id, origin.client_id, origin.operation, meta.get("leg"),
                    amount_minor, seed=bool(meta.get("seed")),
                )
            )  # fmt: skip
    return rows


# -- the checks ---------------------------------------------------------------------------------------


def check_requests(logged: list[LoggedRequest], stored: list[StoredRow]) -> tuple[dict[str, Check], dict[str, int]]:
    """The request-level checks: acknowledged stored once, refused left no trace, nothing unlogged."""
    by_request: dict[tuple[str, UUID], list[StoredRow]] = defaultdict(list)
    for row in stored:
        by_request[(row.institution_id, row.client_id)].append(row)
    lost, duplicated, wrong_amount, traces = [], [], [], []
    unresolved = 0
    for request in logged:
        rows = _counted_rows(request.kind, by_request.get((request.institution_id, request.client_id), []))
        label = f"{request.kind} {request.client_id} of {request.institution_id} (answered {request.status})"
        if request.acknowledged:
            if not rows:
                lost.append(f"{label}: not in the ledger")
            elif len(rows) > 1:
                duplicated.append(f"{label}: stored {len(rows)} times ({', '.join(str(r.ledger_id) for r in rows)})")
            elif request.kind == "transfer" and rows[0].amount_minor != request.amount_minor:
                wrong_amount.append(f"{label}: stored {rows[0].amount_minor}, asked {request.amount_minor}")
        elif request.status in UNRESOLVED_STATUSES:
            unresolved += 1
            if len(rows) > 1:
                duplicated.append(f"{label}: stored {len(rows)} times")
        elif rows:
            traces.append(f"{label} {request.code}: yet the ledger holds {rows[0].ledger_id}")
    logged_keys = {(request.institution_id, request.client_id) for request in logged}
    unlogged = [
        f"{row.operation} {row.client_id} of {row.institution_id} ({row.ledger_id}): no user logged it"
        for row in stored
        if not row.seed
        and row.operation in ("transfer", "payment")
        and (row.institution_id, row.client_id) not in logged_keys
    ]
    # Two rows for one leg of one request are a duplicate, whoever logged it (or nobody).
    checked = {(r.institution_id, r.client_id) for r in logged if r.acknowledged or r.status in UNRESOLVED_STATUSES}
    legs = Counter((row.institution_id, row.client_id, row.operation, row.leg) for row in stored)
    duplicated += [
        f"{operation} {client_id} of {who} (leg {leg}): {n} rows"
        for (who, client_id, operation, leg), n in legs.items()
        if n > 1 and (who, client_id) not in checked
    ]
    acknowledged = sum(request.acknowledged for request in logged)
    counts = {
        "logged": len(logged),
        "acknowledged": acknowledged,
        "refused": sum(not request.acknowledged and request.status not in UNRESOLVED_STATUSES for request in logged),
        "unresolved": unresolved,
        "stored_load_rows": sum(not row.seed for row in stored),
    }
    checks = {
        "acknowledged_stored_once": Check(
            not (lost or duplicated or wrong_amount),
            f"{acknowledged:,} acknowledged: {len(lost)} lost, {len(duplicated)} duplicated, "
            f"{len(wrong_amount)} with another amount",
            lost + duplicated + wrong_amount,
        ),
        "refused_left_no_trace": Check(
            not traces,
            f"{counts['refused']:,} refused: {len(traces)} left a transfer; "
            f"{unresolved} unanswered or 5xx (allowed once)",
            traces,
        ),
        "no_unlogged_load_transfers": Check(not unlogged, f"{len(unlogged)} transfers no user logged", unlogged),
    }
    return checks, counts


def _counted_rows(kind: str, rows: list[StoredRow]) -> list[StoredRow]:
    operation = KIND_OPERATION.get(kind)
    if operation is None:
        return rows
    chosen = [row for row in rows if row.operation == operation]
    if kind == "payment":
        chosen = [row for row in chosen if row.leg == PAYMENT_COUNTED_LEG]
    return chosen


async def check_books(engine: AsyncEngine) -> Check:
    """The accounting equation per currency, the no-overdraft flags, and unique ledger ids."""
    problems = []
    async with engine.connect() as conn:
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        columns = (
            accounts.c.debits_posted,
            accounts.c.credits_posted,
            accounts.c.debits_pending,
            accounts.c.credits_pending,
        )
        for currency, *balances in await conn.execute(sa.select(accounts.c.currency, *columns)):
            for index, value in enumerate(balances):
                totals[currency][index] += value  # summed in Python: SQLite's SUM stops at 2^63
        for currency, (debits_posted, credits_posted, debits_pending, credits_pending) in sorted(totals.items()):
            if debits_posted != credits_posted:
                problems.append(f"{currency}: posted debits {debits_posted} != credits {credits_posted}")
            if debits_pending != credits_pending:
                problems.append(f"{currency}: pending debits {debits_pending} != credits {credits_pending}")
        overdrawn = await conn.execute(
            sa.select(accounts.c.id).where(
                sa.or_(
                    sa.and_(
                        accounts.c.flags.op("&")(1) != 0,
                        accounts.c.debits_posted + accounts.c.debits_pending > accounts.c.credits_posted,
                    ),
                    sa.and_(
                        accounts.c.flags.op("&")(2) != 0,
                        accounts.c.credits_posted + accounts.c.credits_pending > accounts.c.debits_posted,
                    ),
                )
            )
        )
        problems += [f"account {account_id} breaks its balance flags" for account_id in overdrawn.scalars()]
        duplicate_ids = await conn.execute(
            sa.select(transfers.c.id).group_by(transfers.c.id).having(sa.func.count() > 1)
        )
        problems += [f"ledger id {transfer_id} stored more than once" for transfer_id in duplicate_ids.scalars()]
    detail = f"{len(totals)} currencies balance" if not problems else f"{len(problems)} problems"
    return Check(not problems, detail, problems)


def audit_verify(data_dir: Path, database_url: str, repo_root: Path) -> Check:
    """``ledger audit verify`` in its own process, as an operator runs it."""
    environment = dict(os.environ, LEDGER_DATA_DIR=str(data_dir), LEDGER_DATABASE_URL=database_url)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), environment.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "verify"],
        env=environment, capture_output=True, text=True, timeout=AUDIT_VERIFY_TIMEOUT_S, check=False,
    )  # fmt: skip
    output = " ".join((completed.stdout + completed.stderr).split())
    return Check(completed.returncode == 0, f"exit {completed.returncode}: {output[:400]}")


async def verify_run(
    engine: AsyncEngine, log_dir: Path, institution_ids: Iterable[str], *, data_dir: Path, database_url: str
) -> Verification:
    logged = await asyncio.to_thread(read_request_logs, log_dir)
    stored = await stored_rows(engine, institution_ids)
    checks, counts = check_requests(logged, stored)
    checks["books_balance"] = await check_books(engine)
    checks["audit_verify"] = await asyncio.to_thread(audit_verify, data_dir, database_url, REPO_ROOT)
    return Verification(checks, counts)
