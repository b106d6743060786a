"""The audit chain's head: what an institution records to check later that history was not
rewritten (``ledger verify`` checks the chain against such anchors)."""

from __future__ import annotations

import base64

from aiohttp import web

from service.keys import LEDGER_KEY
from service.openapi import RouteTable
from service.routes._common import json_response, rfc3339
from service.schemas import AuditHeadOut

routes = RouteTable(tag="audit")


@routes.route(
    "GET",
    "/v1/audit/head",
    summary="The newest sealed block of the audit chain, signed by the ledger",
    description="`hash` is lowercase hex; `signature` and `public_key` are base64. Before the first "
    "block, `sequence` is 0 and `hash` and `signature` are null.",
    responses={200: AuditHeadOut},
)
async def get_audit_head(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER_KEY]
    block = await ledger.newest_block()
    public_key = base64.b64encode(bytes(ledger.verify_key)).decode("ascii")
    if block is None:
        return json_response(AuditHeadOut(sequence=0, hash=None, signature=None, public_key=public_key))
    return json_response(
        AuditHeadOut(
            sequence=block.sequence,
            hash=block.hash.hex(),
            signature=base64.b64encode(block.signature).decode("ascii"),
            public_key=public_key,
            created_at=rfc3339(block.created_at_us),
        )
    )
