"""The operator console in a real browser: headless Debian Chromium (``/usr/bin/chromium``, which
``.ci/run`` installs when it is missing) driven by Playwright's Python package, against a real
``ledger serve`` process on a loopback port. Playwright's own browser download is never used.

The settlement day: payments over the signed API (a settlement bank and prefunded liquidity), sign
in with the link ``ledger console-login`` prints, read the open window's figures, close the window
through its button and the confirmation step, read the batch's figures on the page against ``GET
/v1/settlement/batches/1``, settle through the buttons, export the report, and keep screenshots
(the batch page's also as ``docs/console-batch.png``, which the README shows, when
``LEDGER_UPDATE_SCREENSHOT=1``: otherwise every run would change a committed file)."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path

import aiohttp
import pytest
from nacl.signing import SigningKey

from ledger.ids import uuid7
from ledger.keys import read_signing_key
from service import cli
from service.client import LedgerClient
from service.config import Settings
from tests.test_serve import REPO_ROOT, quiet, spawn

__all__ = ["spawn"]

CHROMIUM = Path("/usr/bin/chromium")
try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - the test extras install it
    async_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        async_playwright is None, reason="the playwright package is not installed (pip install -e '.[test]')"
    ),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"no {CHROMIUM}: `apt-get install chromium` (.ci/run does it when it is missing)"
    ),
]
PAGE_TIMEOUT_MS = 15_000
SCREENSHOT = REPO_ROOT / "docs" / "console-batch.png"


async def seed_corridor(url: str, operator_key: SigningKey) -> None:
    """Through the signed API of the running server, as institutions would: a rate, two Hong Kong
    payers with prefunded liquidity, an acquirer, the settlement bank; then payments and a refund in
    window 1 (hk-alpha owes 300.00 and is owed back 100.00, hk-beta owes 200.00)."""
    keys = {slug: SigningKey.generate() for slug in ("hk-alpha", "hk-beta", "sz-acq", "settlement-bank")}
    async with LedgerClient(url, key_id="operator", signing_key=operator_key, retries_max=0) as operator:
        await operator.set_rate("HKD", "CNY", "0.9234", 50)
        for slug, kind in (("hk-alpha", "hk_payment_institution"), ("hk-beta", "hk_payment_institution"),
                           ("sz-acq", "sz_acquirer"), ("settlement-bank", "settlement_bank")):  # fmt: skip
            public_key = base64.b64encode(bytes(keys[slug].verify_key)).decode()
            await operator.create_institution(slug, slug, kind, public_key)
        for slug in ("hk-alpha", "hk-beta"):
            liquidity = {"id": str(uuid7()), "amount": "5000.00", "currency": "CNY"}
            await operator.post(f"/v1/institutions/{slug}/liquidity", liquidity)
    clients = {slug: LedgerClient(url, key_id=slug, signing_key=key, retries_max=0) for slug, key in keys.items()}
    try:
        merchant = await clients["sz-acq"].create_wallet(
            "tea-house", "CNY", owner_kind="merchant",
            merchant={"name": "Tea", "city": "Shenzhen", "category_code": "5812"},
        )  # fmt: skip
        for slug, amounts in (("hk-alpha", ("300.00",)), ("hk-beta", ("120.00", "80.00"))):
            client = clients[slug]
            customer = await client.create_wallet(f"{slug}-customer", "HKD", limit_profile="svf-verified")
            await client.deposit(customer["id"], "10000.00")
            for amount in amounts:
                quote = await client.quote("HKD", "CNY", target_amount=amount)
                payment = {
                    "id": str(uuid7()), "payer_wallet_id": customer["id"], "merchant_wallet_id": merchant["id"],
                    "amount": amount, "currency": "CNY", "quote_id": quote["id"],
                }  # fmt: skip
                paid = (await client.post("/v1/payments", payment)).data
            if slug == "hk-alpha":
                await client.post(f"/v1/payments/{paid['id']}/refunds", {"id": str(uuid7()), "amount": "100.00"})
    finally:
        for client in clients.values():
            await client.close()


async def console_login_url(settings: Settings, base_url: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "console-login", "--url", base_url,
        env={**os.environ, "LEDGER_DATA_DIR": str(settings.data_dir), "LEDGER_DATABASE_URL": settings.database_url,
             "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, errors = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, errors.decode()
    return output.decode().strip()


async def figures_on_the_page(page) -> dict:
    """What the batch page shows, read from the page itself."""
    totals = {}
    for row in await page.query_selector_all("#totals tbody tr[data-currency]"):
        currency = await row.get_attribute("data-currency")
        totals[currency] = {
            name: (await (await row.query_selector(f"td.{cls}")).text_content()).strip()
            for name, cls in (("gross", "gross"), ("net", "net"), ("liquidity_saved", "saved"),
                              ("liquidity_saving_ratio", "ratio"))
        }  # fmt: skip
    positions = set()
    for row in await page.query_selector_all("#positions tbody tr"):
        net = (await (await row.query_selector("td.net")).text_content()).strip()
        direction = (await (await row.query_selector("td.direction")).text_content()).strip()
        positions.add((await row.get_attribute("data-institution"), net, direction))
    instructions = len(await page.query_selector_all("#instructions tbody tr"))
    return {"totals": totals, "positions": positions, "instructions": instructions,
            "signature": (await page.text_content("#signature")).strip()}  # fmt: skip


def figures_of_the_api(batch: dict) -> dict:
    return {
        "totals": {t["currency"]: {k: v for k, v in t.items() if k != "currency"} for t in batch["totals"]},
        "positions": {(p["institution_id"], p["net_amount"], p["direction"]) for p in batch["positions"]},
        "instructions": len(batch["instructions"]),
        "signature": batch["signature"],
    }


async def test_an_operator_runs_the_settlement_day_in_the_browser(tmp_path, spawn):
    data_dir = tmp_path / "ledger-data"
    settings = Settings(data_dir=data_dir, database_url=f"sqlite+aiosqlite:///{data_dir / 'ledger.db'}")
    assert await cli.init(settings, quiet()) == 0  # writes operator.key, as on a real host
    operator_key = read_signing_key(cli.operator_key_path(settings))
    server = await spawn(settings)
    async with aiohttp.ClientSession() as session:
        await server.wait_ready(session)
    await seed_corridor(server.url, operator_key)
    link = await console_login_url(settings, server.url)
    operator = LedgerClient(server.url, key_id="operator", signing_key=operator_key, retries_max=0)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            await page.goto(link)
            assert page.url == f"{server.url}/console/settlement"
            assert await page.text_content("#open-obligations") == "4"  # three payments and a refund
            assert await page.text_content('td[data-currency="CNY"]') == "600.00"
            await page.screenshot(path=tmp_path / "settlement.png", full_page=True)

            # Close the window through its button and the confirmation step: it lands on the batch.
            await page.click("#close-window")
            assert page.url.endswith("/console/settlement/windows/1/close")
            await page.click("#confirm-close")
            await page.wait_for_url("**/console/settlement/batches/1?done=closed")
            assert await page.text_content("#batch-status") == "closed"
            batch = (await operator.get("/v1/settlement/batches/1")).data
            assert await figures_on_the_page(page) == figures_of_the_api(batch)
            assert figures_of_the_api(batch)["totals"]["CNY"]["liquidity_saved"] == "200.00"

            # Settle through the button and the confirmation step.
            await page.click("#settle")
            assert page.url.endswith("/console/settlement/batches/1/settle")
            assert "funded" in await page.text_content("#shortfalls")
            await page.click("#confirm-settle")
            await page.wait_for_url("**/console/settlement/batches/1?done=settled")
            assert await page.text_content("#batch-status") == "settled"
            settled = (await operator.get("/v1/settlement/batches/1")).data
            assert settled["status"] == "settled" and settled["history"][-1]["actor"] == "console:operator"
            assert await figures_on_the_page(page) == figures_of_the_api(settled)
            await page.screenshot(path=tmp_path / "batch.png", full_page=True)
            if os.environ.get("LEDGER_UPDATE_SCREENSHOT"):  # the README shows it; refreshed on demand only
                await page.screenshot(path=SCREENSHOT, full_page=True)

            # The export is the API's report, byte for byte.
            await page.click("#export-json")  # the confirmation step, then the download
            assert await page.text_content("#export-signature") == settled["signature"]
            async with page.expect_download() as download_info:
                await page.click("#confirm-export")
            download = await download_info.value
            exported = await asyncio.to_thread(Path(await download.path()).read_bytes)
            assert exported == (await operator.get("/v1/settlement/batches/1/report")).content

            # The link was used: a second browser without the session is refused.
            other = await browser.new_page()
            await other.goto(link)
            assert "used already" in await other.text_content("#refusal")
        finally:
            await browser.close()
            await operator.close()
    assert (tmp_path / "batch.png").stat().st_size > 0
    assert await server.stop() == 0, server.output()
