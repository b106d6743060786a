"""Transfers between wallets: one at a time or in batches (atomic or not), two-phase holds posted
(in whole or in part) or voided, and read back.

Idempotency is the client's transfer id, scoped to its institution by the wallets layer: the same
id and body answer the original result with ``Idempotent-Replayed: true`` (a refusal included,
same status and body), another body under that id 409 ``exists_with_different_fields``.
Every call that moves money runs ``shielded``: a client that leaves does not cancel its batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from aiohttp import web

from ledger import ResultCode
from service.errors_map import refusal_problem, wallet_errors
from service.handlers import read_body, read_json, shielded
from service.keys import SETTLEMENT_KEY
from service.openapi import RouteTable
from service.problems import ProblemError
from service.routes._common import (
    caller_id,
    currencies,
    currency_named,
    field_problem,
    json_response,
    minor_units,
    outcome_response,
    record_refusal,
    refusal_body_and_status,
    transfer_out,
    uuid_in_path,
    wallets,
)
from service.schemas import (
    TransferBatchCreate,
    TransferBatchItem,
    TransferBatchOut,
    TransferCreate,
    TransferOut,
    TransferPostRequest,
)
from settlement.transfers import CrossInstitutionTransfers
from wallets.errors import NotFound
from wallets.ids import metadata_problem
from wallets.model import TransferOutcome, TransferRequest

routes = RouteTable(tag="transfers")


def cross(request: web.Request) -> CrossInstitutionTransfers:
    """Transfers go through settlement's desk: one to another institution's wallet also records the
    obligation between the institutions in the open window (under the payer's net debit cap)."""
    return request.app[SETTLEMENT_KEY].transfers


TRANSFER_REFUSALS = (
    "not_found",
    "insufficient_funds",
    "limit_exceeded",
    "wallet_frozen",
    "wallet_closed",
    "currency_mismatch",
    "exists_with_different_fields",
    "invalid_amount",
    (422, "invalid_amount"),
    "net_debit_cap_exceeded",
)
PENDING_REFUSALS = (
    "net_debit_cap_exceeded",
    "pending_transfer_not_found",
    "pending_transfer_already_resolved",
    "pending_transfer_expired",
    "insufficient_funds",
    "limit_exceeded",
    "wallet_frozen",
    "wallet_closed",
)


async def _transfer_request(request: web.Request, body: TransferCreate, pointer: str = "#") -> TransferRequest:
    """The wallets layer's request from a validated body: the amount in the named currency's
    minor units, the metadata within its size."""
    currency = await currency_named(request, body.currency, pointer=f"{pointer}/currency")
    amount_minor = minor_units(body.amount, currency, pointer=f"{pointer}/amount")
    if (problem := metadata_problem(body.metadata)) is not None:
        raise field_problem(problem, f"{pointer}/metadata")
    if body.timeout_seconds is not None and not body.pending:
        raise field_problem("timeout_seconds is for pending transfers", f"{pointer}/timeout_seconds")
    return TransferRequest(
        id=body.id,
        source_wallet_id=body.source_wallet_id,
        target_wallet_id=body.target_wallet_id,
        amount_minor=amount_minor,
        currency=body.currency,
        pending=body.pending,
        timeout_s=body.timeout_seconds,
        metadata=body.metadata,
    )


@routes.route(
    "POST",
    "/v1/transfers",
    summary="Move money from one of the caller's wallets to any open wallet",
    description="201 with the transfer (`status` `posted`, or `pending` with `pending: true`). The "
    "same id and body again: 200 with the original transfer, or the original refusal (same status "
    "and body), with `Idempotent-Replayed: true`. Another body under that id: 409 "
    "`exists_with_different_fields`. The source must be the caller's wallet (404 otherwise).",
    request=TransferCreate,
    responses={201: TransferOut, 200: TransferOut},
    problems=TRANSFER_REFUSALS,
)
async def create_transfer(request: web.Request) -> web.Response:
    body = await read_json(request, TransferCreate)
    transfer_request = await _transfer_request(request, body)
    with wallet_errors():
        outcome = await shielded(cross(request).transfer(caller_id(request), transfer_request))
    return await outcome_response(request, outcome)


@routes.route(
    "POST",
    "/v1/transfer-batches",
    summary="Several transfers in one request; with `atomic`, all or none",
    description="200 with one result per transfer, in order: `status` is what `POST /v1/transfers` "
    "would have answered for it, with `transfer` or `problem`. With `atomic`, one refusal refuses "
    "them all: the others answer 424 (`invalid_request`, not applied because another was refused).",
    request=TransferBatchCreate,
    responses={200: TransferBatchOut},
    problems=["not_found", "invalid_amount"],
)
async def create_transfer_batch(request: web.Request) -> web.Response:
    body = await read_json(request, TransferBatchCreate)
    requests = [
        await _transfer_request(request, item, pointer=f"#/transfers/{index}")
        for index, item in enumerate(body.transfers)
    ]
    with wallet_errors():
        outcomes = await shielded(cross(request).transfer_batch(caller_id(request), requests, atomic=body.atomic))
    if len(outcomes) != len(requests):
        raise RuntimeError(f"{len(requests)} transfers but {len(outcomes)} outcomes")  # a bug: never guess
    known = await currencies(request)
    items = []
    for transfer_request, outcome in zip(requests, outcomes, strict=True):
        if outcome.ok and outcome.transfer is not None:
            view = outcome.transfer
            status = 200 if outcome.replayed else 201
            items.append(
                TransferBatchItem(
                    id=transfer_request.id,
                    status=status,
                    replayed=outcome.replayed,
                    transfer=transfer_out(view, known[view.currency]),
                )
            )
            continue
        problem, status = refusal_body_and_status(outcome)
        record_refusal(request, problem["code"])
        items.append(
            TransferBatchItem(id=transfer_request.id, status=status, replayed=outcome.replayed, problem=problem)
        )
    return json_response(TransferBatchOut(atomic=body.atomic, items=items))


@routes.route(
    "GET",
    "/v1/transfers/{id}",
    summary="A transfer the caller made, by its id, with its current status",
    description="A pending transfer's status moves to `posted_from_pending`, `voided` or `expired`. "
    "An id the ledger refused answers that refusal (its status and problem body).",
    responses={200: TransferOut},
    problems=TRANSFER_REFUSALS,
)
async def get_transfer(request: web.Request) -> web.Response:
    transfer_id = uuid_in_path(request)
    with wallet_errors():
        outcome = await wallets(request).get_transfer(caller_id(request), transfer_id)
    if not outcome.ok:
        body, status = refusal_body_and_status(outcome)
        return web.json_response(body, status=status, content_type="application/problem+json")
    return await outcome_response(request, _as_current(outcome), status_created=200)


def _as_current(outcome: TransferOutcome) -> TransferOutcome:
    # A read is not a replay: no Idempotent-Replayed header on GET.
    return TransferOutcome(code=outcome.code, transfer=outcome.transfer, replayed=False)


@contextmanager
def pending_errors() -> Iterator[None]:
    """The wallets layer's errors, with an unknown pending transfer (or another institution's) in
    the contract's own code for it."""
    try:
        with wallet_errors():
            yield
    except ProblemError as problem:
        if problem.code == "not_found":
            raise refusal_problem(ResultCode.PENDING_TRANSFER_NOT_FOUND) from None
        raise


async def _pending_id(request: web.Request) -> UUID:
    return uuid_in_path(request, code="pending_transfer_not_found")


@routes.route(
    "POST",
    "/v1/transfers/{id}/post",
    summary="Post a pending transfer, in whole or in part",
    description="Body optional: `{amount}` posts part of the hold (the rest returns to the source); "
    "no body or no amount posts all of it. The same request again answers the same result with "
    "`Idempotent-Replayed: true`.",
    request=TransferPostRequest,
    responses={200: TransferOut},
    problems=[*PENDING_REFUSALS, (422, "invalid_amount"), "invalid_amount"],
)
async def post_transfer(request: web.Request) -> web.Response:
    pending_id = await _pending_id(request)
    institution_id = caller_id(request)
    has_body = bool((await read_body(request)).strip())
    body = await read_json(request, TransferPostRequest) if has_body else TransferPostRequest()
    amount_minor: int | None = None
    book = wallets(request)
    if body.amount is not None:  # the amount is in the hold's currency: read it first
        try:
            pending = await book.get_transfer(institution_id, pending_id)
        except NotFound:
            pending = None
        if pending is None or pending.transfer is None:  # unknown, or refused when made: no hold
            raise refusal_problem(ResultCode.PENDING_TRANSFER_NOT_FOUND)
        amount_minor = minor_units(body.amount, (await currencies(request))[pending.transfer.currency])
        if amount_minor > pending.transfer.amount_minor:
            # Refused here, before the ledger: the wallets layer gives each hold ONE post id, and a
            # post the ledger refused would be remembered under it, so that no later post of the
            # hold could succeed. A hold's amount never changes, so this check cannot go stale.
            raise refusal_problem(ResultCode.EXCEEDS_PENDING_AMOUNT)
    with pending_errors():
        outcome = await shielded(cross(request).post_pending(institution_id, pending_id, amount_minor))
    return await outcome_response(request, outcome, status_created=200)


@routes.route(
    "POST",
    "/v1/transfers/{id}/void",
    summary="Void a pending transfer: the hold returns to the source",
    responses={200: TransferOut},
    problems=PENDING_REFUSALS,
)
async def void_transfer(request: web.Request) -> web.Response:
    pending_id = await _pending_id(request)
    with pending_errors():
        outcome = await shielded(wallets(request).void_pending(caller_id(request), pending_id))
    return await outcome_response(request, outcome, status_created=200)
