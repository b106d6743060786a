"""The ``ledger`` console script.

    ledger init             migrate the database, create the ledger's signing key and register the
                            operator (--operator-public-key, or a new key pair in operator.key)
    ledger migrate          migrate the database only
    ledger serve            serve the HTTP API (--host, --port, --workers N on PostgreSQL)
    ledger institutions     add, list, rotate-key: institutions and their keys (--json)
    ledger wallets show     one wallet of an institution (--json)
    ledger fx set-rate      set a pair's rate: `ledger fx set-rate HKD CNY 0.9234 --spread-bps 50` (--json)
    ledger fx rates         the current rate of each pair, or every rate set (--history, --limit, --json)
    ledger demo             init, serve the API in this process, and run a small corridor through it
                            as the operator and two institutions (signed requests, LedgerClient)
    ledger audit verify     recompute the audit chain, signatures and balances (--anchor SEQ:HASH)
    ledger audit head       print the newest block as SEQ:HASH, to record outside the ledger
    ledger console-login    print a one-time operator console link (5 minutes), signed with operator.key
    ledger console-sign     sign the console sign-in page's challenge with operator.key

The database is ``LEDGER_DATABASE_URL`` (default: SQLite in ``LEDGER_DATA_DIR``, ``./ledger-data``).
The institution and wallet commands talk to the database directly, through the WalletBook: an
operator runs them on the host. With ``--json`` they print JSON on stdout and messages on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from nacl.signing import SigningKey, VerifyKey
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ledger import (
    Batcher,
    Ledger,
    LedgerError,
    LedgerKeyMismatch,
    format_amount,
)
from ledger.audit import Anchor, newest_anchor, verify_audit
from ledger.db import async_url, create_engine, migrate
from ledger.keys import (
    load_or_create_signing_key,
    public_key_text,
    read_signing_key,
    verify_key_from_text,
    write_signing_key,
)
from ledger.money import Currency
from service import cli_settlement, serve
from service.config import Settings
from service.console import routes as console_routes
from service.console.tokens import LoginStatement, MalformedToken, login_token, signature_text
from service.serve import HOST_DEFAULT, PORT_DEFAULT, WORKERS_MAX
from settlement.rates import HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX, Rate, RateBook
from wallets.errors import NotFound, WalletError
from wallets.model import Institution, InstitutionKind, Wallet
from wallets.service import WalletBook

CNY = Currency("CNY", 2)
DEMO_PAYMENTS_DEFAULT = 5_000
DEMO_PAYMENTS_MAX = 200_000


OPERATOR_ID = "operator"
OPERATOR_NAME = "Ledger operator"
# The actor recorded on changes made from the command line (account events).
CLI_ACTOR = "ledger-cli"


async def init(settings: Settings, console: Console, operator_public_key: str | None = None) -> int:
    """Migrate, create (or check) the ledger's signing key, register the operator. Idempotent."""
    operator_key = verify_key_from_text(operator_public_key) if operator_public_key else None
    if (code := await prepare_ledger(settings, console)) != 0:
        return code
    return await register_operator(settings, console, operator_key)


async def prepare_ledger(settings: Settings, console: Console) -> int:
    """Migrate the database and create the ledger's signing key, or check the one there."""
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


async def register_operator(settings: Settings, console: Console, public_key: VerifyKey | None) -> int:
    """Register the institution ``operator`` with ``public_key``, or with the key in
    ``operator.key``, or with a new key pair whose seed goes there. A second run keeps both: the
    key file is never overwritten, and an operator registered earlier is left as it is."""
    path = operator_key_path(settings)
    async with open_wallet_book(settings) as book:
        with contextlib.suppress(NotFound):
            existing = await book.get_institution(OPERATOR_ID)
            if public_key is None and not path.exists():
                # Registered from elsewhere (or with --operator-public-key): no new key here.
                keys = ", ".join(_key_text(raw) for raw in existing.active_keys)
                console.print(f"operator {OPERATOR_ID!r} kept (public keys {keys}); its private key is not in {path}")
                return 0
        key_created = False
        if public_key is None:
            if path.exists():
                public_key = read_signing_key(path).verify_key
            else:
                seed = SigningKey.generate()
                write_signing_key(path, seed)  # on disk (0600, fsynced) before the database names it
                public_key, key_created = seed.verify_key, True
        try:
            _, registered = await book.register_institution(
                OPERATOR_ID, InstitutionKind.OPERATOR, OPERATOR_NAME, bytes(public_key), actor=CLI_ACTOR
            )
        except WalletError as error:
            console.print(
                f"[red]operator {OPERATOR_ID!r} is registered with other fields ({error}): "
                f"add a key with `ledger institutions rotate-key {OPERATOR_ID}`[/]"
            )
            return 2
    verb = "registered" if registered else "kept"
    where = f"private key {'created' if key_created else 'kept'}: {path}" if path.exists() else "private key: yours"
    console.print(
        f"operator {OPERATOR_ID!r} {verb} (public key {public_key_text(public_key)}, keyid {OPERATOR_ID!r}); {where}"
    )
    return 0


def operator_key_path(settings: Settings) -> Path:
    """The operator's private seed, when ``ledger init`` made the key pair (API.md)."""
    return settings.data_dir / "operator.key"


@contextlib.asynccontextmanager
async def open_wallet_book(settings: Settings) -> AsyncIterator[WalletBook]:
    """A WalletBook over a Ledger and Batcher of this process, closed (the batcher drained) after."""
    ledger = Ledger(create_engine(settings.database_url), read_signing_key(settings.signing_key_path))
    try:
        # No expiry passes: a short command must not do the server's periodic work.
        async with Batcher(ledger, expiry_interval_s=None) as batcher:
            yield WalletBook(ledger, batcher)
    finally:
        await ledger.close()


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
    """A small corridor through the HTTP API, served in this process (``service.demo``)."""
    from service import demo as demo_module  # it imports init and the key paths from here

    return await demo_module.run(settings, console, payments)


# -- the operator console ---------------------------------------------------------------------


def console_login(settings: Settings, console: Console, base_url: str, operator_id: str, key_file: Path | None) -> int:
    """Print a login link: a statement (operator, expiry in 5 minutes, nonce) signed with the
    operator's key, which any worker checks against the operator's registered keys, once."""
    signing_key = _operator_signing_key(settings, console, key_file)
    if signing_key is None:
        return 2
    statement = LoginStatement.new(operator_id, int(time.time()))
    # Plain print: the link is meant to be copied or piped, not wrapped by the console.
    print(console_routes.login_url(base_url, login_token(statement, signing_key)))
    return 0


def console_sign(settings: Settings, console: Console, challenge: str, key_file: Path | None) -> int:
    """Sign a sign-in challenge; anything that is not a console login statement is refused, so
    that this command can never be made to sign a request."""
    try:
        statement = LoginStatement.parse(challenge)
    except MalformedToken as error:
        console.print(f"[red]{error}[/]")
        return 2
    signing_key = _operator_signing_key(settings, console, key_file)
    if signing_key is None:
        return 2
    print(signature_text(statement.sign(signing_key)))
    return 0


def _operator_signing_key(settings: Settings, console: Console, key_file: Path | None) -> SigningKey | None:
    path = key_file or operator_key_path(settings)
    if not path.exists():
        console.print(f"[red]no operator key at {path}: pass --key-file, or run `ledger init` here[/]")
        return None
    return read_signing_key(path)


# -- serving ---------------------------------------------------------------------------------


def serve_command(
    settings: Settings, console: Console, host: str, port: int, workers: int, *, reuse_port: bool = False
) -> int:
    """``ledger serve``: checks what it can before anything listens, then runs service.serve."""
    backend = make_url(async_url(settings.database_url)).get_backend_name()
    if workers > 1 and backend == "sqlite":
        console.print(
            "[red]--workers needs PostgreSQL (set LEDGER_DATABASE_URL): SQLite takes one writer at a "
            "time, so more processes would only queue on its lock; serve SQLite with one worker[/]"
        )
        return 2
    if workers > 1 and port == 0:
        console.print("[red]--workers needs a fixed --port: every worker must bind the same one[/]")
        return 2
    if (code := _no_initialised_ledger(settings, console)) != 0:
        return code
    if workers > 1:
        console.print(f"serving http://{host}:{port} with {workers} workers on {_safe_url(settings.database_url)}")
        return serve.serve_workers(host, port, workers, console)
    return serve.serve(settings, host, port, reuse_port=reuse_port, console=console)


def _no_initialised_ledger(settings: Settings, console: Console) -> int:
    """2 (and says so) when ``ledger init`` has not run here: no signing key, or no SQLite file."""
    if not settings.signing_key_path.exists():
        console.print(f"[red]no ledger signing key at {settings.signing_key_path}: run `ledger init` first[/]")
        return 2
    return 2 if _no_ledger_here(settings, console) else 0


# -- institutions and wallets (on the host, through the WalletBook) ----------------------------


async def institutions_add(
    settings: Settings, console: Console, institution_id: str, kind: str, name: str, public_key: str, *, as_json: bool
) -> int:
    key = verify_key_from_text(public_key)
    if (code := _no_initialised_ledger(settings, console)) != 0:
        return code
    async with open_wallet_book(settings) as book:
        institution, created = await book.register_institution(
            institution_id, InstitutionKind(kind), name, bytes(key), actor=CLI_ACTOR
        )
    if as_json:
        _print_json({**_institution_json(institution), "created": created})
    else:
        console.print(f"institution {institution.id!r} {'registered' if created else 'already registered'}")
        console.print(_institutions_table([institution]))
    return 0


async def institutions_list(settings: Settings, console: Console, *, as_json: bool) -> int:
    if (code := _no_initialised_ledger(settings, console)) != 0:
        return code
    async with open_wallet_book(settings) as book:
        institutions = await book.list_institutions()
    if as_json:
        _print_json({"items": [_institution_json(institution) for institution in institutions]})
    elif institutions:
        console.print(_institutions_table(institutions))
    else:
        console.print("no institutions yet: `ledger init` registers the operator")
    return 0


async def institutions_rotate_key(
    settings: Settings,
    console: Console,
    institution_id: str,
    public_key: str,
    retire: str | None,
    *,
    as_json: bool,
) -> int:
    """Add a key; with ``retire``, retire an old one after the new one is active (never the
    other way round: the institution keeps a key that verifies throughout)."""
    new_key = verify_key_from_text(public_key)
    old_key = verify_key_from_text(retire) if retire else None
    if (code := _no_initialised_ledger(settings, console)) != 0:
        return code
    async with open_wallet_book(settings) as book:
        institution = await book.add_key(institution_id, bytes(new_key))
        if old_key is not None:
            institution = await book.retire_key(institution_id, bytes(old_key))
    if as_json:
        _print_json(_institution_json(institution))
    else:
        console.print(_keys_table(institution))
    return 0


async def wallets_show(
    settings: Settings, console: Console, wallet_id: UUID, institution_id: str, *, as_json: bool
) -> int:
    if (code := _no_initialised_ledger(settings, console)) != 0:
        return code
    async with open_wallet_book(settings) as book:
        wallet = await book.get_wallet(institution_id, wallet_id)
        currency = await book.ledger.currency(wallet.currency)
    document = _wallet_json(wallet, currency)
    if as_json:
        _print_json(document)
        return 0
    table = Table(title=f"wallet {wallet.id}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for field, value in document.items():
        if isinstance(value, dict):
            value = ", ".join(f"{name} {amount if amount is not None else '-'}" for name, amount in value.items())
        table.add_row(field, "-" if value is None else str(value))
    console.print(table)
    return 0


# -- FX rates (on the host, through the RateBook) -------------------------------------------------


@contextlib.asynccontextmanager
async def open_rate_book(settings: Settings) -> AsyncIterator[RateBook]:
    ledger = Ledger(create_engine(settings.database_url), read_signing_key(settings.signing_key_path))
    try:
        yield RateBook(ledger)
    finally:
        await ledger.close()


async def fx_set_rate(
    settings: Settings, console: Console, source: str, target: str, mid_rate: Decimal, spread_bps: int, *, as_json: bool
) -> int:
    if (code := _no_initialised_ledger(settings, console)) != 0:
        return code
    async with open_rate_book(settings) as book:
        rate = await book.set_rate(source, target, mid_rate, spread_bps, actor=CLI_ACTOR)
    if as_json:
        _print_json(_rate_json(rate))
    else:
        console.print(f"{source}→{target} quotes use {rate.customer_rate} from now on")
        console.print(_rates_table([rate], title="Rate set"))
    return 0


async def fx_rates(settings: Settings, console: Console, *, history: bool, limit: int, as_json: bool) -> int:
    if (code := _no_initialised_ledger(settings, console)) != 0:
        return code
    async with open_rate_book(settings) as book:
        rates = (await book.history(limit=limit))[0] if history else await book.current_rates()
    if as_json:
        _print_json({"items": [_rate_json(rate) for rate in rates]})
    elif rates:
        console.print(_rates_table(rates, title="Rates set, newest first" if history else "Current rates"))
    else:
        console.print("no rates yet: `ledger fx set-rate HKD CNY 0.9234 --spread-bps 50` sets one")
    return 0


def _rate_json(rate: Rate) -> dict[str, Any]:
    return {
        "id": rate.id, "source_currency": rate.source_currency, "target_currency": rate.target_currency,
        "mid_rate": format(rate.mid_rate, "f"), "spread_bps": rate.spread_bps,
        "customer_rate": format(rate.customer_rate, "f"), "set_at": _timestamp(rate.set_at_us), "set_by": rate.actor,
    }  # fmt: skip


def _rates_table(rates: Sequence[Rate], *, title: str) -> Table:
    table = Table(title=title)
    for column in ("pair", "mid rate", "spread (bps)", "customer rate", "set at", "set by"):
        table.add_column(column)
    for rate in rates:
        table.add_row(
            f"{rate.source_currency}→{rate.target_currency}", format(rate.mid_rate, "f"), str(rate.spread_bps),
            format(rate.customer_rate, "f"), _timestamp(rate.set_at_us), rate.actor,
        )  # fmt: skip
    return table


def _print_json(document: object) -> None:
    # Plain print on stdout: meant for scripts (jq), not wrapped or coloured by the console.
    print(json.dumps(document, indent=2, ensure_ascii=False))


def _timestamp(at_us: int | None) -> str | None:
    """RFC 3339 in UTC, to the microsecond, from integer microseconds (no float on the way)."""
    if at_us is None:
        return None
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(microseconds=at_us)
    return moment.isoformat().replace("+00:00", "Z")


def _key_text(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _institution_json(institution: Institution) -> dict[str, Any]:
    return {
        "id": institution.id,
        "kind": str(institution.kind),
        "name": institution.name,
        "created_at": _timestamp(institution.created_at_us),
        "keys": [
            {
                "public_key": _key_text(key.public_key),
                "active": key.active,
                "added_at": _timestamp(key.added_at_us),
                "retired_at": _timestamp(key.retired_at_us),
            }
            for key in institution.keys
        ],
        "accounts": [
            {"currency": currency, "role": str(role), "account_id": str(account_id)}
            for (currency, role), account_id in sorted(institution.accounts.items())
        ],
    }


def _institutions_table(institutions: Sequence[Institution]) -> Table:
    table = Table(title="Institutions")
    for column in ("id", "kind", "name", "active keys", "created"):
        table.add_column(column)
    for institution in institutions:
        keys = "\n".join(_key_text(raw) for raw in institution.active_keys) or "[red]none[/]"
        table.add_row(
            institution.id, str(institution.kind), institution.name, keys, _timestamp(institution.created_at_us)
        )
    return table


def _keys_table(institution: Institution) -> Table:
    table = Table(title=f"Keys of {institution.id} (keyid {institution.id!r})")
    for column in ("public key", "status", "added", "retired"):
        table.add_column(column)
    for key in institution.keys:
        status = "[green]active[/]" if key.active else "retired"
        table.add_row(
            _key_text(key.public_key), status, _timestamp(key.added_at_us), _timestamp(key.retired_at_us) or "-"
        )
    return table


def _wallet_json(wallet: Wallet, currency: Currency) -> dict[str, Any]:
    def amount(minor: int | None) -> str | None:
        return None if minor is None else format_amount(minor, currency)

    balances, limits = wallet.balances, wallet.limits
    merchant = wallet.merchant
    return {
        "id": str(wallet.id),
        "institution_id": wallet.institution_id,
        "owner_kind": str(wallet.owner_kind),
        "owner_ref": wallet.owner_ref,
        "currency": wallet.currency,
        "profile": wallet.profile,
        "tier": wallet.tier,
        "status": str(wallet.status),
        "balance": {
            "available": amount(balances.available_minor),
            "posted": amount(balances.posted_minor),
            "pending_in": amount(balances.credits_pending),
            "pending_out": amount(balances.debits_pending),
        },
        "limits": {
            "balance_cap": amount(limits.balance_cap_minor),
            "transfer_cap": amount(limits.transfer_cap_minor),
            "daily_debit_cap": amount(limits.daily_debit_cap_minor),
            "annual_debit_cap": amount(limits.annual_debit_cap_minor),
        },
        "merchant": None
        if merchant is None
        else {"name": merchant.name, "city": merchant.city, "category_code": merchant.category_code},
        "created_at": _timestamp(wallet.created_at_us),
    }


def _safe_url(url: str) -> str:
    """The URL without its password, whether in the authority or in the query string."""
    parsed = make_url(url)
    hidden = {key: "***" for key in parsed.query if key.lower() in ("password", "sslpassword", "passfile")}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="Shenzhen-Hong Kong payment ledger")
    commands = parser.add_subparsers(dest="command", required=True)
    init_parser = commands.add_parser(
        "init", help="migrate, create the ledger's signing key and register the operator (idempotent)"
    )
    init_parser.add_argument(
        "--operator-public-key",
        metavar="BASE64",
        help="the operator's Ed25519 public key (default: a new key pair, its seed in <data dir>/operator.key)",
    )
    commands.add_parser("migrate", help="migrate the database to the latest schema")
    _add_serve_parser(commands)
    demo_parser = commands.add_parser(
        "demo", help="init, serve the API in this process and run a small corridor through it as signed clients"
    )
    demo_parser.add_argument(
        "--payments",
        type=_bounded_int(0, DEMO_PAYMENTS_MAX),
        default=DEMO_PAYMENTS_DEFAULT,
        help=f"signed transfers in the concurrent burst (default {DEMO_PAYMENTS_DEFAULT:,}; 0: none)",
    )
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
    _add_institutions_parser(commands)
    _add_wallets_parser(commands)
    _add_fx_parser(commands)
    cli_settlement.add_parser(commands)
    _add_console_parsers(commands)
    return parser


def _add_console_parsers(commands: argparse._SubParsersAction) -> None:
    login = commands.add_parser(
        "console-login", help="print a one-time operator console link, valid 5 minutes (signed with operator.key)"
    )
    login.add_argument(
        "--url", default=f"http://{HOST_DEFAULT}:{PORT_DEFAULT}", help="the server's base URL, as the browser sees it"
    )
    login.add_argument("--operator", default=OPERATOR_ID, help=f"the operator's id (default {OPERATOR_ID})")
    login.add_argument("--key-file", type=Path, help="the operator's seed (default <data dir>/operator.key)")
    sign = commands.add_parser("console-sign", help="sign the console sign-in page's challenge with operator.key")
    sign.add_argument("challenge", metavar="CHALLENGE", help="the challenge as the sign-in page shows it")
    sign.add_argument("--key-file", type=Path, help="the operator's seed (default <data dir>/operator.key)")


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the HTTP API until SIGTERM or SIGINT (then drain)")
    serve.add_argument("--host", default=HOST_DEFAULT, help=f"address to listen on (default {HOST_DEFAULT})")
    serve.add_argument("--port", type=_port, default=PORT_DEFAULT, help=f"port (default {PORT_DEFAULT}; 0: any)")
    serve.add_argument(
        "--workers",
        type=_bounded_int(1, WORKERS_MAX),
        default=1,
        help="processes on one port (SO_REUSEPORT), each with its own batcher; more than 1 needs PostgreSQL",
    )
    # A worker of a pool: binds with SO_REUSEPORT beside its siblings. Set by the pool's parent.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)


def _add_institutions_parser(commands: argparse._SubParsersAction) -> None:
    institutions = commands.add_parser("institutions", help="institutions and their keys (on the host)")
    actions = institutions.add_subparsers(dest="institutions_command", required=True)
    add = actions.add_parser("add", help="register an institution (idempotent for the same fields)")
    add.add_argument("institution_id", metavar="ID", help="a slug, e.g. hk-alphapay; also its signatures' keyid")
    add.add_argument("--kind", required=True, choices=[kind.value for kind in InstitutionKind])
    add.add_argument("--name", required=True)
    add.add_argument("--public-key", required=True, metavar="BASE64", help="its Ed25519 public key (32 bytes)")
    _add_json_flag(add)
    _add_json_flag(actions.add_parser("list", help="every institution with its active keys"))
    rotate = actions.add_parser("rotate-key", help="add a key, and retire an old one once the new one is active")
    rotate.add_argument("institution_id", metavar="ID")
    rotate.add_argument("--public-key", required=True, metavar="BASE64", help="the new Ed25519 public key")
    rotate.add_argument("--retire", metavar="OLD_BASE64", help="the key to retire after the new one is added")
    _add_json_flag(rotate)


def _add_wallets_parser(commands: argparse._SubParsersAction) -> None:
    wallets = commands.add_parser("wallets", help="wallets (on the host)")
    actions = wallets.add_subparsers(dest="wallets_command", required=True)
    show = actions.add_parser("show", help="a wallet's balances, limits and status")
    show.add_argument("wallet_id", metavar="WALLET_ID", type=UUID)
    show.add_argument("--institution", required=True, metavar="ID", help="the institution the wallet belongs to")
    _add_json_flag(show)


def _add_fx_parser(commands: argparse._SubParsersAction) -> None:
    fx = commands.add_parser("fx", help="FX rates (on the host)")
    actions = fx.add_subparsers(dest="fx_command", required=True)
    set_rate = actions.add_parser("set-rate", help="the rate quotes of a pair use from now on (history is kept)")
    set_rate.add_argument("source_currency", metavar="SOURCE", help="HKD or CNY")
    set_rate.add_argument("target_currency", metavar="TARGET", help="CNY or HKD")
    set_rate.add_argument(
        "mid_rate", metavar="MID_RATE", type=_rate_text, help="target per one source unit, e.g. 0.9234"
    )
    set_rate.add_argument(
        "--spread-bps", type=_bounded_int(0, 10_000), default=0, help="taken off the mid rate (default 0)"
    )
    _add_json_flag(set_rate)
    rates = actions.add_parser("rates", help="the current rate of each pair, or every rate set")
    rates.add_argument("--history", action="store_true", help="every rate set, newest first")
    rates.add_argument(
        "--limit", type=_bounded_int(1, HISTORY_PAGE_MAX), default=HISTORY_PAGE_DEFAULT, help="with --history"
    )
    _add_json_flag(rates)


def _rate_text(text: str) -> Decimal:
    # A plain decimal, as the HTTP API takes it: no sign, exponent, NaN or Infinity.
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) or len(text) > 40:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate such as 0.9234")
    return Decimal(text)


def _add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (messages go to stderr)")


def _port(text: str) -> int:
    return _bounded_int(0, 65_535)(text)


def _bounded_int(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}")
        return value

    return parse


EXIT_FAILED = 3  # the command could not run: the database unreachable, a key file unreadable


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 the audit found the books differ, or a serving worker failed; 2 bad
    input (a malformed anchor or key, no key, a key that did not sign this chain, an unknown
    institution or wallet, an id taken with other fields); 3 the command could not run."""
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    # With --json, stdout carries the JSON alone: messages and errors go to stderr.
    console = Console(stderr=bool(getattr(args, "json", False)))
    try:
        return _run(args, settings, console)
    except ValueError as error:  # a malformed key or key file (base64 and length errors are ValueErrors)
        console.print(f"[red]{error}[/]")
        return 2
    except WalletError as error:  # not found, taken with other fields, refused as invalid
        console.print(f"[red]{error.code}: {error}[/]")
        return 2
    except (OSError, LedgerError, SQLAlchemyError) as error:
        console.print(f"[red]{type(error).__name__}: {error}[/]")
        return EXIT_FAILED


def _run(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    if args.command == "init":
        return asyncio.run(init(settings, console, args.operator_public_key))
    if args.command == "serve":
        return serve_command(settings, console, args.host, args.port, args.workers, reuse_port=args.reuse_port)
    if args.command == "institutions":
        return asyncio.run(_run_institutions(args, settings, console))
    if args.command == "wallets" and args.wallets_command == "show":
        return asyncio.run(wallets_show(settings, console, args.wallet_id, args.institution, as_json=args.json))
    if args.command == "fx":
        return asyncio.run(_run_fx(args, settings, console))
    if args.command == "settlement":
        if (code := _no_initialised_ledger(settings, console)) != 0:
            return code
        return asyncio.run(cli_settlement.run(args, settings, console))
    if args.command == "migrate":
        asyncio.run(migrate_only(settings, console))
        return 0
    if args.command == "demo":
        return asyncio.run(demo(settings, console, args.payments))
    if args.command == "audit" and args.audit_command == "verify":
        return asyncio.run(audit_verify(settings, console, args.public_key, args.anchor))
    if args.command == "audit" and args.audit_command == "head":
        return asyncio.run(audit_head(settings, console))
    if args.command == "console-login":
        return console_login(settings, console, args.url, args.operator, args.key_file)
    if args.command == "console-sign":
        return console_sign(settings, console, args.challenge, args.key_file)
    return 2


async def _run_institutions(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    if args.institutions_command == "add":
        return await institutions_add(
            settings, console, args.institution_id, args.kind, args.name, args.public_key, as_json=args.json
        )
    if args.institutions_command == "list":
        return await institutions_list(settings, console, as_json=args.json)
    if args.institutions_command == "rotate-key":
        return await institutions_rotate_key(
            settings, console, args.institution_id, args.public_key, args.retire, as_json=args.json
        )
    return 2


async def _run_fx(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    if args.fx_command == "set-rate":
        return await fx_set_rate(
            settings, console, args.source_currency, args.target_currency, args.mid_rate, args.spread_bps,
            as_json=args.json,
        )  # fmt: skip
    if args.fx_command == "rates":
        return await fx_rates(settings, console, history=args.history, limit=args.limit, as_json=args.json)
    return 2


if __name__ == "__main__":
    sys.exit(main())
