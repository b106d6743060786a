"""Typed keys where handlers find the app's resources and a request's own state.

Kept apart from ``service.app`` so that route modules can import them without importing the
factory that imports the route modules. Resources are created and closed by the cleanup contexts
in ``service.app``; nothing here is a global resource, only the names to find them by.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from ledger import Batcher, Ledger
from service.config import Settings
from service.key_resolver import InstitutionKeyResolver
from service.metrics import ServiceMetrics
from settlement.desks import Settlement
from settlement.quotes import QuoteDesk
from settlement.rates import RateBook
from wallets.service import WalletBook


class VerifiedCaller(Protocol):
    """Who signed a request (``service.auth.VerifiedRequest`` is one): the key id is the institution id."""

    @property
    def key_id(self) -> str: ...


class Authenticator(Protocol):
    """Checks a ``/v1/`` request's signature over its body and says who signed it, or raises a
    problem with a stable code (``service.auth.SignatureProblem``: ``code``, ``detail``, ``status``).

    ``functools.partial(service.auth.verify_aiohttp_request, resolve_keys=...)`` is one."""

    async def __call__(self, request: web.Request, body: bytes, /) -> VerifiedCaller: ...


SETTINGS_KEY = web.AppKey("settings", Settings)
LEDGER_KEY = web.AppKey("ledger", Ledger)
BATCHER_KEY = web.AppKey("batcher", Batcher)
AUTHENTICATOR_KEY = web.AppKey("authenticator", Authenticator)
METRICS_KEY = web.AppKey("metrics", ServiceMetrics)
# The wallets layer over the ledger and batcher above (made in a cleanup context after them).
WALLETS_KEY = web.AppKey("wallets", WalletBook)
# The settlement layer's desks over the same ledger, batcher and wallets.
SETTLEMENT_KEY = web.AppKey("settlement", Settlement)
# The FX desk over the ledger: operators' rates, and the quotes the ledger signs.
RATES_KEY = web.AppKey("rates", RateBook)
QUOTES_KEY = web.AppKey("quotes", QuoteDesk)
# Institutions' active public keys for the default authenticator, cached briefly; the key routes
# forget an institution's entry when they change its keys.
KEY_RESOLVER_KEY = web.AppKey("key_resolver", InstitutionKeyResolver)
# The largest request body accepted, in bytes (checked on Content-Length and on the bytes read).
BODY_SIZE_MAX_KEY = web.AppKey("body_size_max_bytes", int)

REQUEST_ID_KEY = web.RequestKey("request_id", str)
# Set by the authentication middleware on every /v1/ request before its handler runs.
CALLER_KEY = web.RequestKey("caller", VerifiedCaller)
# The body as read once under the size limit; the authenticator and read_json share it.
BODY_KEY = web.RequestKey("body", bytes)
