"""The operator console in a real browser: headless Debian Chromium (``/usr/bin/chromium``, which
``.ci/run`` installs when it is missing) driven by Playwright's Python package, against a real
``ledger serve`` process on a loopback port. Playwright's own browser download is never used.

Sign in with the link ``ledger console-login`` prints, read the open window's figures, close the
window through its button and the confirmation step, and keep a screenshot of each page."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from ledger import TransferCommand
from ledger.ids import uuid7
from service import cli
from service.config import Settings
from settlement.windows import WindowBook
from tests.test_serve import REPO_ROOT, quiet, spawn
from wallets.model import InstitutionKind

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


async def seed_open_window(settings: Settings) -> int:
    """Window 1 open with one obligation: hk-alphapay owes sz-bank 88.80 CNY."""
    async with cli.open_wallet_book(settings) as book:
        for institution_id, kind in (("hk-alphapay", InstitutionKind.HK_PAYMENT_INSTITUTION),
                                     ("sz-bank", InstitutionKind.SZ_ACQUIRER)):  # fmt: skip
            await book.register_institution(institution_id, kind, institution_id, bytes(32), actor="test")
        windows = WindowBook(book.ledger, book.ledger.clock)
        window = await windows.open_window()
        payer = await windows.position_for_payment(window, "hk-alphapay", None, actor="test")
        acquirer = await windows.position_for_payment(window, "sz-bank", None, actor="test")
        result = await book.batcher.submit(TransferCommand.posted(uuid7(), payer, acquirer, 8_880, "CNY"))
        assert result.code.value == "ok"
        return window.id


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


async def test_an_operator_signs_in_and_closes_a_window_in_the_browser(tmp_path, spawn):
    data_dir = tmp_path / "ledger-data"
    settings = Settings(data_dir=data_dir, database_url=f"sqlite+aiosqlite:///{data_dir / 'ledger.db'}")
    assert await cli.init(settings, quiet()) == 0  # writes operator.key, as on a real host
    window_id = await seed_open_window(settings)
    server = await spawn(settings)
    async with aiohttp.ClientSession() as session:
        await server.wait_ready(session)
    link = await console_login_url(settings, server.url)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = await browser.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            await page.goto(link)
            assert page.url == f"{server.url}/console/settlement"
            assert await page.text_content("#open-obligations") == "1"
            assert await page.text_content('td[data-currency="CNY"]') == "88.80"
            await page.screenshot(path=tmp_path / "settlement.png", full_page=True)

            await page.click("#close-window")
            assert page.url.endswith(f"/console/settlement/windows/{window_id}/close")
            await page.screenshot(path=tmp_path / "close-confirm.png", full_page=True)
            await page.click("#confirm-close")
            await page.wait_for_url(f"**/console/settlement/windows/{window_id}?closed=1")
            assert await page.text_content("#window-status") == "closed"
            assert "console:operator" in await page.text_content("#history")
            await page.screenshot(path=tmp_path / "window-closed.png", full_page=True)

            await page.goto(f"{server.url}/console/settlement")
            assert await page.get_attribute(f'tr[data-window="{window_id + 1}"] .status', "class") == (
                "status status-open"
            )
            # The link was used: a second browser without the session is refused.
            other = await browser.new_page()
            await other.goto(link)
            assert "used already" in await other.text_content("#refusal")
        finally:
            await browser.close()
    assert (tmp_path / "window-closed.png").stat().st_size > 0
    assert await server.stop() == 0, server.output()
