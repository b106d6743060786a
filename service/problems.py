"""RFC 9457 problem details: the one shape every error of the HTTP API takes.

Every refusal is ``application/problem+json`` with ``{type, title, status, detail, code}``, plus
``errors`` (field problems) for validation failures and ``request_id`` (to quote to support). The
``code`` is one of the stable codes of API.md; integrators match on it, never on ``detail``.

The codes below that API.md does not list are this service's own, for answers the contract has no
code for: ``overloaded``, ``shutting_down``, ``unavailable``, ``outcome_unknown`` (all 503, retry
with the same ids) and ``internal_error`` (500, a bug of ours).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from pydantic import ValidationError

from ledger.errors import (
    InvalidAmount,
    LedgerError,
    LedgerOutcomeUnknown,
    LedgerOverloaded,
    LedgerShuttingDown,
    LedgerUnavailable,
)

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
# A URN rather than a URL: stable, and no promise of a page behind it.
PROBLEM_TYPE_PREFIX = "urn:sz-hk-ledger:problem:"
# Seconds a client should wait before retrying the same ids after a 503.
RETRY_AFTER_OVERLOADED_S = 1
RETRY_AFTER_SHUTTING_DOWN_S = 5
RETRY_AFTER_UNAVAILABLE_S = 2


@dataclass(frozen=True)
class CodeInfo:
    status: int
    title: str


# Every code the API answers, its usual status and a short human title. Routes that answer a code
# with another status (``not_found`` for a hidden 403, say) pass the status explicitly.
CODES: Mapping[str, CodeInfo] = {
    "invalid_request": CodeInfo(400, "The request is malformed"),
    "invalid_amount": CodeInfo(400, "The amount is not valid for its currency"),
    "currency_mismatch": CodeInfo(422, "The currencies do not match"),
    "insufficient_funds": CodeInfo(422, "Insufficient funds"),
    "limit_exceeded": CodeInfo(422, "A limit would be exceeded"),
    "not_found": CodeInfo(404, "Not found"),
    "forbidden": CodeInfo(403, "Forbidden"),
    "wallet_frozen": CodeInfo(422, "The wallet is frozen"),
    "wallet_closed": CodeInfo(422, "The wallet is closed"),
    "wallet_not_empty": CodeInfo(422, "The wallet is not empty"),
    "exists_with_different_fields": CodeInfo(409, "The id is taken with different fields"),
    "pending_transfer_not_found": CodeInfo(404, "Pending transfer not found"),
    "pending_transfer_already_resolved": CodeInfo(409, "Pending transfer already posted or voided"),
    "pending_transfer_expired": CodeInfo(409, "Pending transfer expired"),
    "quote_expired": CodeInfo(409, "The quote has expired"),
    "quote_already_used": CodeInfo(409, "The quote was already used"),
    "net_debit_cap_exceeded": CodeInfo(422, "The net debit cap would be exceeded"),
    "window_not_open": CodeInfo(409, "The settlement window is not open"),
    "batch_not_settleable": CodeInfo(409, "The settlement batch cannot be settled"),
    "signature_missing": CodeInfo(401, "The request is not signed"),
    "signature_invalid": CodeInfo(401, "The request signature is invalid"),
    "signature_expired": CodeInfo(401, "The request signature has expired"),
    "unknown_key": CodeInfo(401, "The signing key is not registered"),
    "content_digest_mismatch": CodeInfo(400, "The Content-Digest does not match the body"),
    "payload_too_large": CodeInfo(413, "The request body is too large"),
    # Not in API.md's list: answers the contract has no code for (see the module docstring).
    "overloaded": CodeInfo(503, "The ledger is overloaded; retry shortly with the same ids"),
    "shutting_down": CodeInfo(503, "This instance is shutting down; retry with the same ids"),
    "unavailable": CodeInfo(503, "The ledger is unavailable; retry with the same ids"),
    "outcome_unknown": CodeInfo(503, "The outcome is unknown; resubmit the same ids to learn it"),
    "internal_error": CodeInfo(500, "Internal error"),
}


class ProblemError(Exception):
    """Raise from a handler (or anything it calls) to answer a problem. The argument order
    ``(code, detail, status)`` matches ``service.auth.SignatureProblem``, which the error
    middleware maps the same way."""

    def __init__(
        self,
        code: str,
        detail: str,
        status: int | None = None,
        *,
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if code not in CODES:
            raise ValueError(f"unknown problem code {code!r}: add it to service.problems.CODES first")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status if status is not None else CODES[code].status
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})


def problem_response(problem: ProblemError, request_id: str | None) -> web.Response:
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_PREFIX + problem.code,
        "title": CODES[problem.code].title,
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    if request_id is not None:
        body["request_id"] = request_id
    return web.Response(
        status=problem.status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        charset="utf-8",
        headers=problem.headers,
    )


def field_problems(error: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as RFC 9457 field problems: a JSON Pointer into the body and a message.
    The offending input is left out on purpose: it can be large, and it is the client's own."""
    return [{"pointer": _json_pointer(item["loc"]), "detail": item["msg"]} for item in error.errors(include_url=False)]


def _json_pointer(location: tuple[int | str, ...]) -> str:
    parts = (str(part).replace("~", "~0").replace("/", "~1") for part in location)
    return "#/" + "/".join(parts) if location else "#"


def validation_problem(error: ValidationError) -> ProblemError:
    """400 with the field problems. The code is ``invalid_amount`` when every problem is an amount
    (see ``service.schemas.AmountStr``), so a client can tell a bad amount from a bad request."""
    kinds = {item["type"] for item in error.errors(include_url=False)}
    code = "invalid_amount" if kinds == {"invalid_amount"} else "invalid_request"
    count = error.error_count()
    detail = f"{count} field{'s' if count != 1 else ''} of the request {'are' if count != 1 else 'is'} not valid"
    return ProblemError(code, detail, 400, errors=field_problems(error))


def http_exception_problem(error: web.HTTPException) -> ProblemError:
    """aiohttp's own HTTP errors (no route, wrong method, body too large) in the API's codes."""
    status = error.status
    headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
    if status == 404:
        return ProblemError("not_found", "no such resource", 404)
    if status == 413:
        return ProblemError("payload_too_large", "the request body is too large", 413)
    if status == 405:
        method = getattr(error, "method", "this method")
        return ProblemError("invalid_request", f"{method} is not allowed here", 405, headers=headers)
    if 400 <= status < 500:
        return ProblemError("invalid_request", error.reason or "the request is not valid", status, headers=headers)
    if status == 503:
        return ProblemError("unavailable", error.reason or "the service is unavailable", 503)
    return ProblemError("internal_error", "an unexpected error occurred", 500)


def ledger_problem(error: LedgerError) -> ProblemError | None:
    """The ledger's exceptions that are answers, not bugs; None for the rest (a bug: 500)."""
    # LedgerOutcomeUnknown is a LedgerUnavailable: it must be matched first.
    if isinstance(error, LedgerOutcomeUnknown):
        return ProblemError("outcome_unknown", str(error), 503)
    if isinstance(error, LedgerOverloaded):
        return ProblemError("overloaded", str(error), 503, headers={"Retry-After": str(RETRY_AFTER_OVERLOADED_S)})
    if isinstance(error, LedgerShuttingDown):
        retry = {"Retry-After": str(RETRY_AFTER_SHUTTING_DOWN_S)}
        return ProblemError("shutting_down", str(error), 503, headers=retry)
    if isinstance(error, LedgerUnavailable):
        return ProblemError("unavailable", str(error), 503, headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)})
    if isinstance(error, InvalidAmount):
        return ProblemError("invalid_amount", str(error), 400)
    if isinstance(error, ValueError) and error.code == "invalid_request":  # UnknownCurrency
        return ProblemError("invalid_request", str(error), 400)
    return None


def problem_like(error: BaseException) -> ProblemError | None:
    """An exception from another module that carries ``code``, ``detail`` and a 4xx ``status`` (as
    ``service.auth.SignatureProblem`` does) without importing it here: the edge's modules stay
    independent, and a problem is recognised by its shape."""
    code, detail, status = (getattr(error, name, None) for name in ("code", "detail", "status"))
    if isinstance(code, str) and code in CODES and isinstance(detail, str) and isinstance(status, int):
        if 400 <= status < 500:
            return ProblemError(code, detail, status)
    return None


def internal_problem(request_id: str | None) -> ProblemError:
    reference = f" (request id {request_id})" if request_id else ""
    return ProblemError("internal_error", f"an unexpected error occurred{reference}; it has been logged", 500)
