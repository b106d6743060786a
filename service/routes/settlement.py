"""Settlement: windows, batches (close, settle, report), and each institution's liquidity and
position. Operators act; an institution reads the windows, its own position and its own view of a
batch it is party to (another batch is 404 to it, as is another institution's position)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from nacl.signing import SigningKey

from ledger import Currency, ResultCode
from ledger.money import format_amount
from service.errors_map import wallet_errors
from service.handlers import read_json, shielded
from service.keys import LEDGER_KEY, SETTLEMENT_KEY
from service.openapi import JsonOrRaw, RawResponse, RouteTable
from service.problems import ProblemError
from service.routes._common import (
    caller_institution,
    currencies,
    currency_named,
    json_response,
    minor_units,
    outcome_response,
    page_params,
    require_operator,
    rfc3339,
    wallets,
)
from service.schemas import BatchOut, CapPolicy, LiquidityCreate, LiquidityOut, Page, PositionOut, WindowOut
from settlement.batches import Batch
from settlement.desks import Settlement
from settlement.reports import batch_csv, batch_document, signed
from settlement.reports import rfc3339 as report_time
from settlement.windows import SETTLEMENT_CURRENCY, Window
from wallets.errors import NotFound
from wallets.model import Institution, InstitutionKind, TransferOutcome

routes = RouteTable(tag="settlement")
REPORT_SIGNATURE_HEADER = "Report-Signature"


def settlement(request: web.Request) -> Settlement:
    return request.app[SETTLEMENT_KEY]


def _window_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not (text.isdigit() and len(text) <= 9):
        raise ProblemError("not_found", f"{text[:64]!r} is not a known settlement window", 404)
    return int(text)


async def _window_out(request: web.Request, window: Window) -> WindowOut:
    history = await settlement(request).windows.history(window.id)
    return WindowOut(
        id=window.id,
        status=window.status,  # type: ignore[arg-type]
        opened_at=report_time(window.opened_at_us),
        closed_at=None if window.closed_at_us is None else report_time(window.closed_at_us),
        history=[{"status": s, "at": report_time(at), "actor": actor} for s, at, actor in history],  # type: ignore[misc]
    )


@routes.route(
    "GET",
    "/v1/settlement/windows",
    summary="Settlement windows, newest first",
    description="Paged by `limit` and `cursor`; every institution may read them.",
    responses={200: Page[WindowOut]},
    problems=["invalid_request"],
)
async def list_windows(request: web.Request) -> web.Response:
    limit, cursor = page_params(request)
    windows = [w for w in reversed(await settlement(request).windows.list()) if cursor is None or w.id < cursor]
    page = windows[:limit]
    next_cursor = str(page[-1].id) if len(windows) > limit else None
    items = [await _window_out(request, w) for w in page]
    return json_response(Page[WindowOut](items=items, next_cursor=next_cursor))


@routes.route(
    "GET",
    "/v1/settlement/windows/{id}",
    summary="A settlement window",
    responses={200: WindowOut},
    problems=["not_found"],
)
async def get_window(request: web.Request) -> web.Response:
    window = await settlement(request).windows.get(_window_id(request))
    if window is None:
        raise ProblemError("not_found", "no such settlement window", 404)
    return json_response(await _window_out(request, window))


async def _batch_answer(request: web.Request, batch: Batch, viewer: str | None, status: int = 200) -> web.Response:
    document = batch_document(batch, await currencies(request), viewer=viewer)
    return web.json_response(signed(document, request.app[LEDGER_KEY].signing_key), status=status)


@routes.route(
    "POST",
    "/v1/settlement/windows/{id}/close",
    summary="Close the open window (operator): the next opens; answers the closed window's batch",
    responses={201: BatchOut},
    problems=["forbidden", "window_not_open", "not_found"],
)
async def close_window(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    window_id = _window_id(request)
    with wallet_errors():
        batch = await shielded(settlement(request).batches.close(window_id, actor=operator.id))
    return await _batch_answer(request, batch, None, 201)


async def _viewer(request: web.Request, batch: Batch) -> str | None:
    """None for an operator; the caller's id if it is party to the batch; else 404."""
    caller = await caller_institution(request)
    if caller.kind is InstitutionKind.OPERATOR:
        return None
    if not batch.involves(caller.id):
        raise ProblemError("not_found", "no such settlement batch", 404)
    return caller.id


async def _batch(request: web.Request) -> Batch:
    with wallet_errors():
        return await settlement(request).batches.batch(_window_id(request))


@routes.route(
    "GET",
    "/v1/settlement/batches/{id}",
    summary="A settlement batch (operator: all of it; a participant: its own part)",
    responses={200: BatchOut},
    problems=["not_found"],
)
async def get_batch(request: web.Request) -> web.Response:
    batch = await _batch(request)
    return await _batch_answer(request, batch, await _viewer(request, batch))


@routes.route(
    "POST",
    "/v1/settlement/batches/{id}/settle",
    summary="Settle a closed batch (operator)",
    description="Posts one linked chain between settlement accounts. A net debtor whose liquidity "
    "cannot fund its net debit is unwound: it leaves the batch with every obligation it is party to, "
    "which are carried into the open window (`carried_out`), and the rest settles (`unwound`). "
    "Batches settle oldest first; a settled batch answers as it is.",
    responses={200: BatchOut},
    problems=["forbidden", "batch_not_settleable", "not_found"],
)
async def settle_batch(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    window_id = _window_id(request)
    with wallet_errors():
        batch = await shielded(settlement(request).batches.settle(window_id, actor=operator.id))
    return await _batch_answer(request, batch, None)


@routes.route(
    "GET",
    "/v1/settlement/batches/{id}/report",
    summary="A batch's report, as signed JSON (`format=json`, the default) or CSV (`format=csv`)",
    description=f"The CSV carries the signature of the JSON report in the `{REPORT_SIGNATURE_HEADER}` header.",
    responses={200: JsonOrRaw(BatchOut, RawResponse("text/csv", "or its figures as CSV"))},
    problems=["not_found", "invalid_request"],
)
async def batch_report(request: web.Request) -> web.Response:
    report_format = request.query.get("format", "json")
    if report_format not in ("json", "csv"):
        raise ProblemError("invalid_request", "format is json or csv", 400)
    batch = await _batch(request)
    viewer = await _viewer(request, batch)
    return report_response(batch, await currencies(request), request.app[LEDGER_KEY].signing_key, viewer, report_format)


def report_response(
    batch: Batch,
    currencies: Mapping[str, Currency],
    signing_key: SigningKey,
    viewer: str | None,
    report_format: str,
    *,
    attachment: bool = False,
) -> web.Response:
    """The batch's signed report as served: JSON, or CSV with the JSON's signature in a header.
    The operator console's export answers with this too, so its downloads are these very bytes
    (``attachment`` only adds a Content-Disposition to the JSON, which the CSV always has)."""
    report = signed(batch_document(batch, currencies, viewer=viewer), signing_key)
    if report_format == "json":
        headers = {"Content-Disposition": f'attachment; filename="settlement-batch-{batch.id}.json"'}
        return web.json_response(report, headers=headers if attachment else None)
    headers = {
        REPORT_SIGNATURE_HEADER: report["signature"],
        "Content-Disposition": f'attachment; filename="settlement-batch-{batch.id}.csv"',
    }
    return web.Response(text=batch_csv(report), content_type="text/csv", charset="utf-8", headers=headers)


# -- institutions' liquidity and position --------------------------------------------------------


async def _institution_for(request: web.Request, *, operator_only: bool) -> Institution:
    caller = await caller_institution(request)
    wanted = request.match_info["id"]
    if caller.kind is not InstitutionKind.OPERATOR and (operator_only or caller.id != wanted):
        if operator_only:
            raise ProblemError("forbidden", "only an operator may do this", 403)
        raise ProblemError("not_found", "no such institution", 404)
    try:
        return await wallets(request).get_institution(wanted)
    except NotFound:
        raise ProblemError("not_found", "no such institution", 404) from None


async def _position(request: web.Request, institution: Institution) -> PositionOut:
    desks = settlement(request)
    cny = await currency_named(request, SETTLEMENT_CURRENCY)
    window = await desks.windows.open_window()
    cap = await desks.liquidity.cap_in_force(institution)
    registered = institution.net_debit_cap[0] if institution.net_debit_cap else None
    return PositionOut(
        institution_id=institution.id,
        currency=SETTLEMENT_CURRENCY,
        liquidity=_text(await desks.liquidity.liquidity_minor(institution), cny),
        net_debit_cap=None if registered is None else _text(registered, cny),
        beyond_liquidity=await desks.liquidity.beyond_liquidity(institution.id),
        cap_in_force=None if cap is None else _text(cap, cny),
        open_window_id=window.id,
        open_window_net=_text(await desks.windows.net_in(window.id, institution.id), cny),
        unsettled_debit=_text(await desks.windows.unsettled_debit(institution.id), cny),
    )


def _text(minor: int, currency: Currency) -> str:
    return format_amount(minor, currency)


@routes.route(
    "GET",
    "/v1/institutions/{id}/position",
    summary="An institution's liquidity, caps and settlement position (operator, or itself)",
    responses={200: PositionOut},
    problems=["not_found"],
)
async def get_position(request: web.Request) -> web.Response:
    return json_response(await _position(request, await _institution_for(request, operator_only=False)))


@routes.route(
    "POST",
    "/v1/institutions/{id}/liquidity",
    summary="Prefund settlement liquidity (operator)",
    description="Moves money from the institution's funding account into its settlement account. "
    "The same `id` and body replay (200, `Idempotent-Replayed: true`).",
    request=LiquidityCreate,
    responses={201: LiquidityOut, 200: LiquidityOut},
    problems=["forbidden", "exists_with_different_fields", "invalid_amount", "not_found"],
)
async def add_liquidity(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    institution = await _institution_for(request, operator_only=True)
    body = await read_json(request, LiquidityCreate)
    currency = await currency_named(request, body.currency)
    amount_minor = minor_units(body.amount, currency)
    with wallet_errors():
        result = await shielded(
            settlement(request).liquidity.prefund(
                institution.id, body.id, amount_minor, currency.code, actor=operator.id
            )
        )
    if not result.ok:
        return await outcome_response(request, TransferOutcome(result.code, None, result.replayed))
    transfer = result.transfer
    if transfer is None or result.code is not ResultCode.OK:
        raise RuntimeError("an ok prefund without its transfer")
    out = LiquidityOut(
        id=body.id, institution_id=institution.id, amount=body.amount, currency=currency.code,
        created_at=rfc3339(transfer.created_at_us), position=await _position(request, institution),
    )  # fmt: skip
    return json_response(out, 200 if result.replayed else 201, replayed=result.replayed)


@routes.route(
    "POST",
    "/v1/institutions/{id}/net-debit-cap-policy",
    summary="Allow (or stop allowing) an institution's net debit cap beyond its liquidity (operator)",
    request=CapPolicy,
    responses={200: PositionOut},
    problems=["forbidden", "not_found"],
)
async def set_cap_policy(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    institution = await _institution_for(request, operator_only=True)
    body = await read_json(request, CapPolicy)
    with wallet_errors():
        await settlement(request).liquidity.allow_beyond_liquidity(
            institution.id, body.beyond_liquidity, actor=operator.id
        )
    return json_response(await _position(request, institution))
