"""The one factory of the HTTP application; ``ledger serve`` runs it and the tests build with it.

Resources live in cleanup contexts and typed ``web.AppKey``s (``service.keys``), never in globals:
the ledger (its engine is disposed on shutdown), the batcher (closed on shutdown, which
finishes every queued batch first), the wallets layer over both, and the FX desk (rates and
quotes). A resource passed in by the caller is the caller's to close; the app closes only what it
made.

Requests are verified, by default, against the institutions' registered keys (the wallets layer's
``active_keys``, cached for a few seconds: see ``service.key_resolver``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from enum import Enum
from importlib import metadata
from typing import Final

from aiohttp import web

from ledger import Batcher, Ledger
from ledger.db import create_engine
from ledger.errors import LedgerShuttingDown
from ledger.keys import read_signing_key
from service.auth import verify_aiohttp_request
from service.config import Settings
from service.console.setup import setup_console
from service.handlers import BODY_SIZE_MAX_BYTES_DEFAULT
from service.key_resolver import InstitutionKeyResolver
from service.keys import (
    AUTHENTICATOR_KEY,
    BATCHER_KEY,
    BODY_SIZE_MAX_KEY,
    KEY_RESOLVER_KEY,
    LEDGER_KEY,
    METRICS_KEY,
    QUOTES_KEY,
    RATES_KEY,
    SETTINGS_KEY,
    SETTLEMENT_KEY,
    WALLETS_KEY,
    Authenticator,
    VerifiedCaller,
)
from service.metrics import ServiceMetrics
from service.middlewares import MIDDLEWARES, error_middleware
from service.openapi import DOCS_SPECS, SIGNED_PATH_PREFIX, RouteTable, add_docs_routes, add_routes, build_openapi
from service.problems import ProblemError
from service.routes import ROUTE_TABLES
from settlement.desks import Settlement
from settlement.quotes import QuoteDesk
from settlement.rates import RateBook
from wallets.service import WalletBook

API_TITLE = "Shenzhen–Hong Kong payment ledger"
# Refused once draining: new money movements, and readiness (so that a load balancer stops sending).
READINESS_PATH = "/readyz"


class DrainState:
    """Whether this app stopped taking new work. Mutable in place: an app's state may not be
    reassigned once it started.

    Once :func:`begin_drain` ran (``ledger serve`` calls it on SIGTERM, and the app's own
    ``on_shutdown`` hook for any other runner), new ``/v1/`` requests and readiness probes answer
    503 ``shutting_down`` with ``Retry-After``, while requests already past the middleware finish;
    aiohttp's runner waits for them before the cleanup contexts close the batcher (which commits
    what is queued) and the ledger."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False


DRAIN_KEY = web.AppKey("drain", DrainState)


class _DefaultAuthenticator(Enum):
    INSTITUTION_KEYS = "institution keys"


# create_app's default: verify signatures against the institutions' registered keys.
INSTITUTION_KEYS: Final = _DefaultAuthenticator.INSTITUTION_KEYS


def create_app(
    settings: Settings,
    *,
    ledger: Ledger | None = None,
    batcher: Batcher | None = None,
    authenticator: Authenticator | _DefaultAuthenticator | None = INSTITUTION_KEYS,
    route_tables: Sequence[RouteTable] = (),
    body_size_max_bytes: int = BODY_SIZE_MAX_BYTES_DEFAULT,
) -> web.Application:
    """Build the application.

    ``ledger``/``batcher``: use these instead of opening the settings' database (the caller closes
    them). ``authenticator`` verifies every ``/v1/`` request: by default RFC 9421 signatures against
    the institutions' active keys (``INSTITUTION_KEYS``); with None, every ``/v1/`` request is
    refused (503 ``unavailable``): a server that cannot check signatures must not move money.
    ``route_tables`` are mounted after the service's own (``service.routes.ROUTE_TABLES``).
    """
    if body_size_max_bytes < 1:
        raise ValueError("body_size_max_bytes must be positive")
    # client_max_size bounds aiohttp's own request.read()/json()/post() too, should a handler use them.
    app = web.Application(middlewares=_with_drain_middleware(MIDDLEWARES), client_max_size=body_size_max_bytes)
    app[SETTINGS_KEY] = settings
    app[DRAIN_KEY] = DrainState()
    app.on_shutdown.append(_drain_on_shutdown)
    app[BODY_SIZE_MAX_KEY] = body_size_max_bytes
    key_resolver = InstitutionKeyResolver()
    app[KEY_RESOLVER_KEY] = key_resolver
    if authenticator is INSTITUTION_KEYS:
        app[AUTHENTICATOR_KEY] = functools.partial(verify_aiohttp_request, resolve_keys=key_resolver)
    elif authenticator is None:
        app[AUTHENTICATOR_KEY] = refuse_unauthenticated
    else:
        app[AUTHENTICATOR_KEY] = authenticator
    metrics = ServiceMetrics(lambda: app.get(BATCHER_KEY))
    app[METRICS_KEY] = metrics
    app.cleanup_ctx.append(_ledger_context(settings, ledger))
    app.cleanup_ctx.append(_batcher_context(batcher, metrics))
    app.cleanup_ctx.append(_wallets_context)
    app.cleanup_ctx.append(_fx_context)
    app.cleanup_ctx.append(_settlement_context)
    setup_console(app)  # /console: operator pages with their own cookie sessions (not /v1 signatures)
    specs = [spec for table in (*ROUTE_TABLES, *route_tables) for spec in table.specs]
    add_routes(app, specs)
    add_docs_routes(app, build_openapi([*specs, *DOCS_SPECS], title=API_TITLE, version=_version()))
    return app


async def refuse_unauthenticated(_request: web.Request, _body: bytes) -> VerifiedCaller:
    """The authenticator of an app built without one: fail closed."""
    raise ProblemError("unavailable", "this server has no request authenticator configured", 503)


def begin_drain(app: web.Application) -> None:
    """Stop taking new ``/v1/`` requests (503 ``shutting_down``); requests in flight carry on."""
    app[DRAIN_KEY].draining = True


def is_draining(app: web.Application) -> bool:
    return app[DRAIN_KEY].draining


async def _drain_on_shutdown(app: web.Application) -> None:
    begin_drain(app)


@web.middleware
async def drain_middleware(request: web.Request, handler) -> web.StreamResponse:
    if request.app[DRAIN_KEY].draining and (
        request.path.startswith(SIGNED_PATH_PREFIX) or request.path == READINESS_PATH
    ):
        # The batcher's own refusal, so that the answer is the same problem (503 with Retry-After)
        # whether the request met the drain here or at the batcher.
        raise LedgerShuttingDown("this instance is shutting down; retry with the same ids")
    return await handler(request)


def _with_drain_middleware(middlewares: Sequence) -> tuple:
    """The drain check goes right inside the error middleware: its refusal becomes a problem
    (with the request id), and it comes before authentication, so that a draining instance spends
    no key lookup on a request it will refuse anyway."""
    position = list(middlewares).index(error_middleware) + 1
    return (*middlewares[:position], drain_middleware, *middlewares[position:])


def _ledger_context(settings: Settings, injected: Ledger | None):
    async def ledger_context(app: web.Application) -> AsyncIterator[None]:
        if injected is not None:
            app[LEDGER_KEY] = injected
            yield
            return
        if not settings.signing_key_path.exists():
            raise RuntimeError(f"no ledger signing key at {settings.signing_key_path}: run `ledger init` first")
        ledger = Ledger(create_engine(settings.database_url), read_signing_key(settings.signing_key_path))
        app[LEDGER_KEY] = ledger
        try:
            yield
        finally:
            await ledger.close()  # disposes the engine's pool

    return ledger_context


def _batcher_context(injected: Batcher | None, metrics: ServiceMetrics):
    async def batcher_context(app: web.Application) -> AsyncIterator[None]:
        if injected is not None:
            if injected.on_batch is None:  # so the batch-size histogram sees its batches too
                injected.on_batch = metrics.observe_batch
            app[BATCHER_KEY] = injected
            yield
            return
        batcher = Batcher(app[LEDGER_KEY], on_batch=metrics.observe_batch)
        batcher.start()
        app[BATCHER_KEY] = batcher
        try:
            yield
        finally:
            # Refuses new work and commits everything already queued before the engine goes.
            await batcher.close()

    return batcher_context


async def _wallets_context(app: web.Application) -> AsyncIterator[None]:
    # Holds no resource of its own: the ledger and batcher contexts close what it uses.
    wallets = WalletBook(app[LEDGER_KEY], app[BATCHER_KEY])
    app[WALLETS_KEY] = wallets
    app[KEY_RESOLVER_KEY].bind(wallets.active_keys)
    try:
        yield
    finally:
        app[KEY_RESOLVER_KEY].bind(None)


async def _fx_context(app: web.Application) -> AsyncIterator[None]:
    # Holds no resource of its own: the ledger's context closes the engine both use.
    rates = RateBook(app[LEDGER_KEY])
    app[RATES_KEY] = rates
    app[QUOTES_KEY] = QuoteDesk(app[LEDGER_KEY], rates)
    yield


async def _settlement_context(app: web.Application) -> AsyncIterator[None]:
    # Holds no resource of its own either; payments price through the FX desk's quotes.
    ledger = app[LEDGER_KEY]
    app[SETTLEMENT_KEY] = Settlement.over(
        ledger, app[BATCHER_KEY], app[WALLETS_KEY], app[QUOTES_KEY].lookup, ledger.clock
    )
    yield


def _version() -> str:
    try:
        return metadata.version("sz-hk-ledger")
    except metadata.PackageNotFoundError:
        return "0.0.0+source"
