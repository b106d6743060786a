"""Benchmark of the operator console's pages on a large ledger.

    python -m loadtests.bench_console [--transfers 1000000] [--database sqlite|postgresql]
                                      [--windows 10] [--obligations-per-window 20000]
                                      [--payments 20] [--repeat 10] [--explain] [--json PATH]

Seeds a fresh database fast, straight through the ledger core (``Ledger.submit`` in blocks of
2,000, as ``bench_core`` prepares its wallets): ``--transfers`` in all, of which
``--windows`` x ``--obligations-per-window`` are settlement obligations between the position
accounts of the windows (payers towards the acquirer and some back, as payments and refunds make
them) and the rest transfers between 10,000 plain accounts. Around them, through the app's signed
API (``LedgerClient`` against the in-process server): a rate, six Hong Kong payers with prefunded
liquidity, an acquirer, the settlement bank, and ``--payments`` real payments through the payment
desk in the last closed window and in the open one. Every window but the newest two is closed and
settled through ``SettlementDesk``; the newest closed one waits to settle; one is open.

Then it signs in to the console (a login link) and times each page, GET through the app with the
session: one warm-up request, then ``--repeat`` timed ones; it reports the median and the slowest,
and the median's ratio to a trivial page of the same run (``/console/login``: a template, no
query). ``--explain`` prints PostgreSQL's plans of the batch's obligations query and of
``unsettled_debit``'s position lookup. PostgreSQL comes from LEDGER_BENCH_POSTGRES_URL. This
measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from nacl.signing import SigningKey
from rich.console import Console
from rich.table import Table

from ledger import AccountSpec, Batcher, Ledger, TransferCommand, TransferKind
from ledger.db import create_engine, migrate
from ledger.ids import uuid7
from ledger.schema import transfers
from loadtests.bench_core import BenchDatabase
from service.app import create_app
from service.client import LedgerClient
from service.config import Settings
from service.console.tokens import LoginStatement, login_token
from service.keys import LEDGER_KEY, SETTLEMENT_KEY, WALLETS_KEY
from settlement.tables import settlement_windows, window_positions
from settlement.windows import UNSETTLED_STATUSES
from wallets.model import InstitutionKind

BLOCK = 2_000
PLAIN_ACCOUNTS = 10_000
PAYERS = tuple(f"hk-payer-{n}" for n in range(1, 7))
ACQUIRER = "sz-acq"
BANK = "settlement-bank"
LIQUIDITY = "100000000.00"  # CNY per payer: enough for every window's net debit
TRIVIAL = "/console/login"


async def _submit_all(ledger: Ledger, commands: list[TransferCommand]) -> None:
    for start in range(0, len(commands), BLOCK):
        results = await ledger.submit(commands[start : start + BLOCK])
        if not all(result.ok for result in results):
            bad = next(result for result in results if not result.ok)
            raise RuntimeError(f"seeding failed: {bad.code}")


async def _seed_plain(ledger: Ledger, count: int, rng: random.Random) -> None:
    """``count`` transfers between plain accounts (the ledger's bulk, no window touches them)."""
    funding = uuid7()
    accounts = [uuid7() for _ in range(PLAIN_ACCOUNTS)]
    specs = [AccountSpec(funding, "CNY", "bench:funding")] + [AccountSpec(a, "CNY", "bench:plain") for a in accounts]
    for start in range(0, len(specs), BLOCK):
        await ledger.create_accounts(specs[start : start + BLOCK])
    made = 0
    while made < count:
        size = min(BLOCK * 10, count - made)
        commands = [
            TransferCommand.posted(uuid7(), funding, rng.choice(accounts), rng.randint(1, 100_000), "CNY")
            for _ in range(size)
        ]
        await _submit_all(ledger, commands)
        made += size


async def _seed_obligations(app, window_id: int, count: int, rng: random.Random) -> None:
    """``count`` obligations in the open window: payers towards the acquirer, a tenth back (refunds)."""
    desks = app[SETTLEMENT_KEY]
    window = await desks.windows.open_window()
    assert window.id == window_id, (window.id, window_id)
    accounts = {
        institution: await desks.windows.position_for_payment(window, institution, None, actor="bench")
        for institution in (*PAYERS, ACQUIRER)
    }
    commands = []
    for n in range(count):
        payer = accounts[rng.choice(PAYERS)]
        debit, credit = (accounts[ACQUIRER], payer) if n % 10 == 9 else (payer, accounts[ACQUIRER])
        commands.append(TransferCommand.posted(uuid7(), debit, credit, rng.randint(100, 50_000), "CNY"))
    await _submit_all(app[LEDGER_KEY], commands)


async def _corridor(url: str, operator_key: SigningKey) -> dict[str, Any]:
    """Institutions, liquidity, wallets over the signed API; answers what payments need."""
    keys = {slug: SigningKey.generate() for slug in (*PAYERS, ACQUIRER, BANK)}
    kinds = {ACQUIRER: "sz_acquirer", BANK: "settlement_bank"}
    async with LedgerClient(url, key_id="operator", signing_key=operator_key, retries_max=0) as operator:
        await operator.set_rate("HKD", "CNY", "0.9234", 50)
        for slug, key in keys.items():
            public_key = base64.b64encode(bytes(key.verify_key)).decode()
            await operator.create_institution(slug, slug, kinds.get(slug, "hk_payment_institution"), public_key)
        for slug in PAYERS:
            liquidity = {"id": str(uuid7()), "amount": LIQUIDITY, "currency": "CNY"}
            await operator.post(f"/v1/institutions/{slug}/liquidity", liquidity)
    async with LedgerClient(url, key_id=ACQUIRER, signing_key=keys[ACQUIRER], retries_max=0) as acquirer:
        merchant = await acquirer.create_wallet(
            "tea-house", "CNY", owner_kind="merchant",
            merchant={"name": "Tea", "city": "Shenzhen", "category_code": "5812"},
        )  # fmt: skip
    customers = {}
    for slug in PAYERS:
        async with LedgerClient(url, key_id=slug, signing_key=keys[slug], retries_max=0) as client:
            customer = await client.create_wallet(f"{slug}-customer", "HKD", limit_profile="svf-verified")
            await client.deposit(customer["id"], "1000000.00")
            customers[slug] = customer["id"]
    return {"keys": keys, "merchant": merchant["id"], "customers": customers}


async def _payments(url: str, corridor: dict[str, Any], count: int, rng: random.Random) -> None:
    """Real payments through the API's payment desk (quote, then pay)."""
    for n in range(count):
        slug = PAYERS[n % len(PAYERS)]
        async with LedgerClient(url, key_id=slug, signing_key=corridor["keys"][slug], retries_max=0) as client:
            amount = f"{rng.randint(10, 900)}.{rng.randint(0, 99):02d}"
            quote = await client.quote("HKD", "CNY", target_amount=amount)
            payment = {
                "id": str(uuid7()), "payer_wallet_id": corridor["customers"][slug],
                "merchant_wallet_id": corridor["merchant"], "amount": amount, "currency": "CNY",
                "quote_id": quote["id"],
            }  # fmt: skip
            await client.post("/v1/payments", payment)


async def _time_page(client: TestClient, path: str, repeat: int) -> dict[str, Any]:
    async with client.get(path) as warm:
        status = warm.status
        size = len(await warm.read())
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        async with client.get(path) as response:
            await response.read()
            assert response.status == status
        times.append((time.perf_counter() - started) * 1000)
    return {"path": path, "status": status, "bytes": size, "median_ms": statistics.median(times), "max_ms": max(times)}


async def _explain(ledger: Ledger, window_id: int) -> list[str]:
    """PostgreSQL's plans of the batch's obligations query (as ``SettlementDesk._obligations`` runs
    it) and of ``unsettled_debit``'s position lookup."""
    async with ledger.engine.connect() as conn:
        positions = list(
            (
                await conn.execute(
                    sa.select(window_positions.c.account_id).where(window_positions.c.window_id == window_id)
                )
            ).scalars()
        )
        obligations = (
            sa.select(transfers.c.debit_account_id, transfers.c.credit_account_id, transfers.c.currency,
                      sa.func.sum(transfers.c.amount_minor))
            .where(transfers.c.debit_account_id.in_(positions))
            .where(transfers.c.credit_account_id.in_(positions))
            .where(transfers.c.kind == TransferKind.POSTED.value)
            .group_by(transfers.c.debit_account_id, transfers.c.credit_account_id, transfers.c.currency)
        )  # fmt: skip
        unsettled = (
            sa.select(window_positions.c.account_id)
            .join(settlement_windows, settlement_windows.c.id == window_positions.c.window_id)
            .where(window_positions.c.institution_id == PAYERS[0])
            .where(settlement_windows.c.status.in_(UNSETTLED_STATUSES))
        )
        lines = []
        for name, query in (("batch obligations", obligations), ("unsettled_debit positions", unsettled)):
            sql = query.compile(conn.engine, compile_kwargs={"literal_binds": True})
            plan = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}")
            lines.append(f"-- {name}")
            lines.extend(row[0] for row in plan)
        return lines


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(17)
    obligations_total = args.windows * args.obligations_per_window
    plain = max(0, args.transfers - obligations_total)
    figures: dict[str, Any] = {"seeding_s": {}}
    async with BenchDatabase(args.database) as url:
        engine = create_engine(url)
        await migrate(engine)
        ledger = Ledger(engine, SigningKey.generate())
        batcher = Batcher(ledger, expiry_interval_s=None)
        batcher.start()
        with tempfile.TemporaryDirectory(prefix="ledger-bench-console-") as data_dir:
            app = create_app(Settings(Path(data_dir), url), ledger=ledger, batcher=batcher)
            client = TestClient(TestServer(app))
            await client.start_server()
            try:
                base_url = str(client.make_url("")).rstrip("/")
                operator_key = SigningKey.generate()
                await app[WALLETS_KEY].register_institution(
                    "operator", InstitutionKind.OPERATOR, "Corridor operator", bytes(operator_key.verify_key)
                )
                started = time.perf_counter()
                corridor = await _corridor(base_url, operator_key)
                figures["seeding_s"]["corridor"] = round(time.perf_counter() - started, 1)

                started = time.perf_counter()
                await _seed_plain(ledger, plain, rng)
                figures["seeding_s"]["plain_transfers"] = round(time.perf_counter() - started, 1)

                started = time.perf_counter()
                desks = app[SETTLEMENT_KEY]
                for window_id in range(1, args.windows + 1):
                    await _seed_obligations(app, window_id, args.obligations_per_window, rng)
                    if window_id == args.windows - 1:
                        await _payments(base_url, corridor, args.payments, rng)
                    if window_id < args.windows:
                        await desks.batches.close(window_id, actor="bench")
                await _payments(base_url, corridor, args.payments, rng)  # in the open window
                figures["seeding_s"]["windows"] = round(time.perf_counter() - started, 1)

                started = time.perf_counter()
                for window_id in range(1, args.windows - 1):
                    await desks.batches.settle(window_id, actor="bench")
                figures["seeding_s"]["settling"] = round(time.perf_counter() - started, 1)

                async with engine.connect() as conn:
                    figures["transfers"] = (
                        await conn.execute(sa.select(sa.func.count()).select_from(transfers))
                    ).scalar_one()
                    if args.database == "postgresql":
                        await conn.exec_driver_sql("ANALYZE")
                        await conn.commit()

                statement = LoginStatement.new("operator", int(time.time()))
                async with client.get(f"/console/login/link?token={login_token(statement, operator_key)}") as signed:
                    assert signed.status == 200, await signed.text()
                open_id, waiting, settled = args.windows, args.windows - 1, 1
                pages = {
                    "trivial (login page)": TRIVIAL,
                    "settlement (open window live)": "/console/settlement",
                    "window (open)": f"/console/settlement/windows/{open_id}",
                    "window (closed)": f"/console/settlement/windows/{waiting}",
                    "batch (closed)": f"/console/settlement/batches/{waiting}",
                    "batch (settled)": f"/console/settlement/batches/{settled}",
                    "settle confirmation": f"/console/settlement/batches/{waiting}/settle",
                    "export json": f"/console/settlement/batches/{waiting}/export?format=json",
                    "export csv": f"/console/settlement/batches/{waiting}/export?format=csv",
                    "institutions": "/console/institutions",
                    "institution": f"/console/institutions/{PAYERS[0]}",
                    "audit": "/console/audit",
                }
                timed = {name: await _time_page(client, path, args.repeat) for name, path in pages.items()}
                trivial_ms = timed["trivial (login page)"]["median_ms"]
                for row in timed.values():
                    row["ratio"] = round(row["median_ms"] / trivial_ms, 1)
                figures["pages"] = timed
                if args.explain and args.database == "postgresql":
                    figures["explain"] = await _explain(ledger, waiting)
            finally:
                await client.close()
                await batcher.close()
                await ledger.close()
    figures["settings"] = {
        "database": args.database, "transfers_requested": args.transfers, "windows": args.windows,
        "obligations_per_window": args.obligations_per_window, "payments": args.payments, "repeat": args.repeat,
        "python": sys.version.split()[0], "machine": platform.machine(), "cpus": platform.processor() or None,
    }  # fmt: skip
    return figures


def _print(figures: dict[str, Any]) -> None:
    console = Console(width=150)
    settings = figures["settings"]
    console.print(
        f"{settings['database']}: {figures['transfers']:,} transfers; seeding "
        + ", ".join(f"{name} {seconds} s" for name, seconds in figures["seeding_s"].items())
    )
    table = Table("page", "path", "status", "KiB", "median ms", "max ms", "× trivial")
    for name, row in figures["pages"].items():
        table.add_row(
            name, row["path"], str(row["status"]), f"{row['bytes'] / 1024:.1f}", f"{row['median_ms']:.1f}",
            f"{row['max_ms']:.1f}", f"{row['ratio']:.1f}",
        )  # fmt: skip
    console.print(table)
    for line in figures.get("explain", []):
        console.print(line, highlight=False, markup=False)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_console", description=__doc__.split("\n")[0])
    parser.add_argument("--transfers", type=_positive_int, default=1_000_000)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--windows", type=_positive_int, default=10, help="windows seeded (the last stays open)")
    parser.add_argument("--obligations-per-window", type=_positive_int, default=20_000)
    parser.add_argument("--payments", type=int, default=20, help="real payments in the last closed and the open window")
    parser.add_argument("--repeat", type=_positive_int, default=10)
    parser.add_argument("--explain", action="store_true", help="PostgreSQL: print the plans of the batch's queries")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.windows < 3:
        parser.error("--windows must be 3 or more (settled, closed and open ones)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = asyncio.run(run(args))
    _print(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "parse_args", "run"]
