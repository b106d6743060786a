"""``ledger demo``: a small Shenzhen–Hong Kong corridor, run through the HTTP API as integrators would.

The data directory is initialised as ``ledger init`` does it (migrations, the ledger's signing key,
the operator with ``operator.key``), the app is started in this process on a free loopback port,
and every step after that is a signed request made with :class:`service.client.LedgerClient`:

- the operator registers a Hong Kong payment institution (``hk-alphapay``) and a Shenzhen acquirer
  (``sz-bank``), each with an Ed25519 key pair made for the demo and kept in the data directory as
  ``<id>.key`` (base64 seed, mode 0600), so that the user can sign requests of their own afterwards;
- ``hk-alphapay`` opens an e-CNY tier-4 personal wallet and an HKD ``svf-basic`` wallet and cashes
  money in; ``sz-bank`` opens a merchant wallet;
- the CNY wallet pays the merchant, retries the same payment (replayed), is refused above its tier's
  per-payment cap (``limit_exceeded``) and retries that (the same refusal, replayed), and a hotel-style
  hold is posted in part;
- balances and the merchant's statement are printed; then a day of the corridor
  (``service.demo_corridor``): rates, signed quotes, cross-border payments, a refund, a payment
  refused at its institution's net debit cap in force, the window closed, netted and settled, and
  the batch printed;
- a burst of ``--payments`` concurrent signed
  transfers (at most ``BURST_IN_FLIGHT_MAX`` in flight) measures throughput through the whole stack;
- the app drains (every acknowledged payment committed) and the audit chain is verified.

Running it again on the same data directory works: ids are new each run, and registering the same
institution with the same key answers the existing one.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from nacl.signing import SigningKey
from rich.console import Console
from rich.table import Table
from yarl import URL

from ledger.audit import verify_audit
from ledger.db import create_engine
from ledger.keys import load_or_create_signing_key, public_key_text, read_signing_key
from service import serve
from service.auth import sign_request
from service.client import (
    ConflictError,
    LedgerApiError,
    LedgerClient,
    RefusedError,
    encode_json_body,
    transfer_payload,
)
from service.config import Settings
from service.demo_corridor import corridor_day

HOST = "127.0.0.1"
OPERATOR_ID = "operator"
HK_ID = "hk-alphapay"
SZ_ID = "sz-bank"
INSTITUTIONS = (
    (HK_ID, "AlphaPay Hong Kong", "hk_payment_institution"),
    (SZ_ID, "Shenzhen Bank (merchant acquiring)", "sz_acquirer"),
)
MERCHANT = {"name": "Futian Dim Sum House", "city": "Shenzhen", "category_code": "5812"}  # 5812: restaurants
# The burst: requests in flight at most (aiohttp's default connection limit per session: more would
# only queue in the client; the more in flight, the larger the batcher's batches), and payer wallets
# (e-CNY tier 2) to spread it over.
BURST_IN_FLIGHT_MAX = 100
BURST_PAYERS_MAX = 200
BURST_PAYMENTS_PER_PAYER = 250
BURST_AMOUNT_MINOR_MAX = 2_000  # CNY 20.00
STATEMENT_LINES_SHOWN = 10
TRANSFER_LIQUIDITY_MINOR = 1_000_000  # CNY 10,000.00: the transfers before the burst


@dataclass
class Story:
    """The table of what happened, one row per request (or group of requests)."""

    table: Table

    @classmethod
    def new(cls) -> Story:
        table = Table(title="What happened (signed HTTP requests)")
        for column in ("who", "request", "answer"):
            table.add_column(column)
        return cls(table)

    def add(self, who: str, request: str, answer: str) -> None:
        self.table.add_row(who, request, answer)


def institution_key_path(settings: Settings, institution_id: str) -> Path:
    """Where the demo keeps an institution's private seed (as ``operator.key`` for the operator)."""
    return settings.data_dir / f"{institution_id}.key"


async def run(settings: Settings, console: Console, payments: int) -> int:
    """``ledger demo``. 0 when every step answered as expected and the audit chain verifies."""
    from service import cli  # cli imports this module when the command runs; not the other way round

    if (code := await cli.init(settings, console)) != 0:
        return code
    operator_path = cli.operator_key_path(settings)
    if not operator_path.exists():
        console.print(
            f"[red]the operator's private key is not in {operator_path} (registered with "
            "--operator-public-key): the demo signs as the operator, so it needs that key there[/]"
        )
        return 2
    operator_key = read_signing_key(operator_path)
    runner, _site = await serve.start(serve.build_app(settings), HOST, 0)
    try:
        base_url = serve.bound_url(runner, HOST)
        console.print(f"API started in this process at [bold]{base_url}[/] (stopped when the demo ends)")
        code = await _corridor(settings, console, base_url, operator_key, payments)
    finally:
        # Every acknowledged request is committed before the chain is verified.
        await serve.drain(runner)
    if code != 0:
        return code
    return await _verify(settings, console)


async def _corridor(
    settings: Settings, console: Console, base_url: str, operator_key: SigningKey, payments: int
) -> int:
    story = Story.new()
    async with LedgerClient(base_url, key_id=OPERATOR_ID, signing_key=operator_key) as operator:
        keys: dict[str, SigningKey] = {}
        for institution_id, name, kind in INSTITUTIONS:
            path = institution_key_path(settings, institution_id)
            key, created = load_or_create_signing_key(path)
            keys[institution_id] = key
            payload = {"id": institution_id, "name": name, "kind": kind, "public_key": public_key_text(key.verify_key)}
            try:
                answer = await operator.post("/v1/institutions", payload)
            except ConflictError:
                console.print(
                    f"[red]{institution_id!r} is registered with another key than the one in {path}: "
                    f"restore that file, or point LEDGER_DATA_DIR at a fresh directory[/]"
                )
                return 2
            registered = "already registered (200, Idempotent-Replayed)" if answer.replayed else "registered (201)"
            story.add("operator", f"POST /v1/institutions {institution_id} ({kind})", registered)
            verb = "created" if created else "kept"
            console.print(f"key of {institution_id!r} {verb}: {path} (keyid {institution_id!r})")
        async with (
            LedgerClient(base_url, key_id=HK_ID, signing_key=keys[HK_ID]) as hk,
            LedgerClient(base_url, key_id=SZ_ID, signing_key=keys[SZ_ID]) as sz,
        ):
            # A transfer to sz-bank's merchant records hk-alphapay's obligation to sz-bank under its
            # net debit cap in force, which its settlement liquidity bounds: the operator prefunds it.
            await operator.prefund(HK_ID, _cny(TRANSFER_LIQUIDITY_MINOR + payments * BURST_AMOUNT_MINOR_MAX))
            story.add("operator", f"POST /v1/institutions/{HK_ID}/liquidity (CNY)", "201: settlement liquidity")
            wallets = await _open_wallets(hk, sz, story)
            await _payments(hk, keys[HK_ID], wallets, story)
            console.print(story.table)
            await _print_balances(hk, sz, wallets, console)
            await _print_statement(sz, wallets["merchant"], console)

            def key_for(institution_id: str) -> SigningKey:
                return load_or_create_signing_key(institution_key_path(settings, institution_id))[0]

            day = await corridor_day(base_url, operator, hk, sz, wallets["merchant"], key_for, console)
            if day != 0:
                return day
            if payments > 0:
                if (code := await _burst(hk, sz, wallets["merchant"], payments, console)) != 0:
                    return code
            head = await operator.audit_head()
            console.print(f"audit head from GET /v1/audit/head: block {head['sequence']}, hash {head['hash']}")
    _print_key_hint(settings, console, wallets["cny"])
    return 0


async def _open_wallets(hk: LedgerClient, sz: LedgerClient, story: Story) -> dict[str, str]:
    cny = await hk.create_wallet("hk-cust-0001", "CNY", tier=4)
    story.add(HK_ID, "POST /v1/wallets CNY person, e-CNY tier 4", _wallet_summary(cny))
    hkd = await hk.create_wallet("hk-cust-0001", "HKD", limit_profile="svf-basic")
    story.add(HK_ID, "POST /v1/wallets HKD person, svf-basic", _wallet_summary(hkd))
    merchant = await sz.create_wallet("sz-mch-futian-001", "CNY", owner_kind="merchant", merchant=MERCHANT)
    story.add(SZ_ID, f"POST /v1/wallets CNY merchant {MERCHANT['name']}", _wallet_summary(merchant))
    for wallet, amount in ((cny, "3000.00"), (hkd, "800.00")):
        deposit = await hk.deposit(wallet["id"], amount)
        story.add(HK_ID, f"POST /v1/wallets/…/deposits {amount} {wallet['currency']}", f"201 {deposit['status']}")
    return {"cny": cny["id"], "hkd": hkd["id"], "merchant": merchant["id"]}


def _wallet_summary(wallet: Mapping[str, Any]) -> str:
    caps = wallet["limits"]
    shown = ", ".join(
        f"{name.replace('_', ' ')} {caps[name]}"
        for name in ("transfer_cap", "daily_debit_cap", "balance_cap")
        if caps.get(name) is not None
    )
    return f"201 {wallet['limit_profile']}{': ' + shown if shown else ''}"


async def _payments(hk: LedgerClient, hk_key: SigningKey, wallets: Mapping[str, str], story: Story) -> None:
    lunch = transfer_payload(wallets["cny"], wallets["merchant"], "128.50", "CNY", metadata={"order": "8841"})
    first = await hk.post("/v1/transfers", lunch)
    story.add(HK_ID, "POST /v1/transfers 128.50 CNY to the merchant", f"{first.status} {first.data['status']}")
    again = await hk.post("/v1/transfers", lunch)
    same = "the same transfer" if again.data == first.data else "[red]a different body[/]"
    story.add(
        HK_ID,
        "the same request again (same id and body)",
        f"{again.status}, Idempotent-Replayed: {str(again.replayed).lower()}, {same}",
    )

    too_much = transfer_payload(wallets["cny"], wallets["merchant"], "2500.00", "CNY")
    try:
        await hk.post("/v1/transfers", too_much)
        story.add(HK_ID, "POST /v1/transfers 2,500.00 CNY (tier 4 cap: 2,000.00)", "[red]accepted[/]")
    except RefusedError as refusal:
        story.add(HK_ID, "POST /v1/transfers 2,500.00 CNY (tier 4 cap: 2,000.00)", f"{refusal.status} {refusal.code}")
        # LedgerClient raises on a problem without its headers, so the retry is sent by hand to show them.
        status, headers, problem = await _signed_post(hk.base_url, HK_ID, hk_key, "/v1/transfers", too_much)
        replayed = headers.get("Idempotent-Replayed", "absent")
        same = "the same problem" if problem == refusal.problem else "[red]another problem[/]"
        answer = f"{status} {problem.get('code')}, Idempotent-Replayed: {replayed}, {same}"
        story.add(HK_ID, "the refused request again", answer)

    hold = await hk.transfer(wallets["cny"], wallets["merchant"], "1000.00", "CNY", pending=True)
    story.add(
        HK_ID,
        "hotel check-in: hold 1,000.00 CNY (pending, default timeout)",
        f"201 {hold['status']}, {hold['timeout_seconds']} s, expires {hold['expires_at']}",
    )
    posted = await hk.post_transfer(hold["id"], "860.00")
    story.add(HK_ID, "check-out: POST /v1/transfers/{id}/post 860.00", f"{posted['status']}, 140.00 released")


async def _signed_post(
    base_url: str, key_id: str, key: SigningKey, path: str, payload: Any
) -> tuple[int, Mapping[str, str], dict]:
    """One signed POST answered as it is (status, headers, JSON), errors included."""
    body = encode_json_body(payload)
    url = base_url + path
    headers = {"Content-Type": "application/json"}
    headers |= sign_request("POST", url, body, key_id=key_id, signing_key=key)
    async with (
        aiohttp.ClientSession() as session,
        session.post(URL(url, encoded=True), data=body, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.json(content_type=None)


async def _print_balances(hk: LedgerClient, sz: LedgerClient, wallets: Mapping[str, str], console: Console) -> None:
    table = Table(title="Balances (GET /v1/wallets/{id}, each by its own institution)")
    for column, justify in (
        ("wallet", "left"),
        ("institution", "left"),
        ("profile", "left"),
        ("currency", "left"),
        ("posted", "right"),
        ("held", "right"),
        ("available", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for label, key, client in (
        ("e-CNY personal", "cny", hk),
        ("HKD personal", "hkd", hk),
        (f"merchant: {MERCHANT['name']}", "merchant", sz),
    ):
        wallet = await client.get_wallet(wallets[key])
        balance = wallet["balance"]
        table.add_row(
            label,
            wallet["institution_id"],
            wallet["limit_profile"],
            wallet["currency"],
            balance["posted"],
            balance["pending_debits"],
            balance["available"],
        )
    console.print(table)


async def _print_statement(sz: LedgerClient, merchant_id: str, console: Console) -> None:
    page = await sz.statement(merchant_id, limit=STATEMENT_LINES_SHOWN)
    table = Table(title=f"Statement of the merchant wallet (GET /v1/wallets/{merchant_id}/transfers, newest first)")
    for column, justify in (
        ("time", "left"),
        ("kind", "left"),
        ("status", "left"),
        ("side", "left"),
        ("amount", "right"),
        ("posted after", "right"),
        ("incoming holds after", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for line in page["items"]:
        after = line["balance_after"]
        table.add_row(
            line["created_at"],
            line["kind"],
            line["status"],
            line["side"],
            line["amount"],
            after["posted"],
            after["pending_credits"],
        )
    console.print(table)


async def _burst(hk: LedgerClient, sz: LedgerClient, merchant_id: str, payments: int, console: Console) -> int:
    """``payments`` signed transfers from HK e-CNY wallets into the merchant, at most
    ``BURST_IN_FLIGHT_MAX`` in flight; each payer is funded with exactly what it will pay."""
    rng = random.Random(2026)
    payer_count = min(BURST_PAYERS_MAX, max(1, math.ceil(payments / BURST_PAYMENTS_PER_PAYER)))
    amounts = [rng.randint(1, BURST_AMOUNT_MINOR_MAX) for _ in range(payments)]
    owed = [0] * payer_count
    for index, amount in enumerate(amounts):
        owed[index % payer_count] += amount
    payers = []
    for number, total in enumerate(owed):
        wallet = await hk.create_wallet(f"hk-burst-{number:03d}", "CNY", tier=2)
        await hk.deposit(wallet["id"], _cny(total))
        payers.append(wallet["id"])
    wallets_text = f"{payer_count} e-CNY tier-2 wallet{'s' if payer_count != 1 else ''}"
    console.print(
        f"burst: {payments:,} signed POST /v1/transfers from {wallets_text} into the merchant, "
        f"at most {BURST_IN_FLIGHT_MAX} in flight…"
    )
    before = (await sz.get_wallet(merchant_id))["balance"]["posted"]
    in_flight = asyncio.Semaphore(BURST_IN_FLIGHT_MAX)
    problems: dict[str, int] = {}

    async def pay(index: int) -> bool:
        async with in_flight:
            try:
                await hk.transfer(payers[index % payer_count], merchant_id, _cny(amounts[index]), "CNY")
                return True
            except LedgerApiError as error:
                problems[error.code] = problems.get(error.code, 0) + 1
                return False

    started = time.perf_counter()
    results = await asyncio.gather(*(pay(index) for index in range(payments)))
    elapsed = time.perf_counter() - started
    after = (await sz.get_wallet(merchant_id))["balance"]["posted"]
    ok = sum(results)
    console.print(
        f"burst: {ok:,} posted in {elapsed:.2f} s "
        f"([bold]{payments / elapsed:,.0f} requests/s[/] through signing, HTTP, the wallets layer and group commit); "
        f"merchant posted balance {before} → {after} CNY"
    )
    if problems:
        console.print(f"[red]burst refusals: {problems}[/]")
        return 1
    return 0


def _cny(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


async def _verify(settings: Settings, console: Console) -> int:
    engine = create_engine(settings.database_url)
    try:
        report = await verify_audit(engine, read_signing_key(settings.signing_key_path).verify_key)
    finally:
        await engine.dispose()
    if report.ok:
        console.print(
            f"[green]audit chain verified[/]: {report.blocks_checked} signed blocks, "
            f"{report.transfers_checked} transfers, {report.accounts_checked} accounts"
        )
        return 0
    console.print(f"[red]audit verification failed[/]: {report.problems}")
    return 1


def _print_key_hint(settings: Settings, console: Console, wallet_id: str) -> None:
    paths = ", ".join(
        f"{institution_key_path(settings, institution_id)} (keyid {institution_id})"
        for institution_id in (OPERATOR_ID, HK_ID, SZ_ID)
    )
    hk_key = institution_key_path(settings, HK_ID)
    url = f"http://{HOST}:{serve.PORT_DEFAULT}/v1/wallets/{wallet_id}"
    console.print(
        f"The private keys stay in the data directory, to sign your own requests: {paths}. "
        f"Try, with `ledger serve` running:\n"
        f'  eval "curl -s {url} $(python -m service.sign GET {url} --key-id {HK_ID} --key-file {hk_key})"',
        soft_wrap=True,
    )
