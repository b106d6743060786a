"""Settlement under real concurrency on PostgreSQL, over signed HTTP: fifty concurrent payments that
could jointly pass an institution's net debit cap cannot (in one server, and with two server
workers: separate processes, each with its own batcher); and payments arriving while the window
closes each land in exactly one batch, so the batches add up to every acknowledged payment."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
import pytest
from nacl.signing import SigningKey

from ledger import Batcher, Ledger
from ledger.db import create_engine
from ledger.keys import read_signing_key
from service.client import LedgerApiError, LedgerClient
from tests.conftest import assert_invariants
from tests.test_serve import initialised as initialised
from tests.test_serve import spawn as spawn
from wallets.model import InstitutionKind
from wallets.service import WalletBook

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])
PAYERS = 50
CAP_IN_FORCE = "1000.00"  # the liquidity prefunded: ten payments of 100.00
MERCHANT = {"name": "Tea House", "city": "Shenzhen", "category_code": "5812"}
KINDS = {
    "operator": InstitutionKind.OPERATOR,
    "hk-alpha": InstitutionKind.HK_PAYMENT_INSTITUTION,
    "sz-acq": InstitutionKind.SZ_ACQUIRER,
    "settlement-bank": InstitutionKind.SETTLEMENT_BANK,
}


@dataclass
class Corridor:
    operator: LedgerClient
    alpha: LedgerClient
    customers: list[str]
    merchant: str


async def _register(settings, keys: dict[str, SigningKey]) -> None:
    ledger = Ledger(create_engine(settings.database_url), read_signing_key(settings.signing_key_path))
    try:
        async with Batcher(ledger) as batcher:
            book = WalletBook(ledger, batcher)
            for slug, key in keys.items():
                await book.register_institution(slug, KINDS[slug], slug, bytes(key.verify_key))
    finally:
        await ledger.close()


async def _corridor(url: str, keys: dict[str, SigningKey], session: aiohttp.ClientSession, customers: int) -> Corridor:
    operator = LedgerClient(url, key_id="operator", signing_key=keys["operator"], session=session)
    alpha = LedgerClient(url, key_id="hk-alpha", signing_key=keys["hk-alpha"], session=session)
    acquirer = LedgerClient(url, key_id="sz-acq", signing_key=keys["sz-acq"], session=session)
    await operator.set_rate("HKD", "CNY", "0.9234", 50)
    await operator.prefund("hk-alpha", CAP_IN_FORCE)
    merchant = (await acquirer.create_wallet("shop-1", "CNY", owner_kind="merchant", merchant=MERCHANT))["id"]
    wallets = []
    for number in range(customers):
        wallet = await alpha.create_wallet(f"cust-{number}", "HKD", limit_profile="svf-verified")
        await alpha.deposit(wallet["id"], "100000.00")
        wallets.append(wallet["id"])
    return Corridor(operator, alpha, wallets, merchant)


async def _pay(payer: LedgerClient, customer: str, merchant: str, cny: str) -> dict | LedgerApiError:
    try:
        quote = await payer.quote("HKD", "CNY", target_amount=cny)
        return await payer.pay(customer, merchant, quote)
    except LedgerApiError as refusal:
        return refusal


async def _fifty_against_the_cap(url: str, keys: dict[str, SigningKey], session: aiohttp.ClientSession) -> None:
    corridor = await _corridor(url, keys, session, PAYERS)
    # Fresh connections per request, so that every server worker takes a share.
    connector = aiohttp.TCPConnector(force_close=True, limit=PAYERS)
    async with aiohttp.ClientSession(connector=connector) as spread:
        payer = LedgerClient(url, key_id="hk-alpha", signing_key=keys["hk-alpha"], session=spread)
        outcomes = await asyncio.gather(*(_pay(payer, c, corridor.merchant, "100.00") for c in corridor.customers))
    paid = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, LedgerApiError)]
    assert len(paid) == 10 and len(refused) == PAYERS - 10, outcomes[:3]
    assert {error.code for error in refused} == {"net_debit_cap_exceeded"}
    position = await corridor.operator.position("hk-alpha")
    assert (position["open_window_net"], position["cap_in_force"]) == ("-1000.00", CAP_IN_FORCE)
    # Nothing of a refused payment is left behind: every customer holds 100,000.00 less what it paid.
    paid_hkd = sum(Decimal(p["source_amount"]) for p in paid)
    held = [Decimal((await corridor.alpha.get_wallet(c))["balance"]["posted"]) for c in corridor.customers]
    assert sum(held) == Decimal("100000.00") * PAYERS - paid_hkd


async def _keys_and_server(initialised, spawn, *arguments: str):
    keys = {slug: SigningKey.generate() for slug in KINDS}
    await _register(initialised, keys)
    return keys, await spawn(initialised, *arguments)


async def _check_books(settings) -> None:
    ledger = Ledger(create_engine(settings.database_url), read_signing_key(settings.signing_key_path))
    try:
        await assert_invariants(ledger)
    finally:
        await ledger.close()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_fifty_concurrent_payments_cannot_jointly_pass_the_net_debit_cap(initialised, spawn, workers):
    keys, server = await _keys_and_server(initialised, spawn, "--workers", workers)
    async with aiohttp.ClientSession() as session:
        await server.wait_ready(session)
        await _fifty_against_the_cap(server.url, keys, session)
    assert await server.stop() == 0, server.output()
    await _check_books(initialised)


@pytest.mark.slow
async def test_payments_racing_a_close_each_land_in_exactly_one_batch_with_two_workers(initialised, spawn):
    keys, server = await _keys_and_server(initialised, spawn, "--workers", "2")
    async with aiohttp.ClientSession() as session:
        await server.wait_ready(session)
        corridor = await _corridor(server.url, keys, session, 8)
        await corridor.operator.prefund("hk-alpha", "100000.00")
        paid: list[dict] = []
        closed, forty_paid = asyncio.Event(), asyncio.Event()

        async def keep_paying(customer: str) -> None:
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as own:
                payer = LedgerClient(server.url, key_id="hk-alpha", signing_key=keys["hk-alpha"], session=own)
                after_close = 0
                while after_close < 5:
                    outcome = await _pay(payer, customer, corridor.merchant, "1.00")
                    assert isinstance(outcome, dict), outcome
                    paid.append(outcome)
                    if len(paid) >= 40:
                        forty_paid.set()
                    after_close += closed.is_set()

        async def close_while_paying() -> None:
            await forty_paid.wait()
            await corridor.operator.close_window(1)
            closed.set()

        await asyncio.gather(*(keep_paying(c) for c in corridor.customers), close_while_paying())
        await corridor.operator.close_window(2)
        per_window = Counter(p["settlement_window_id"] for p in paid)
        assert set(per_window) == {1, 2}
        for window_id, count in per_window.items():
            batch = await corridor.operator.batch(window_id)
            [gross] = [t["gross"] for t in batch["totals"]]
            assert Decimal(gross) == count  # every payment 1.00, each in exactly one batch
        stored = [await corridor.alpha.get_payment(p["id"]) for p in paid]
        assert [s["settlement_window_id"] for s in stored] == [p["settlement_window_id"] for p in paid]
    assert await server.stop() == 0, server.output()
    await _check_books(initialised)
