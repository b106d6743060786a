"""FX rates and quotes. Operators set the rate of a pair (the newest is current; every one is kept);
any institution reads the rates and asks for quotes, and reads only its own quotes (another
institution's quote answers 404 exactly as an unknown id does).

A quote's ``signature`` is the ledger's Ed25519 signature over its canonical JSON
(``settlement.fx.canonical_quote_json``), checkable with ``GET /v1/audit/head``'s ``public_key``
from the answer's fields alone (see ``service.schemas.FxQuoteOut``).
"""

from __future__ import annotations

import base64
from decimal import Decimal

from aiohttp import web

from ledger import Currency, format_amount
from service.errors_map import fx_errors
from service.handlers import read_json, shielded
from service.keys import QUOTES_KEY, RATES_KEY
from service.openapi import RouteTable
from service.problems import ProblemError
from service.routes._common import (
    caller_id,
    currency_named,
    json_response,
    minor_units,
    page_params,
    require_operator,
    rfc3339,
    uuid_in_path,
)
from service.schemas import FxQuoteCreate, FxQuoteOut, FxRateCreate, FxRateOut, Page
from settlement import fx
from settlement.quotes import SignedQuote
from settlement.rates import Rate, check_pair

routes = RouteTable(tag="fx")

_RATE_POINTERS = {fx.InvalidRate: "#/mid_rate", fx.InvalidSpread: "#/spread_bps"}
# No rate for the pair yet: the request is sound, the ledger's state is not there (see NoRate).
_NO_RATE = (409, "invalid_request")


def rate_out(rate: Rate) -> FxRateOut:
    return FxRateOut(
        id=rate.id,
        source_currency=rate.source_currency,
        target_currency=rate.target_currency,
        mid_rate=format(rate.mid_rate, "f"),
        spread_bps=rate.spread_bps,
        customer_rate=format(rate.customer_rate, "f"),
        set_at=rfc3339(rate.set_at_us),
        set_by=rate.actor,
    )


def quote_out(quote: SignedQuote, source: Currency, target: Currency) -> FxQuoteOut:
    return FxQuoteOut(
        id=quote.id,
        source_currency=quote.source_currency,
        target_currency=quote.target_currency,
        rate=format(quote.rate.quantize(fx.RATE_QUANTUM), "f"),
        source_amount=format_amount(quote.source_minor, source),
        target_amount=format_amount(quote.target_minor, target),
        created_at=rfc3339(quote.created_at_us),
        expires_at=rfc3339(quote.expires_at_us),
        signature=base64.b64encode(quote.signature).decode("ascii"),
    )


@routes.route(
    "POST",
    "/v1/fx/rates",
    summary="Set the rate of a currency pair (operator)",
    description="HKD→CNY or CNY→HKD, each with its own rate. `mid_rate` is target per one source unit; "
    "quotes use `customer_rate` from now on. Every rate set is kept (`GET /v1/fx/rates?history=true`).",
    request=FxRateCreate,
    responses={201: FxRateOut},
    problems=["forbidden"],
)
async def set_rate(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    body = await read_json(request, FxRateCreate)
    with fx_errors(_RATE_POINTERS):
        rate = await shielded(
            request.app[RATES_KEY].set_rate(
                body.source_currency, body.target_currency, Decimal(body.mid_rate), body.spread_bps,
                actor=operator.id,
            )
        )  # fmt: skip
    return json_response(rate_out(rate), 201)


@routes.route(
    "GET",
    "/v1/fx/rates",
    summary="The current rate of each pair, or every rate set (any institution)",
    description="Without `history`, the current rate of each pair that has one (one page). With "
    "`history=true`, every rate ever set, newest first, paged by `limit` (1–500, default 50) and "
    "`cursor` (the previous page's `next_cursor`).",
    responses={200: Page[FxRateOut]},
    problems=["invalid_request"],
)
async def list_rates(request: web.Request) -> web.Response:
    history = request.query.get("history", "false")
    if history not in ("true", "false"):
        raise ProblemError("invalid_request", "history must be true or false", 400)
    limit, cursor = page_params(request)
    rates = request.app[RATES_KEY]
    with fx_errors({}):
        if history == "true":
            items, next_cursor = await rates.history(limit=limit, cursor=cursor)
        else:
            items, next_cursor = await rates.current_rates(), None
    cursor_text = None if next_cursor is None else str(next_cursor)
    return json_response(Page[FxRateOut](items=[rate_out(rate) for rate in items], next_cursor=cursor_text))


@routes.route(
    "POST",
    "/v1/fx/quotes",
    summary="A signed quote at the pair's current rate, valid for 60 s",
    description="Give exactly one of `source_amount` and `target_amount` (neither or both: 400 "
    "`invalid_request`). By target, the target is exact and the source is rounded up to its minor unit; "
    "by source, the target is rounded down. A pair other than HKD→CNY or CNY→HKD is 400 `invalid_request`; "
    "a pair without a rate yet is 409 `invalid_request`; an amount that converts to nothing (or past the "
    "maximum) is 422 `invalid_amount`.",
    request=FxQuoteCreate,
    responses={201: FxQuoteOut},
    problems=["invalid_amount", (422, "invalid_amount"), _NO_RATE],
)
async def create_quote(request: web.Request) -> web.Response:
    body = await read_json(request, FxQuoteCreate)
    with fx_errors({fx.InvalidQuoteAmount: "#/source_amount" if body.source_amount else "#/target_amount"}):
        check_pair(body.source_currency, body.target_currency)
        source = await currency_named(request, body.source_currency, pointer="#/source_currency")
        target = await currency_named(request, body.target_currency, pointer="#/target_currency")
        source_minor = _minor_or_none(body.source_amount, source, "#/source_amount")
        target_minor = _minor_or_none(body.target_amount, target, "#/target_amount")
        quote = await shielded(
            request.app[QUOTES_KEY].issue(
                caller_id(request), source.code, target.code, source_minor=source_minor, target_minor=target_minor
            )
        )
    return json_response(quote_out(quote, source, target), 201)


def _minor_or_none(amount: str | None, currency: Currency, pointer: str) -> int | None:
    return None if amount is None else minor_units(amount, currency, pointer=pointer)


@routes.route(
    "GET",
    "/v1/fx/quotes/{id}",
    summary="One of the caller's quotes (expired ones too)",
    description="Another institution's quote answers 404 exactly as an unknown id does.",
    responses={200: FxQuoteOut},
    problems=["not_found"],
)
async def get_quote(request: web.Request) -> web.Response:
    quote_id = uuid_in_path(request)
    with fx_errors({}):
        quote = await request.app[QUOTES_KEY].get(caller_id(request), quote_id)
    source = await currency_named(request, quote.source_currency)
    target = await currency_named(request, quote.target_currency)
    return json_response(quote_out(quote, source, target))
