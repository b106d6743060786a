"""Who is calling: a signed request that does no ledger work.

``GET /v1/whoami`` answers the institution whose key signed the request, as the signature check
saw it. Integrators use it to check their signing set-up (key id, key, clock) before moving money;
the load tests use it as the "signature only" endpoint, to tell the cost of RFC 9421 verification
from the cost of the ledger (``python -m loadtests capacity``). Its one database touch is the key
lookup that every signed request makes (cached for a few seconds per key id).
"""

from __future__ import annotations

import datetime

from aiohttp import web

from service.handlers import caller
from service.openapi import RouteTable
from service.routes._common import json_response
from service.schemas import CallerOut

routes = RouteTable(tag="institutions")


@routes.route(
    "GET",
    "/v1/whoami",
    summary="The signing institution, as the server verified the signature",
    description="No ledger work: a check of the caller's signing set-up, and the load tests' signature-only endpoint.",
    responses={200: CallerOut},
)
async def whoami(request: web.Request) -> web.Response:
    verified = caller(request)
    created = getattr(verified, "created", None)
    signed_at = None if created is None else datetime.datetime.fromtimestamp(created, datetime.UTC)
    components = list(getattr(verified, "covered_components", ()))
    return json_response(CallerOut(institution_id=verified.key_id, signed_at=signed_at, covered_components=components))
