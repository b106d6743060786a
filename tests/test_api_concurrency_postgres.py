"""No double spend over HTTP, proven on PostgreSQL with real concurrency: 100 concurrent signed
transfers from one wallet that can afford 10 give exactly 10 successes, in one server process and
with two server workers sharing one port (separate processes, each with its own batcher)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from nacl.signing import SigningKey

from ledger import Batcher, Ledger
from ledger.db import create_engine
from ledger.ids import uuid7
from ledger.keys import read_signing_key
from service.client import LedgerClient, RefusedError
from settlement.liquidity import LiquidityDesk
from settlement.windows import WindowBook
from tests.api_support import Api
from tests.api_support import api as api
from tests.conftest import assert_invariants
from tests.test_serve import initialised as initialised
from tests.test_serve import spawn as spawn
from wallets.model import InstitutionKind
from wallets.service import WalletBook

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])
SPENDERS = 100
AFFORDABLE = 10


async def test_a_hundred_concurrent_signed_transfers_from_a_wallet_that_affords_ten_let_ten_through(api: Api):
    alpha = await api.institution("hk-alphapay")
    acquirer = await api.institution("sz-bank", "sz_acquirer")
    wallet = (await api.wallet(alpha, tier=1))["id"]
    shop = (await api.wallet(acquirer, owner_kind="merchant", merchant=MERCHANT))["id"]
    await api.deposit(alpha, wallet, "10.00")

    answers = await asyncio.gather(*(api.transfer(alpha, wallet, shop, "1.00") for _ in range(SPENDERS)))

    statuses = sorted(answer.status for answer in answers)
    assert statuses.count(201) == AFFORDABLE and statuses.count(422) == SPENDERS - AFFORDABLE, statuses
    assert {answer.code for answer in answers if answer.status == 422} == {"insufficient_funds"}
    assert (await api.balance(alpha, wallet))["posted"] == "0.00"
    assert (await api.balance(acquirer, shop))["posted"] == "10.00"


MERCHANT = {"name": "Tea House", "city": "Shenzhen", "category_code": "5812"}


@pytest.mark.slow
async def test_the_same_with_two_server_workers_sharing_one_port(initialised, spawn):
    alpha_key, acquirer_key = SigningKey.generate(), SigningKey.generate()
    await register(initialised, {"hk-alphapay": alpha_key, "sz-bank": acquirer_key})
    server = await spawn(initialised, "--workers", "2")
    async with aiohttp.ClientSession() as session:
        await server.wait_ready(session)
        alpha = LedgerClient(server.url, key_id="hk-alphapay", signing_key=alpha_key, session=session)
        acquirer = LedgerClient(server.url, key_id="sz-bank", signing_key=acquirer_key, session=session)
        wallet = (await alpha.create_wallet("cust-1", "CNY", tier=1))["id"]
        shop = (await acquirer.create_wallet("shop-1", "CNY", owner_kind="merchant", merchant=MERCHANT))["id"]
        await alpha.deposit(wallet, "10.00")
        # Fresh connections per request, so that the two workers both take a share.
        connector = aiohttp.TCPConnector(force_close=True, limit=SPENDERS)
        async with aiohttp.ClientSession(connector=connector) as spread:
            spender = LedgerClient(server.url, key_id="hk-alphapay", signing_key=alpha_key, session=spread)
            outcomes = await asyncio.gather(
                *(spender.transfer(wallet, shop, "1.00", "CNY") for _ in range(SPENDERS)), return_exceptions=True
            )
        succeeded = [o for o in outcomes if isinstance(o, dict)]
        refused = [o for o in outcomes if isinstance(o, RefusedError)]
        assert len(succeeded) == AFFORDABLE and len(refused) == SPENDERS - AFFORDABLE, outcomes[:5]
        assert {error.code for error in refused} == {"insufficient_funds"}
        assert (await acquirer.get_wallet(shop))["balance"]["posted"] == "10.00"
    assert await server.stop() == 0, server.output()
    ledger = Ledger(create_engine(initialised.database_url), read_signing_key(initialised.signing_key_path))
    try:
        await assert_invariants(ledger)
    finally:
        await ledger.close()


async def register(settings, keys: dict[str, SigningKey]) -> None:
    """Institutions registered on the host, as `ledger institutions add` does, with the ledger's key."""
    ledger = Ledger(create_engine(settings.database_url), read_signing_key(settings.signing_key_path))
    try:
        async with Batcher(ledger) as batcher:
            book = WalletBook(ledger, batcher)
            liquidity = LiquidityDesk(ledger, batcher, book, WindowBook(ledger, ledger.clock), ledger.clock)
            for slug, key in keys.items():
                kind = InstitutionKind.HK_PAYMENT_INSTITUTION if slug.startswith("hk") else InstitutionKind.SZ_ACQUIRER
                await book.register_institution(slug, kind, slug, bytes(key.verify_key))
                # A transfer to another institution's wallet records an obligation under the payer's
                # net debit cap in force, which liquidity bounds: plenty, so only funds can refuse.
                assert (await liquidity.prefund(slug, uuid7(), 10**11, "CNY", actor="test")).ok
    finally:
        await ledger.close()
