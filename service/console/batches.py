"""The settlement batch pages: a closed window's batch (``settlement.batches.SettlementDesk``) with
its figures, settling it behind a confirmation step, and its signed report as downloads.

- ``GET /console/settlement/batches/{id}``: per-currency gross, net, liquidity saved and saving
  ratio; each participant's net position as an inline-SVG bar chart (``net_position_chart``) and
  a table; the bilateral gross obligations; the instructions; exclusions and carried obligations
  of an unwound batch; the status history; the report's signature;
- ``GET /console/settlement/batches/{id}/settle``: the confirmation step (the chain it will post,
  each net debtor's liquidity against its net debit); its form's POST settles with actor
  ``console:<operator>`` and lands back on the batch page;
- ``GET /console/settlement/batches/{id}/export/confirm?format=json|csv``: the export's
  confirmation step (status, signature, format), whose button downloads:
- ``GET /console/settlement/batches/{id}/export?format=json|csv``: the operator's report as the API
  serves it (``service.routes.settlement.report_response``: the same bytes and signature).

Every figure on the page comes from the document ``settlement.reports.batch_document`` makes for the
operator, signed as the API signs it: the page cannot disagree with ``GET
/v1/settlement/batches/{id}``. A refusal (a batch that does not settle yet, a window no longer
open) is a message on the page, never a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ledger import Currency, format_amount
from service.console.routes import LANDING_PATH, operator_only, refusal, render
from service.console.state import SESSION_KEY
from service.console.views import PositionRow
from service.keys import LEDGER_KEY, SETTLEMENT_KEY
from service.routes.settlement import report_response
from settlement.batches import Batch
from settlement.desks import Settlement
from settlement.errors import SettlementError
from settlement.reports import batch_document, signed
from wallets.errors import NotFound

routes = web.RouteTableDef()
"""The console's pages and actions. Every handler but sign-in runs behind ``operator_only``: a
live session or nothing (a page redirects to sign-in, an action answers 403), and every POST must
carry the session's CSRF token. Actions answer with a redirect (post/redirect/get), so a reload
never repeats one."""

BATCHES_PATH = LANDING_PATH + "/batches"
BATCH_ID = "{batch_id:[0-9]{1,9}}"


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A net debtor of the batch against its prefunded liquidity, on the confirmation step."""

    institution_id: str
    currency: str
    net_debit: str
    liquidity: str
    short: bool


def batch_path(batch_id: int) -> str:
    return f"{BATCHES_PATH}/{batch_id}"


def _desks(request: web.Request) -> Settlement:
    return request.app[SETTLEMENT_KEY]


def _batch_id(request: web.Request) -> int:
    return int(request.match_info["batch_id"])


async def _batch(request: web.Request) -> Batch:
    """The batch, or the page's answer: 404 for an unknown window, the window page for the open
    one (an open window has running totals, not a batch)."""
    batch_id = _batch_id(request)
    try:
        return await _desks(request).batches.batch(batch_id)
    except NotFound:
        window = await _desks(request).windows.get(batch_id)
        if window is not None:
            raise web.HTTPSeeOther(f"{LANDING_PATH}/windows/{batch_id}") from None
        raise web.HTTPNotFound(text=f"no settlement batch {batch_id}") from None


def chart_rows(batch: Batch, currencies: Mapping[str, Currency]) -> list[PositionRow]:
    """Each participant's net position per currency, for the bar chart and the positions table
    (the document's positions, with the minor units the chart scales by)."""
    rows = []
    for netting in batch.netting.currencies:
        currency = currencies[netting.currency]
        for p in netting.positions:
            rows.append(
                PositionRow(
                    p.participant, p.currency, None, "", "", format_amount(p.net_minor, currency), p.net_minor,
                    p.direction,
                )
            )  # fmt: skip
    return rows


async def batch_context(request: web.Request, batch: Batch) -> dict[str, Any]:
    currencies = await request.app[LEDGER_KEY].currencies()
    report = signed(batch_document(batch, currencies), request.app[LEDGER_KEY].signing_key)
    return {
        "batch": batch,
        "report": report,
        "positions": chart_rows(batch, currencies),
        "settleable": batch.status in ("closed", "settling"),
        "notice": {"closed": "closed", "settled": "settled"}.get(request.query.get("done", ""), None),
        "error": None,
    }


@routes.get(f"{BATCHES_PATH}/{BATCH_ID}")
@operator_only()
async def batch_page(request: web.Request) -> web.StreamResponse:
    batch = await _batch(request)
    return render("batch.html", request, await batch_context(request, batch))


@routes.get(f"{BATCHES_PATH}/{BATCH_ID}/settle")
@operator_only()
async def settle_confirm(request: web.Request) -> web.StreamResponse:
    batch = await _batch(request)
    context = await batch_context(request, batch)
    if not context["settleable"]:
        context["error"] = f"batch {batch.id} is {batch.status}: there is nothing to settle"
        return render("batch.html", request, context, status=409)
    return render("settle_confirm.html", request, {**context, "shortfalls": await _shortfalls(request, batch)})


async def _shortfalls(request: web.Request, batch: Batch) -> list[Shortfall]:
    desks, ledger = _desks(request), request.app[LEDGER_KEY]
    rows = []
    for netting in batch.netting.currencies:
        currency = await ledger.currency(netting.currency)
        for p in netting.positions:
            if p.direction != "pay":
                continue
            institution = await desks.batches.wallets.get_institution(p.participant)
            liquidity = await desks.liquidity.liquidity_minor(institution, p.currency)
            rows.append(
                Shortfall(
                    p.participant, p.currency, format_amount(p.net_debit_minor, currency),
                    format_amount(liquidity, currency), liquidity < p.net_debit_minor,
                )
            )  # fmt: skip
    return rows


@routes.post(f"{BATCHES_PATH}/{BATCH_ID}/settle")
@operator_only(csrf=True)
async def settle(request: web.Request) -> web.StreamResponse:
    batch_id = _batch_id(request)
    form = await request.post()
    if form.get("confirm") != "yes":  # the confirmation step: the form of the confirmation page
        raise web.HTTPSeeOther(f"{batch_path(batch_id)}/settle")
    actor = f"console:{request[SESSION_KEY].operator_id}"
    try:
        await _desks(request).batches.settle(batch_id, actor=actor)
    except NotFound:
        return refusal(request, f"no settlement batch {batch_id}", status=404)
    except SettlementError as refused:  # batch_not_settleable: not closed, an older one first, no bank
        batch = await _batch(request)
        context = await batch_context(request, batch)
        context["error"] = f"Not settled ({refused.code}): {refused}"
        return render("batch.html", request, context, status=refused.status)
    raise web.HTTPSeeOther(f"{batch_path(batch_id)}?done=settled")


@routes.get(f"{BATCHES_PATH}/{BATCH_ID}/export/confirm")
@operator_only()
async def export_confirm(request: web.Request) -> web.StreamResponse:
    """The export's confirmation step: what will be downloaded (the batch's status, the signature
    that covers it, the format) before the download itself."""
    report_format = request.query.get("format", "json")
    if report_format not in ("json", "csv"):
        return refusal(request, "an export is format=json or format=csv", status=400)
    context = await batch_context(request, await _batch(request))
    return render("export_confirm.html", request, {**context, "format": report_format})


@routes.get(f"{BATCHES_PATH}/{BATCH_ID}/export")
@operator_only()
async def export(request: web.Request) -> web.StreamResponse:
    report_format = request.query.get("format", "json")
    if report_format not in ("json", "csv"):
        return refusal(request, "an export is format=json or format=csv", status=400)
    batch = await _batch(request)
    ledger = request.app[LEDGER_KEY]
    return report_response(batch, await ledger.currencies(), ledger.signing_key, None, report_format, attachment=True)
