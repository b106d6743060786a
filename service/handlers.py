"""What route handlers use to read a request and to write money safely.

- :func:`read_json` reads the body under the size limit, checks that it is JSON, parses it and
  validates it against a pydantic model, raising a problem with a stable code for each failure.
- :func:`shielded` runs an awaitable to its end even if the handler is cancelled. Every handler
  that hands work to the batcher (``batcher.submit``/``submit_many``) awaits it through
  ``shielded``: a client that disconnects, or a server that cancels handlers on shutdown, must not
  leave a payment half-done from the caller's side while the batch commits anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

import pydantic_core
from aiohttp import web
from pydantic import BaseModel, ValidationError

from service.keys import BODY_KEY, BODY_SIZE_MAX_KEY, CALLER_KEY, REQUEST_ID_KEY, VerifiedCaller
from service.problems import ProblemError, validation_problem

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)
ResultT = TypeVar("ResultT")

BODY_SIZE_MAX_BYTES_DEFAULT = 1024 * 1024  # 1 MiB: a batch of 1,000 transfers fits with room to spare
BODY_READ_CHUNK_BYTES = 64 * 1024
JSON_CONTENT_TYPE = "application/json"


def too_large(limit_bytes: int) -> ProblemError:
    return ProblemError("payload_too_large", f"the request body is larger than {limit_bytes} bytes", 413)


async def read_body(request: web.Request) -> bytes:
    """The request body, read once and at most ``BODY_SIZE_MAX_KEY`` bytes. The declared length is
    checked first, and the bytes are counted as they arrive, so that a chunked body (which has no
    Content-Length) cannot pass the limit either."""
    cached = request.get(BODY_KEY)
    if cached is not None:
        return cached
    limit_bytes = request.app[BODY_SIZE_MAX_KEY]
    if request.content_length is not None and request.content_length > limit_bytes:
        raise too_large(limit_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(BODY_READ_CHUNK_BYTES):
        size += len(chunk)
        if size > limit_bytes:
            raise too_large(limit_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    request[BODY_KEY] = body
    return body


def is_json_content_type(request: web.BaseRequest) -> bool:
    """``application/json`` or a ``+json`` type, in UTF-8 (RFC 8259: JSON between systems is UTF-8)."""
    content_type = request.content_type
    is_json = content_type == JSON_CONTENT_TYPE or content_type.endswith("+json")
    return is_json and request.charset in (None, "utf-8")


async def read_json(request: web.Request, model: type[ModelT]) -> ModelT:
    """The body validated as ``model``, or a problem: 415 ``invalid_request`` for a non-JSON content
    type, 413 ``payload_too_large``, 400 ``invalid_request`` for an empty or malformed body, NaN or
    Infinity, or fields that do not validate (with ``errors``), 400 ``invalid_amount`` when only
    amounts are wrong.

    Validation is strict (JSON mode: strings still become UUIDs and datetimes, but ``"1"`` is no
    integer and ``1.5`` no amount). A key given twice keeps its last value, as most JSON parsers
    do; the signature covers the exact bytes, so no one else can have added the second one."""
    if not is_json_content_type(request):
        detail = f"the body must be {JSON_CONTENT_TYPE} (UTF-8), not {request.headers.get('Content-Type', 'absent')}"
        raise ProblemError("invalid_request", detail, 415)
    body = await read_body(request)
    if not body.strip():
        raise ProblemError("invalid_request", "a JSON body is required", 400)
    try:
        # Parsed once here only to refuse NaN and Infinity, which pydantic's own parser accepts;
        # the second parse below costs microseconds for bodies this size.
        pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as error:
        raise ProblemError("invalid_request", f"the body is not valid JSON: {error}", 400) from None
    try:
        return model.model_validate_json(body, strict=True)
    except ValidationError as error:
        raise validation_problem(error) from None


def caller(request: web.Request) -> VerifiedCaller:
    """Who signed this /v1/ request (set by the authentication middleware)."""
    return request[CALLER_KEY]


def request_id(request: web.Request) -> str:
    return request[REQUEST_ID_KEY]


async def shielded(awaitable: Awaitable[ResultT]) -> ResultT:
    """Await ``awaitable`` so that cancelling the caller does not cancel it: the batch a payment
    joined commits whether or not the client is still there, and the client learns the outcome by
    retrying the same id. Use for every call into the batcher."""
    task = asyncio.ensure_future(awaitable)
    _in_flight.add(task)  # the event loop keeps only weak references to tasks
    task.add_done_callback(_in_flight.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_log_abandoned)
        raise


# Tasks shielded from their caller's cancellation, kept alive until they finish. Bookkeeping for
# the event loop's weak references, not a resource: it holds nothing once the tasks are done.
_in_flight: set[asyncio.Future] = set()


def _log_abandoned(task: asyncio.Future) -> None:
    if task.cancelled():
        log.warning("a shielded write was cancelled after its caller left")
    elif (error := task.exception()) is not None:
        log.warning("a shielded write failed after its caller left: %r", error)
