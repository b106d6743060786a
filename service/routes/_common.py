"""What the resource route modules share: ids from the path, paging, money in and out of text,
times as RFC 3339, the caller's institution, and how a transfer outcome becomes a response."""

from __future__ import annotations

import datetime
import json
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel

from ledger import Balances, Currency, parse_amount
from ledger.money import format_amount
from service.errors_map import BUSINESS_REFUSAL_CODES, refusal_for, wallet_errors
from service.handlers import caller
from service.keys import LEDGER_KEY, METRICS_KEY, WALLETS_KEY
from service.problems import ProblemError, problem_response
from service.schemas import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, BalanceOut, TransferOut
from wallets.errors import NotFound
from wallets.model import Institution, InstitutionKind, TransferOutcome, TransferView
from wallets.service import WalletBook

REPLAYED_HEADER = "Idempotent-Replayed"
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# A cursor is a number the ledger gave out; anything longer is not one of ours.
CURSOR_LENGTH_MAX = 20
ID_CURSOR_LENGTH_MAX = 128


def wallets(request: web.Request) -> WalletBook:
    return request.app[WALLETS_KEY]


def caller_id(request: web.Request) -> str:
    return caller(request).key_id


async def caller_institution(request: web.Request) -> Institution:
    """The signer's institution. A key id with active keys names a registered institution, so a
    NotFound here means it was removed meanwhile: forbidden, not a leak of anything."""
    try:
        return await wallets(request).get_institution(caller_id(request))
    except NotFound:
        raise ProblemError("forbidden", "the signing institution is not registered", 403) from None


async def require_operator(request: web.Request) -> Institution:
    institution = await caller_institution(request)
    if institution.kind is not InstitutionKind.OPERATOR:
        raise ProblemError("forbidden", "only an operator may do this", 403)
    return institution


def uuid_in_path(request: web.Request, name: str = "id", *, code: str = "not_found") -> UUID:
    """A path id that is not a UUID names nothing: 404 (with ``code``), as an unknown one would."""
    text = request.match_info[name]
    try:
        return UUID(text)
    except ValueError:
        raise ProblemError(code, f"{text[:64]!r} is not a known id", 404) from None


def page_params(request: web.Request, *, cursor_name: str | None = "cursor") -> tuple[int, int | None]:
    """``limit`` (1 to 500, default 50) and ``cursor`` (an opaque token from ``next_cursor``)."""
    limit_text = request.query.get("limit")
    limit = PAGE_LIMIT_DEFAULT
    if limit_text is not None:
        if not (limit_text.isdigit() and len(limit_text) <= 4 and 1 <= int(limit_text) <= PAGE_LIMIT_MAX):
            raise ProblemError("invalid_request", f"limit must be an integer from 1 to {PAGE_LIMIT_MAX}", 400)
        limit = int(limit_text)
    cursor_text = request.query.get(cursor_name) if cursor_name else None
    cursor: int | None = None
    if cursor_text:
        if not cursor_text.isdigit() or len(cursor_text) > CURSOR_LENGTH_MAX:
            raise ProblemError("invalid_request", "cursor is not one this server gave out", 400)
        cursor = int(cursor_text)
    return limit, cursor


def page_params_text(request: web.Request) -> tuple[int, str | None]:
    """``limit`` and a text cursor (the last id of the previous page), for lists ordered by id."""
    limit, _ = page_params(request, cursor_name=None)
    cursor = request.query.get("cursor") or None
    if cursor is not None and len(cursor) > ID_CURSOR_LENGTH_MAX:
        raise ProblemError("invalid_request", "cursor is not one this server gave out", 400)
    return limit, cursor


def rfc3339(timestamp_us: int) -> datetime.datetime:
    """A UTC datetime from microseconds since the epoch (exact: no float in between)."""
    return _EPOCH + datetime.timedelta(microseconds=timestamp_us)


def rfc3339_or_none(timestamp_us: int | None) -> datetime.datetime | None:
    return None if timestamp_us is None else rfc3339(timestamp_us)


async def currencies(request: web.Request) -> dict[str, Currency]:
    return await request.app[LEDGER_KEY].currencies()


async def currency_named(request: web.Request, code: str, *, pointer: str = "#/currency") -> Currency:
    """The registered currency ``code``, or 400 ``invalid_request`` naming the field."""
    known = await currencies(request)
    currency = known.get(code)
    if currency is None:
        currency = (await request.app[LEDGER_KEY].currencies(refresh=True)).get(code)  # added by another process?
    if currency is None:
        raise field_problem(f"unknown currency {code}; this ledger has {', '.join(sorted(known))}", pointer)
    return currency


def field_problem(detail: str, pointer: str, code: str = "invalid_request", status: int = 400) -> ProblemError:
    """A problem about one field of the body, named by its JSON Pointer."""
    return ProblemError(code, detail, status, errors=[{"pointer": pointer, "detail": detail}])


def minor_units(amount: str, currency: Currency, *, pointer: str = "#/amount") -> int:
    """``amount`` in minor units of ``currency``, or 400 ``invalid_amount`` naming the field."""
    try:
        return parse_amount(amount, currency)
    except ValueError as error:  # InvalidAmount
        raise field_problem(str(error), pointer, "invalid_amount") from None


def amount_text(minor: int | None, currency: Currency) -> str | None:
    return None if minor is None else format_amount(minor, currency)


def balance_out(balances: Balances, currency: Currency) -> BalanceOut:
    posted = balances.credits_posted - balances.debits_posted
    return BalanceOut(
        available=format_amount(posted - balances.debits_pending, currency),
        pending=format_amount(balances.credits_pending - balances.debits_pending, currency),
        posted=format_amount(posted, currency),
        pending_debits=format_amount(balances.debits_pending, currency),
        pending_credits=format_amount(balances.credits_pending, currency),
    )


def transfer_fields(view: TransferView, currency: Currency) -> dict:
    return {
        "id": view.id,
        "kind": view.kind,
        "status": str(view.status),
        "source_wallet_id": view.source_wallet_id,
        "target_wallet_id": view.target_wallet_id,
        "amount": format_amount(view.amount_minor, currency),
        "currency": view.currency,
        "created_at": rfc3339(view.created_at_us),
        "pending_id": view.pending_id,
        "timeout_seconds": view.timeout_s,
        "expires_at": rfc3339_or_none(view.expires_at_us),
        "metadata": view.metadata,
    }


def transfer_out(view: TransferView, currency: Currency) -> TransferOut:
    return TransferOut(**transfer_fields(view, currency))


def json_response(model: BaseModel, status: int = 200, *, replayed: bool = False) -> web.Response:
    headers = {REPLAYED_HEADER: "true"} if replayed else None
    return web.json_response(model.model_dump(mode="json"), status=status, headers=headers)


def created_or_replayed(model: BaseModel, created: bool) -> web.Response:
    """201 for a new resource; 200 with ``Idempotent-Replayed: true`` when the id already had it."""
    return json_response(model, 201 if created else 200, replayed=not created)


def refusal_body_and_status(outcome: TransferOutcome) -> tuple[dict, int]:
    """The problem body of a refused outcome. It depends on the result code alone (no request id,
    no times), so that the refusal and every replay of it answer the same bytes."""
    refusal = refusal_for(outcome.code)
    body = json.loads(problem_response(ProblemError(refusal.code, refusal.detail, refusal.status), None).body)
    return body, refusal.status


async def outcome_response(
    request: web.Request, outcome: TransferOutcome, *, status_created: int = 201
) -> web.Response:
    """A transfer outcome as the contract answers it: the transfer (``status_created``, or 200 when
    replayed) or the refusal's problem, with ``Idempotent-Replayed: true`` on a replay."""
    headers = {REPLAYED_HEADER: "true"} if outcome.replayed else {}
    if outcome.ok:
        view = _outcome_view(outcome)
        body = transfer_out(view, await currency_named(request, view.currency)).model_dump(mode="json")
        return web.json_response(body, status=200 if outcome.replayed else status_created, headers=headers)
    body, status = refusal_body_and_status(outcome)
    record_refusal(request, body["code"])
    return web.json_response(body, status=status, headers=headers, content_type="application/problem+json")


def record_refusal(request: web.Request, code: str) -> None:
    metrics = request.app[METRICS_KEY]
    metrics.record_problem(code)  # the error middleware does not see answers a handler returns
    if code in BUSINESS_REFUSAL_CODES:
        metrics.record_refusal(code)


def _outcome_view(outcome: TransferOutcome) -> TransferView:
    if outcome.transfer is None:
        # The wallets layer promises a transfer with every ok outcome: a broken promise is a bug.
        raise RuntimeError(f"an ok outcome without its transfer ({outcome!r})")
    return outcome.transfer


__all__ = ["wallet_errors"]
