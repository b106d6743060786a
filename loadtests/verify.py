"""After a load run: did the ledger keep exactly what it acknowledged?

Checked from the database (the server stopped and drained first) against the Locust users'
request logs (``requests-*.csv``: every money request's final answer):

- ``acknowledged_stored_once``: every 2xx transfer (payment, refund) is in the ledger exactly once,
  with the amount that was asked for. A transfer is found by what the wallets layer wrote in its
  ``user_data`` (the institution and its client id), not by the derived ledger id, so that a second
  row for the same request under another id is caught as a duplicate, not missed. A payment is
  counted by its merchant credit leg and must have each of its legs (fx, obligation, credit) once;
  a refund by its customer credit leg, with its claim, debit and obligation legs once each; a
  payment's amount is its credit's (CNY), a refund's its claim's (CNY);
- ``refused_left_no_trace``: no transfer row, of any leg, names a request that was answered non-2xx. A refusal
  the ledger remembers (``transfer_refusals``) is expected and allowed: it is what makes a late
  retry answer the same refusal. A request that got no answer, or a 5xx, may or may not have been
  applied: it is allowed at most once and counted as ``unresolved``;
- ``no_unlogged_load_transfers``: no transfer, payment or refund of the load institutions that no
  user logged (seeding's fundings are marked and left out);
- ``settlement_batches`` (runs with payments, given the batches the run read over HTTP after
  closing the last window): every stored payment's obligation is in a closed window's batch, and
  per window the batch's obligations towards the acquirers, net of those back, equal that window's
  payments less its refunds; over all windows they equal the acknowledged payments less the
  acknowledged refunds (plus any unanswered one the ledger holds);
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
KIND_OPERATION = {"transfer": "transfer", "payment": "payment", "refund": "refund"}
COUNTED_LEG = {"payment": "credit", "refund": "credit"}  # the merchant's credit; the customer's credit
AMOUNT_LEG = {"transfer": None, "payment": "credit", "refund": "claim"}  # the leg holding the CNY asked for
CHAIN_LEGS = {"payment": ("fx", "obligation", "credit"), "refund": ("claim", "debit", "obligation", "credit")}
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
    window: int | None = None  # the settlement window a payment's or refund's leg names


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
                    amount_minor, seed=bool(meta.get("seed")), window=_window(meta.get("window")),
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
        every_row = by_request.get((request.institution_id, request.client_id), [])
        rows = _counted_rows(request.kind, every_row)
        label = f"{request.kind} {request.client_id} of {request.institution_id} (answered {request.status})"
        if request.acknowledged:
            if not rows:
                lost.append(f"{label}: not in the ledger")
            elif len(rows) > 1:
                duplicated.append(f"{label}: stored {len(rows)} times ({', '.join(str(r.ledger_id) for r in rows)})")
            else:
                duplicated += _broken_chain(label, request.kind, every_row)
                stored_minor = _asked_minor(request.kind, every_row)
                if stored_minor is not None and stored_minor != request.amount_minor:
                    wrong_amount.append(f"{label}: stored {stored_minor}, asked {request.amount_minor}")
        elif request.status in UNRESOLVED_STATUSES:
            unresolved += 1
            if len(rows) > 1:
                duplicated.append(f"{label}: stored {len(rows)} times")
        elif every_row:
            traces.append(f"{label} {request.code}: yet the ledger holds {every_row[0].ledger_id}")
    logged_keys = {(request.institution_id, request.client_id) for request in logged}
    unlogged = [
        f"{row.operation} {row.client_id} of {row.institution_id} ({row.ledger_id}): no user logged it"
        for row in stored
        if not row.seed
        and row.operation in ("transfer", "payment", "refund")
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
    # A transfer to another institution's wallet also leaves its obligation leg: not the transfer.
    chosen = [
        row for row in rows if row.operation == operation and not (kind == "transfer" and row.leg == "obligation")
    ]
    if kind in COUNTED_LEG:
        chosen = [row for row in chosen if row.leg == COUNTED_LEG[kind]]
    return chosen


def _broken_chain(label: str, kind: str, rows: list[StoredRow]) -> list[str]:
    """A payment's or refund's legs other than one each: a chain half applied, or a leg twice."""
    if kind not in CHAIN_LEGS:
        return []
    legs = Counter(row.leg for row in rows if row.operation == kind)
    wrong = {leg: legs.get(leg, 0) for leg in CHAIN_LEGS[kind] if legs.get(leg, 0) != 1}
    return [f"{label}: legs {wrong} (each once expected)"] if wrong else []


def _asked_minor(kind: str, rows: list[StoredRow]) -> int | None:
    """What the ledger holds of the amount the request asked for (None: not checked for this kind)."""
    if kind not in AMOUNT_LEG:
        return None
    leg = AMOUNT_LEG[kind]
    chosen = [row for row in rows if row.operation == KIND_OPERATION[kind] and (leg is None or row.leg == leg)]
    return chosen[0].amount_minor if len(chosen) == 1 else None


def _window(value: object) -> int | None:
    return value if isinstance(value, int) else None


def check_batches(
    logged: list[LoggedRequest],
    stored: list[StoredRow],
    batches: dict[int, list[dict[str, str]]],
    acquirers: Iterable[str],
) -> Check:
    """The settlement batches against the payments and refunds: see the module's docstring.

    ``batches`` maps a closed window's id to its batch's ``bilateral`` obligations as the API
    serves them (debtor, creditor, currency, amount as a decimal string)."""
    acquirer_ids = set(acquirers)
    in_batches: dict[int, int] = {}
    for window_id, obligations in batches.items():
        net = 0
        for obligation in obligations:
            minor = _minor(obligation["amount"])
            if obligation["creditor"] in acquirer_ids:
                net += minor
            if obligation["debtor"] in acquirer_ids:
                net -= minor
        in_batches[window_id] = net
    in_ledger: dict[int, int] = defaultdict(int)
    problems = []
    payments = refunds = 0
    for (who, client_id), rows in _by_request(row for row in stored if row.operation in CHAIN_LEGS).items():
        legs = {row.leg: row for row in rows}
        operation = rows[0].operation
        window = legs["obligation"].window if operation == "payment" else legs.get("credit", rows[0]).window
        amount = legs["credit"].amount_minor if operation == "payment" else legs.get("claim", rows[0]).amount_minor
        if window is None or window not in batches:
            problems.append(f"{operation} {client_id} of {who}: its obligation is in window {window}, no batch")
            continue
        in_ledger[window] += amount if operation == "payment" else -amount
        payments += operation == "payment"
        refunds += operation == "refund"
    for window_id in sorted(set(in_batches) | set(in_ledger)):
        if in_batches.get(window_id, 0) != in_ledger.get(window_id, 0):
            problems.append(
                f"window {window_id}: batch obligations net {in_batches.get(window_id, 0)}, "
                f"its payments less refunds {in_ledger.get(window_id, 0)}"
            )
    answered = _answered_net(logged, stored)
    total = sum(in_batches.values())
    if answered != total:
        problems.append(f"batches net {total} over all windows, acknowledged payments less refunds {answered}")
    detail = (
        f"{len(batches)} batches net {_text(total)} CNY = {payments:,} payments less {refunds:,} refunds "
        f"(acknowledged: {_text(answered)})"
    )
    return Check(not problems, detail, problems)


def _answered_net(logged: list[LoggedRequest], stored: list[StoredRow]) -> int:
    """Acknowledged payments less acknowledged refunds (CNY), and unanswered ones the ledger holds."""
    held = {(row.institution_id, row.client_id) for row in stored}
    net = 0
    for request in logged:
        if request.kind not in CHAIN_LEGS:
            continue
        if request.acknowledged or (
            request.status in UNRESOLVED_STATUSES and (request.institution_id, request.client_id) in held
        ):
            net += request.amount_minor if request.kind == "payment" else -request.amount_minor
    return net


def _by_request(rows: Iterable[StoredRow]) -> dict[tuple[str, UUID], list[StoredRow]]:
    grouped: dict[tuple[str, UUID], list[StoredRow]] = defaultdict(list)
    for row in rows:
        grouped[(row.institution_id, row.client_id)].append(row)
    return grouped


def _minor(text: str) -> int:
    units, _, cents = text.partition(".")
    sign = -1 if units.startswith("-") else 1
    return sign * (abs(int(units)) * 100 + int(cents.ljust(2, "0")))


def _text(minor: int) -> str:
    return f"{'-' if minor < 0 else ''}{abs(minor) // 100:,}.{abs(minor) % 100:02d}"


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
    engine: AsyncEngine,
    log_dir: Path,
    institution_ids: Iterable[str],
    *,
    data_dir: Path,
    database_url: str,
    batches: dict[int, list[dict[str, str]]] | None = None,
    acquirers: Iterable[str] = (),
) -> Verification:
    logged = await asyncio.to_thread(read_request_logs, log_dir)
    stored = await stored_rows(engine, institution_ids)
    checks, counts = check_requests(logged, stored)
    if batches is not None:
        checks["settlement_batches"] = check_batches(logged, stored, batches, acquirers)
        counts["settlement_batches"] = len(batches)
    checks["books_balance"] = await check_books(engine)
    checks["audit_verify"] = await asyncio.to_thread(audit_verify, data_dir, database_url, REPO_ROOT)
    return Verification(checks, counts)
