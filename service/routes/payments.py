"""Cross-border payments and their refunds. The payer institution pays from its customer's HKD
wallet to a Shenzhen merchant's CNY wallet at a quote's rate; it alone reads and refunds its
payments (another institution's payment id answers 404, as an unknown one does).

The same ``id`` and body replay the first answer, a refusal included (``Idempotent-Replayed:
true``); another body under that id is 409 ``exists_with_different_fields``.
"""

from __future__ import annotations

from aiohttp import web

from ledger import Currency, ResultCode, format_amount
from service.errors_map import REFUSALS, wallet_errors
from service.handlers import read_json, shielded
from service.keys import SETTLEMENT_KEY
from service.openapi import RouteTable
from service.problems import ProblemError, problem_response
from service.routes._common import (
    REPLAYED_HEADER,
    caller_id,
    currency_named,
    minor_units,
    record_refusal,
    rfc3339,
    uuid_in_path,
)
from service.schemas import PaymentCreate, PaymentOut, RefundCreate, RefundOut
from settlement.desks import Settlement
from settlement.payments import Payment, PaymentRequest
from settlement.refunds import Refund, RefundRequest

routes = RouteTable(tag="payments")

# Refusals of the settlement layer's own, beside the ledger's (``service.errors_map.REFUSALS``).
_DETAILS = {
    "quote_already_used": "this quote has already paid (a quote pays at most once)",
    "net_debit_cap_exceeded": "the payment would take an institution's net debit position past its cap in force",
    "invalid_amount": "the refund is more than what remains refundable of the payment",
}
PAYMENT_REFUSALS = (
    "not_found", "insufficient_funds", "limit_exceeded", "wallet_frozen", "wallet_closed", "quote_expired",
    "quote_already_used", "net_debit_cap_exceeded", "exists_with_different_fields", "invalid_amount",
)  # fmt: skip


def settlement(request: web.Request) -> Settlement:
    return request.app[SETTLEMENT_KEY]


def _refusal_response(request: web.Request, code: str, replayed: bool) -> web.Response:
    """The problem for a refused payment or refund; its body depends on the code alone, so the
    refusal and every replay of it answer the same status and body."""
    if code in _DETAILS:
        problem = ProblemError(code, _DETAILS[code], 422 if code == "invalid_amount" else None)
    else:
        refusal = REFUSALS[ResultCode(code)]
        problem = ProblemError(refusal.code, refusal.detail, refusal.status)
    response = problem_response(problem, None)
    record_refusal(request, problem.code)
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


async def _payment_out(request: web.Request, payment: Payment) -> PaymentOut:
    hkd = await currency_named(request, payment.source_currency)
    cny = await currency_named(request, payment.target_currency)
    refunded = await settlement(request).refunds.refunded_minor(caller_id(request), payment.id)
    status = "completed" if refunded == 0 else "refunded" if refunded == payment.target_minor else "partially_refunded"
    return PaymentOut(
        id=payment.id, status=status, payer_wallet_id=payment.payer_wallet_id,
        merchant_wallet_id=payment.merchant_wallet_id, source_amount=format_amount(payment.source_minor, hkd),
        source_currency=hkd.code, target_amount=format_amount(payment.target_minor, cny), target_currency=cny.code,
        amount=format_amount(payment.target_minor, cny), currency=cny.code, rate=payment.rate,
        quote_id=payment.quote_id, refunded_amount=format_amount(refunded, cny),
        settlement_window_id=payment.settlement_window_id, created_at=rfc3339(payment.created_at_us),
    )  # fmt: skip


def _answer(model: PaymentOut | RefundOut, replayed: bool) -> web.Response:
    headers = {REPLAYED_HEADER: "true"} if replayed else None
    return web.json_response(model.model_dump(mode="json"), status=200 if replayed else 201, headers=headers)


@routes.route(
    "POST",
    "/v1/payments",
    summary="Pay a Shenzhen merchant from a Hong Kong wallet at a quote's rate",
    description="One linked chain, all or nothing: the payer's HKD is debited the quote's source amount, "
    "the merchant's CNY wallet is credited the exact price, and the payer institution's obligation to "
    "the merchant's acquirer is recorded in the open settlement window under its net debit cap.",
    request=PaymentCreate,
    responses={201: PaymentOut, 200: PaymentOut},
    problems=[*PAYMENT_REFUSALS, (409, "quote_expired")],
)
async def create_payment(request: web.Request) -> web.Response:
    body = await read_json(request, PaymentCreate)
    currency = await currency_named(request, body.currency)
    amount_minor = minor_units(body.amount, currency)
    payment = PaymentRequest(
        body.id, body.payer_wallet_id, body.merchant_wallet_id, amount_minor, currency.code, body.quote_id
    )
    with wallet_errors():
        outcome = await shielded(settlement(request).payments.pay(caller_id(request), payment))
    if not outcome.ok or outcome.payment is None:
        return _refusal_response(request, outcome.code, outcome.replayed)
    return _answer(await _payment_out(request, outcome.payment), outcome.replayed)


@routes.route(
    "GET",
    "/v1/payments/{id}",
    summary="One of the caller's payments",
    responses={200: PaymentOut},
    problems=["not_found"],
)
async def get_payment(request: web.Request) -> web.Response:
    payment_id = uuid_in_path(request)
    with wallet_errors():
        payment = await settlement(request).payments.get(caller_id(request), payment_id)
    if payment is None:
        raise ProblemError("not_found", "no such payment", 404)
    return web.json_response((await _payment_out(request, payment)).model_dump(mode="json"))


async def _refund_out(request: web.Request, refund: Refund) -> RefundOut:
    cny, hkd = await currency_named(request, "CNY"), await currency_named(request, "HKD")
    return RefundOut(
        id=refund.id, payment_id=refund.payment_id, amount=format_amount(refund.target_minor, cny), currency=cny.code,
        source_amount=format_amount(refund.source_minor, hkd), source_currency=hkd.code,
        settlement_window_id=refund.settlement_window_id, created_at=rfc3339(refund.created_at_us),
    )  # fmt: skip


@routes.route(
    "POST",
    "/v1/payments/{id}/refunds",
    summary="Refund a payment, in whole or in part, at its own rate",
    description="Reduces the obligation in the open window (it runs from the acquirer back to the payer "
    "institution). Refunds of a payment never add up to more than it; partial refunds add up to its HKD exactly.",
    request=RefundCreate,
    responses={201: RefundOut, 200: RefundOut},
    problems=[*PAYMENT_REFUSALS, (422, "invalid_amount")],
)
async def create_refund(request: web.Request) -> web.Response:
    payment_id = uuid_in_path(request)
    body = await read_json(request, RefundCreate)
    amount_minor = None if body.amount is None else minor_units(body.amount, await _cny(request))
    with wallet_errors():
        outcome = await shielded(
            settlement(request).refunds.refund(caller_id(request), RefundRequest(body.id, payment_id, amount_minor))
        )
    if not outcome.ok or outcome.refund is None:
        return _refusal_response(request, outcome.code, outcome.replayed)
    return _answer(await _refund_out(request, outcome.refund), outcome.replayed)


async def _cny(request: web.Request) -> Currency:
    return await currency_named(request, "CNY")
