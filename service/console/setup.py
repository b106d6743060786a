"""Mounting the console on the app: templates (Jinja2, autoescaped), the one CSS file, the routes,
the security headers of every console response, and a cleanup context for its resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from service.console import batches, routes
from service.console.audit_runs import AuditRuns
from service.console.auth import ConsoleAuth
from service.console.state import CONSOLE_KEY, CONSOLE_PATH_PREFIX, Console
from service.keys import LEDGER_KEY, WALLETS_KEY
from settlement.windows import WindowBook

HERE = Path(__file__).resolve().parent
# No script, no asset from elsewhere, no framing; the login link's token must not leak in a
# Referer; pages hold live money figures, so no cache keeps them.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def setup_console(app: web.Application) -> None:
    """Mount the console under ``/console``; its resources are made after the wallets layer's
    (the cleanup context must come after ``service.app``'s own)."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        filters={"when": routes.timestamp},
    )
    app.router.add_routes(routes.routes)
    app.router.add_routes(batches.routes)
    app.router.add_static(f"{CONSOLE_PATH_PREFIX}/static", HERE / "static", name="console_static")
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(_console_context)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == CONSOLE_PATH_PREFIX or request.path.startswith(CONSOLE_PATH_PREFIX + "/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)


async def _console_context(app: web.Application) -> AsyncIterator[None]:
    ledger = app[LEDGER_KEY]
    audit_runs = AuditRuns(ledger, ledger.clock)
    app[CONSOLE_KEY] = Console(
        ConsoleAuth(ledger.engine, app[WALLETS_KEY], ledger.clock), WindowBook(ledger, ledger.clock), audit_runs
    )
    try:
        yield
    finally:
        await audit_runs.close()  # a verification still going is recorded as interrupted
