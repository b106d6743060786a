"""The ``ledger`` console script.

    ledger init             migrate the database and create the ledger's signing key
    ledger migrate          migrate the database only
    ledger demo             seed a small Shenzhen merchant corridor and run payments through it
    ledger audit verify     recompute the audit chain, signatures and balances (--anchor SEQ:HASH)
    ledger audit head       print the newest block as SEQ:HASH, to record outside the ledger

The database is ``LEDGER_DATABASE_URL`` (default: SQLite in ``LEDGER_DATA_DIR``, ``./ledger-data``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ledger import (
    AccountFlags,
    AccountSpec,
    Batcher,
    Ledger,
    LedgerError,
    LedgerKeyMismatch,
    Limits,
    TransferCommand,
    format_amount,
    parse_amount,
)
from ledger.audit import Anchor, newest_anchor, verify_audit
from ledger.batcher import QUEUE_DEPTH_MAX_DEFAULT
from ledger.db import async_url, create_engine, migrate
from ledger.ids import uuid7
from ledger.keys import load_or_create_signing_key, public_key_text, read_signing_key, verify_key_from_text
from ledger.money import Currency
from service.config import Settings

CNY = Currency("CNY", 2)


async def init(settings: Settings, console: Console) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.database_url)
    try:
        await migrate(engine)
        console.print(f"database migrated: [bold]{_safe_url(settings.database_url)}[/]")
        chain_started = await newest_anchor(engine) is not None
        if chain_started and not settings.signing_key_path.exists():
            # A new key here would seal blocks that no single key verifies, for good.
            console.print(
                f"[red]this database already holds a chain, signed by a key that is not at "
                f"{settings.signing_key_path}: point LEDGER_DATA_DIR at the directory holding it[/]"
            )
            return 2
        key, created = load_or_create_signing_key(settings.signing_key_path)
        if chain_started:
            try:
                await Ledger(engine, key).check_signing_key()
            except LedgerKeyMismatch as error:
                console.print(f"[red]{settings.signing_key_path}: {error}[/]")
                return 2
    finally:
        await engine.dispose()
    verb = "created" if created else "kept"
    console.print(
        f"ledger signing key {verb}: {settings.signing_key_path} (public key {public_key_text(key.verify_key)})"
    )
    return 0


async def migrate_only(settings: Settings, console: Console) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # as `init`: the default SQLite file lives in it
    engine = create_engine(settings.database_url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    console.print(f"database migrated: [bold]{_safe_url(settings.database_url)}[/]")


def _no_ledger_here(settings: Settings, console: Console) -> bool:
    """True (and says so) when an SQLite ledger file does not exist: reading commands must not
    create an empty one."""
    url = make_url(async_url(settings.database_url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return False
    if Path(url.database).exists():
        return False
    console.print(f"[red]no ledger at {url.database}: run `ledger init` (or set LEDGER_DATA_DIR)[/]")
    return True


async def audit_head(settings: Settings, console: Console) -> int:
    """Print the newest block as an anchor to record outside the ledger."""
    if _no_ledger_here(settings, console):
        return 2
    engine = create_engine(settings.database_url)
    try:
        anchor = await newest_anchor(engine)
    finally:
        await engine.dispose()
    if anchor is None:
        console.print("no blocks yet: nothing to anchor")
        return 0
    # Plain print: the anchor is meant to be copied or piped, not wrapped by the console.
    print(anchor)
    return 0


async def audit_verify(
    settings: Settings, console: Console, public_key: str | None, anchors: Sequence[str] = ()
) -> int:
    if public_key:
        try:
            verify_key = verify_key_from_text(public_key)
        except ValueError as error:
            console.print(f"[red]--public-key is not a base64 Ed25519 public key: {error}[/]")
            return 2
    elif settings.signing_key_path.exists():
        verify_key = read_signing_key(settings.signing_key_path).verify_key
    else:
        console.print(f"[red]no key: pass --public-key or run `ledger init` ({settings.signing_key_path})[/]")
        return 2
    try:
        parsed_anchors = [Anchor.parse(text) for text in anchors]
    except ValueError as error:
        console.print(f"[red]{error}[/]")
        return 2
    if _no_ledger_here(settings, console):
        return 2
    engine = create_engine(settings.database_url)
    try:
        started = time.perf_counter()
        report = await verify_audit(engine, verify_key, parsed_anchors)
        elapsed = time.perf_counter() - started
    finally:
        await engine.dispose()
    summary = (
        f"{report.blocks_checked} blocks, {report.transfers_checked} transfers, "
        f"{report.accounts_checked} accounts checked in {elapsed:.2f} s"
    )
    if report.ok:
        console.print(f"[green]audit chain verified[/]: {summary}")
        return 0
    console.print(f"[red]audit verification FAILED[/]: {summary}")
    if report.first_bad_block is not None:
        console.print(f"first bad block: {report.first_bad_block}")
    if report.first_bad_account is not None:
        console.print(f"first bad account: {report.first_bad_account}")
    for problem in report.problems:
        console.print(f"  - {problem}")
    return 1


async def demo(settings: Settings, console: Console, payments: int) -> int:
    """Seed a merchant and e-CNY wallets of three categories, and run payments through the batcher."""
    if (code := await init(settings, console)) != 0:
        return code
    key, _ = load_or_create_signing_key(settings.signing_key_path)
    ledger = Ledger(create_engine(settings.database_url), key)
    try:
        return await _demo_story(ledger, console, payments)
    finally:
        await ledger.close()


async def _demo_story(ledger: Ledger, console: Console, payments: int) -> int:
    def cny(text: str) -> int:
        return parse_amount(text, CNY)

    wallet = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    issuance, merchant = uuid7(), uuid7()
    # e-CNY wallet categories as limit profiles (DOMAIN.md): 4 = phone number only, 2 = bank-linked.
    category_4, category_2, category_1 = uuid7(), uuid7(), uuid7()
    payers = [uuid7() for _ in range(200)]
    named = {
        issuance: "e-CNY issuance (operator funding)",
        merchant: "Shenzhen merchant: Futian Dim Sum House",
        category_4: "wallet, category 4 (phone only)",
        category_2: "wallet, category 2 (bank-linked)",
        category_1: "wallet, category 1 (full KYC)",
    }
    await ledger.create_accounts(
        [
            AccountSpec(issuance, "CNY", "funding"),
            AccountSpec(merchant, "CNY", "merchant", owner_ref="mch-futian-001", flags=wallet),
            AccountSpec(
                category_4,
                "CNY",
                "wallet",
                owner_ref="hk-cust-4",
                flags=wallet,
                limits=Limits(cny("10000"), cny("2000"), cny("5000"), cny("50000")),
            ),
            AccountSpec(
                category_2,
                "CNY",
                "wallet",
                owner_ref="hk-cust-2",
                flags=wallet,
                limits=Limits(cny("500000"), cny("50000"), cny("100000"), None),
            ),
            AccountSpec(category_1, "CNY", "wallet", owner_ref="hk-cust-1", flags=wallet),
            *[
                AccountSpec(payer, "CNY", "wallet", owner_ref=f"payer-{n}", flags=wallet)
                for n, payer in enumerate(payers)
            ],
        ]
    )
    story = Table(title="What happened", show_lines=False)
    for column in ("step", "result"):
        story.add_column(column)

    # The burst is handed in at once: the queue must hold it (the default bound is 50,000).
    async with Batcher(ledger, queue_depth_max=max(QUEUE_DEPTH_MAX_DEFAULT, payments)) as batcher:

        async def run(step: str, *commands: TransferCommand) -> None:
            results = await batcher.submit_many(commands)
            outcomes = [("replayed ok" if r.replayed else r.code.value) for r in results]
            if len(set(outcomes)) == 1 and len(outcomes) > 3:
                story.add_row(step, f"{len(outcomes)} x {outcomes[0]}")
            else:
                story.add_row(step, ", ".join(outcomes))

        deposits = [
            TransferCommand.posted(uuid7(), issuance, account, cny(amount), "CNY")
            for account, amount in ((category_4, "3000"), (category_2, "20000"), (category_1, "50000"))
        ]
        await run("top up three wallets from issuance", *deposits)
        lunch = TransferCommand.posted(uuid7(), category_4, merchant, cny("128.50"), "CNY", user_data="order 8841")
        await run("category 4 wallet pays 128.50 for lunch", lunch)
        await run("the same payment retried (same id)", lunch)
        await run(
            "category 4 wallet tries 2,500.00 (cap 2,000 per payment)",
            TransferCommand.posted(uuid7(), category_4, merchant, cny("2500"), "CNY"),
        )
        await run(
            "category 1 wallet tries 80,000.00 (holds 50,000)",
            TransferCommand.posted(uuid7(), category_1, merchant, cny("80000"), "CNY"),
        )
        hold = uuid7()
        await run(
            "hotel holds 1,000.00 on the category 2 wallet",
            TransferCommand.pending(hold, category_2, merchant, cny("1000"), "CNY", timeout_s=3600),
        )
        await run("hotel captures 860.00 at check-out (rest released)", TransferCommand.post(uuid7(), hold, cny("860")))
        await run(
            "a linked pair whose second breaks its cap: neither happens",
            *(
                TransferCommand.posted(uuid7(), category_1, merchant, cny("10"), "CNY", linked=True),
                TransferCommand.posted(uuid7(), category_4, merchant, cny("99999"), "CNY"),
            ),
        )
        await run(
            "fund 200 payer wallets",
            *[TransferCommand.posted(uuid7(), issuance, payer, cny("5000"), "CNY") for payer in payers],
        )
        rng = random.Random(2026)
        burst = [
            TransferCommand.posted(uuid7(), rng.choice(payers), merchant, rng.randint(1, 2000), "CNY")
            for _ in range(payments)
        ]
        started = time.perf_counter()
        batches_before = batcher.batches_committed
        results = await asyncio.gather(*(batcher.submit(command) for command in burst))
        elapsed = time.perf_counter() - started
        ok = sum(result.ok for result in results)
        story.add_row(
            f"{payments:,} concurrent payments into the merchant",
            f"{ok:,} ok in {batcher.batches_committed - batches_before} batches, {elapsed:.2f} s "
            f"({payments / elapsed:,.0f} transfers/s)",
        )
    console.print(story)

    balances = Table(title="Balances (CNY)")
    for column, justify in (("account", "left"), ("posted", "right"), ("on hold", "right"), ("available", "right")):
        balances.add_column(column, justify=justify)
    found = await ledger.get_accounts(list(named))
    for account_id, label in named.items():
        b = found[account_id].balances
        balances.add_row(
            label,
            format_amount(b.credits_posted - b.debits_posted, CNY),
            format_amount(b.debits_pending + b.credits_pending, CNY),
            format_amount(b.available_minor, CNY),
        )
    console.print(balances)
    report = await ledger.verify_audit()
    if report.ok:
        console.print(
            f"[green]audit chain verified[/]: {report.blocks_checked} signed blocks, "
            f"{report.transfers_checked} transfers, {report.accounts_checked} accounts"
        )
        return 0
    console.print(f"[red]audit verification failed[/]: {report.problems}")
    return 1


def _safe_url(url: str) -> str:
    """The URL without its password, whether in the authority or in the query string."""
    parsed = make_url(url)
    hidden = {key: "***" for key in parsed.query if key.lower() in ("password", "sslpassword", "passfile")}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="Shenzhen-Hong Kong payment ledger")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="migrate the database and create the ledger's signing key")
    commands.add_parser("migrate", help="migrate the database to the latest schema")
    demo_parser = commands.add_parser("demo", help="seed a small corridor and run payments through it")
    demo_parser.add_argument("--payments", type=int, default=5_000, help="concurrent payments in the burst")
    audit = commands.add_parser("audit", help="audit chain")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="recompute the chain, its signatures and every balance")
    verify.add_argument("--public-key", help="base64 Ed25519 public key (default: the data directory's key)")
    verify.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SEQUENCE:HASH",
        help="a block recorded earlier with `ledger audit head`; the chain must still hold it (repeatable)",
    )
    audit_commands.add_parser("head", help="print the newest block as SEQUENCE:HASH, to record outside the ledger")
    return parser


EXIT_FAILED = 3  # the command could not run: the database unreachable, a key file unreadable


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 the audit found the books differ; 2 bad input (a malformed anchor or
    key, no key, a key that did not sign this chain); 3 the command could not run."""
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    console = Console()
    try:
        return _run(args, settings, console)
    except ValueError as error:  # a malformed key or key file (base64 and length errors are ValueErrors)
        console.print(f"[red]{error}[/]")
        return 2
    except (OSError, LedgerError, SQLAlchemyError) as error:
        console.print(f"[red]{type(error).__name__}: {error}[/]")
        return EXIT_FAILED


def _run(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    if args.command == "init":
        return asyncio.run(init(settings, console))
    if args.command == "migrate":
        asyncio.run(migrate_only(settings, console))
        return 0
    if args.command == "demo":
        return asyncio.run(demo(settings, console, args.payments))
    if args.command == "audit" and args.audit_command == "verify":
        return asyncio.run(audit_verify(settings, console, args.public_key, args.anchor))
    if args.command == "audit" and args.audit_command == "head":
        return asyncio.run(audit_head(settings, console))
    return 2


if __name__ == "__main__":
    sys.exit(main())
