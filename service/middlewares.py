"""The app's middlewares, outermost first (``MIDDLEWARES``):

1. request id: every response, errors included, carries ``X-Request-Id``;
2. metrics: requests by route template and status, latency, after errors became responses;
3. errors: EVERY exception becomes an RFC 9457 problem (a bug is a 500 with no traceback in the
   body, logged with its traceback and the request id);
4. body limits: a declared Content-Length over the maximum is refused before anything is read,
   and a body sent to a route must be JSON (``read_json`` also counts the bytes as they arrive),
   except the console's HTML forms under ``/console/``;
5. authentication: every ``/v1/`` request is verified by the app's authenticator before routing
   reaches its handler, unknown ``/v1/`` paths included (no unsigned probing of which exist).
"""

from __future__ import annotations

import logging
import re
import time

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError

from ledger.errors import LedgerError
from ledger.ids import uuid7
from service.console.state import CONSOLE_PATH_PREFIX
from service.handlers import is_json_content_type, read_body, too_large
from service.keys import AUTHENTICATOR_KEY, BODY_SIZE_MAX_KEY, CALLER_KEY, METRICS_KEY, REQUEST_ID_KEY
from service.metrics import route_template
from service.openapi import BODY_METHODS, SIGNED_PATH_PREFIX
from service.problems import (
    ProblemError,
    http_exception_problem,
    internal_problem,
    ledger_problem,
    problem_like,
    problem_response,
    validation_problem,
)

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# A client's id is echoed only if it is short and plain: it ends up in logs and headers.
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@web.middleware
async def request_id_middleware(request: web.Request, handler) -> web.StreamResponse:
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = offered if CLIENT_REQUEST_ID.fullmatch(offered) else str(uuid7())
    request[REQUEST_ID_KEY] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as redirect:  # only < 400 get here: the error middleware answers the rest
        redirect.headers[REQUEST_ID_HEADER] = request_id
        raise
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


@web.middleware
async def metrics_middleware(request: web.Request, handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as redirect:
        status = redirect.status
        raise
    finally:
        metrics = request.app[METRICS_KEY]
        metrics.observe_request(route_template(request), request.method, status, time.perf_counter() - started)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:  # redirects and the like are answers, not errors
            raise
        problem = http_exception_problem(error)
    except Exception as error:  # every exception becomes a problem: none may reach the client raw
        problem = _problem_for(request, error)
    request.app[METRICS_KEY].record_problem(problem.code)
    return problem_response(problem, request.get(REQUEST_ID_KEY))


def _problem_for(request: web.Request, error: Exception) -> ProblemError:
    if isinstance(error, ProblemError):
        return error
    if isinstance(error, ValidationError):
        return validation_problem(error)
    if isinstance(error, LedgerError) and (problem := ledger_problem(error)) is not None:
        return problem
    if (problem := problem_like(error)) is not None:  # service.auth.SignatureProblem, by its shape
        return problem
    request_id = request.get(REQUEST_ID_KEY)
    if isinstance(error, OperationalError | InterfaceError):
        # The database is away or refused us: the client may retry, it is not a bug of ours.
        log.warning("request %s %s %s: database unavailable: %r", request_id, request.method, request.path, error)
        return ProblemError("unavailable", "the database is unavailable; retry shortly", 503)
    log.error("request %s %s %s failed", request_id, request.method, request.path, exc_info=error)
    return internal_problem(request_id)


@web.middleware
async def body_limit_middleware(request: web.Request, handler) -> web.StreamResponse:
    limit_bytes = request.app[BODY_SIZE_MAX_KEY]
    if request.content_length is not None and request.content_length > limit_bytes:
        raise too_large(limit_bytes)
    routed = request.match_info.http_exception is None
    # The console's forms are HTML forms (application/x-www-form-urlencoded), not JSON.
    is_console = request.path.startswith(CONSOLE_PATH_PREFIX + "/")
    json_expected = routed and not is_console and request.method in BODY_METHODS and request.body_exists
    if json_expected and not is_json_content_type(request):
        content_type = request.headers.get("Content-Type", "absent")
        raise ProblemError("invalid_request", f"request bodies are application/json, not {content_type}", 415)
    return await handler(request)


@web.middleware
async def authentication_middleware(request: web.Request, handler) -> web.StreamResponse:
    if request.path.startswith(SIGNED_PATH_PREFIX):
        body = await read_body(request)  # the signature covers the body's digest
        request[CALLER_KEY] = await request.app[AUTHENTICATOR_KEY](request, body)
    return await handler(request)


MIDDLEWARES = (
    request_id_middleware,
    metrics_middleware,
    error_middleware,
    body_limit_middleware,
    authentication_middleware,
)
