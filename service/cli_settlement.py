"""``ledger settlement``: the operator's settlement day on the host database.

``windows`` lists the windows, ``close`` closes the open one (the next opens) and prints its
batch, ``show`` prints a batch (totals, each participant's net as a signed bar, instructions,
exclusions, carried obligations, history), ``settle`` settles it (unwinding short participants),
``export`` writes its signed report as JSON or CSV. Every command takes ``--json``. The figures and
the signed report are the very ones the HTTP API serves (``settlement.reports``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ledger import Batcher, Currency, Ledger, format_amount
from ledger.db import create_engine
from ledger.keys import read_signing_key
from service.config import Settings
from settlement.batches import Batch
from settlement.desks import Settlement
from settlement.quotes import QuoteDesk
from settlement.rates import RateBook
from settlement.reports import batch_csv, batch_document, rfc3339, signed
from wallets.service import WalletBook

CLI_ACTOR = "cli"
BAR_WIDTH = 30  # characters for the largest net position in ``show``


@contextlib.asynccontextmanager
async def open_settlement(settings: Settings) -> AsyncIterator[tuple[Ledger, Settlement]]:
    ledger = Ledger(create_engine(settings.database_url), read_signing_key(settings.signing_key_path))
    try:
        async with Batcher(ledger, expiry_interval_s=None) as batcher:
            wallets = WalletBook(ledger, batcher)
            quotes = QuoteDesk(ledger, RateBook(ledger)).lookup
            yield ledger, Settlement.over(ledger, batcher, wallets, quotes, ledger.clock)
    finally:
        await ledger.close()


def add_parser(commands: argparse._SubParsersAction) -> None:
    settlement = commands.add_parser("settlement", help="settlement windows and batches (on the host)")
    actions = settlement.add_subparsers(dest="settlement_command", required=True)
    _json_flag(actions.add_parser("windows", help="every settlement window, newest first"))
    close = actions.add_parser("close", help="close the open window (the next opens) and print its batch")
    close.add_argument("window_id", metavar="WINDOW_ID", type=int, nargs="?", help="default: the open window")
    _json_flag(close)
    for name, help_text in (("show", "a batch: nets, instructions, history"), ("settle", "settle a closed batch")):
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("batch_id", metavar="BATCH_ID", type=int)
        _json_flag(parser)
    export = actions.add_parser("export", help="a batch's signed report as JSON, or its figures as CSV")
    export.add_argument("batch_id", metavar="BATCH_ID", type=int)
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument("--out", type=Path, help="write to this file (default: stdout)")


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (messages go to stderr)")


async def run(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    async with open_settlement(settings) as (ledger, desks):
        command = args.settlement_command
        if command == "windows":
            return await _windows(desks, console, as_json=args.json)
        if command == "export":
            return await _export(ledger, desks, console, args.batch_id, args.format, args.out)
        if command == "close":
            window_id = args.window_id or (await desks.windows.open_window()).id
            batch = await desks.batches.close(window_id, actor=CLI_ACTOR)
        elif command == "settle":
            batch = await desks.batches.settle(args.batch_id, actor=CLI_ACTOR)
        else:
            batch = await desks.batches.batch(args.batch_id)
        report = signed(batch_document(batch, await ledger.currencies()), ledger.signing_key)
        if args.json:
            print(json.dumps(report, indent=2, ensure_ascii=False))
        else:
            print_batch(console, batch, report, await ledger.currencies())
    return 0


async def _windows(desks: Settlement, console: Console, *, as_json: bool) -> int:
    windows = list(reversed(await desks.windows.list()))
    rows = [
        {"id": w.id, "status": w.status, "opened_at": rfc3339(w.opened_at_us),
         "closed_at": None if w.closed_at_us is None else rfc3339(w.closed_at_us)}
        for w in windows
    ]  # fmt: skip
    if as_json:
        print(json.dumps({"items": rows}, indent=2))
        return 0
    table = Table(title="Settlement windows (a closed window's batch has its id)")
    for column in ("id", "status", "opened at", "closed at"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["id"]), row["status"], row["opened_at"], row["closed_at"] or "-")
    console.print(table)
    return 0


async def _export(
    ledger: Ledger, desks: Settlement, console: Console, batch_id: int, report_format: str, out: Path | None
) -> int:
    batch = await desks.batches.batch(batch_id)
    report = signed(batch_document(batch, await ledger.currencies()), ledger.signing_key)
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n" if report_format == "json" else batch_csv(report)
    if out is None:
        print(text, end="")
        return 0
    await asyncio.to_thread(out.write_text, text, encoding="utf-8")
    console.print(f"batch {batch_id} ({batch.status}) written to {out}; signature {report['signature']}")
    return 0


def print_batch(console: Console, batch: Batch, report: dict[str, Any], currencies: Mapping[str, Currency]) -> None:
    console.print(f"[bold]Settlement batch {batch.id}[/] — {batch.status}, through {batch.settlement_bank_id}")
    totals = Table(title="Totals")
    for column in ("currency", "gross", "net", "liquidity saved", "ratio"):
        totals.add_column(column, justify="right")
    for t in report["totals"]:
        totals.add_row(t["currency"], t["gross"], t["net"], t["liquidity_saved"], t["liquidity_saving_ratio"])
    console.print(totals)
    console.print(_positions_table(batch, currencies))
    _print_rows(console, "Instructions", ("payer", "payee", "currency", "amount"), report["instructions"])
    _print_rows(
        console, "Excluded (unwound)", ("institution_id", "currency", "net_debit", "liquidity"), report["exclusions"]
    )
    _print_rows(
        console, "Carried into a later window", ("debtor", "creditor", "currency", "amount"), report["carried_out"]
    )
    _print_rows(console, "Carried in", ("debtor", "creditor", "currency", "amount"), report["carried_in"])
    _print_rows(console, "History", ("status", "at", "actor"), report["history"])
    console.print(f"signature {report['signature']}")


def _positions_table(batch: Batch, currencies: Mapping[str, Currency]) -> Table:
    """Each participant's net as a signed bar: red to the left pays, green to the right receives."""
    positions = [p for n in batch.netting.currencies for p in n.positions]
    largest = max((abs(p.net_minor) for p in positions), default=0) or 1
    table = Table(title="Net positions (pays ◀ │ ▶ receives)")
    for column in ("institution", "currency", "net", "bar"):
        table.add_column(column, justify="right" if column == "net" else "left")
    for p in positions:
        width = round(abs(p.net_minor) * BAR_WIDTH / largest)
        bar = Text()
        if p.net_minor < 0:
            bar.append(" " * (BAR_WIDTH - width) + "█" * width, style="red").append("│")
        else:
            bar.append(" " * BAR_WIDTH + "│").append("█" * width, style="green")
        sign = "-" if p.net_minor < 0 else "+"
        table.add_row(p.participant, p.currency, sign + format_amount(abs(p.net_minor), currencies[p.currency]), bar)
    return table


def _print_rows(console: Console, title: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[column]) if row[column] is not None else "-" for column in columns))
    console.print(table)
