"""Institutions: registered by an operator, read by an operator or themselves, and their signing
keys rotated (add a key, then retire the old one) by an operator or themselves.

Key changes made here take effect on this instance at once (the key cache forgets the
institution); other instances see them within ``service.key_resolver.KEY_CACHE_TTL_S``.
"""

from __future__ import annotations

import base64

from aiohttp import web

from ledger import Currency, format_amount
from service.errors_map import wallet_errors
from service.handlers import read_json
from service.keys import KEY_RESOLVER_KEY
from service.openapi import RouteTable
from service.problems import ProblemError
from service.routes._common import (
    caller_institution,
    created_or_replayed,
    currency_named,
    json_response,
    minor_units,
    page_params_text,
    require_operator,
    rfc3339,
    rfc3339_or_none,
    wallets,
)
from service.schemas import InstitutionCreate, InstitutionKeyOut, InstitutionOut, KeyChange, MoneyOut, Page
from wallets.model import Institution, InstitutionKind

routes = RouteTable(tag="institutions")


def institution_out(institution: Institution) -> InstitutionOut:
    return InstitutionOut(
        id=institution.id,
        name=institution.name,
        kind=str(institution.kind),
        keys=[
            InstitutionKeyOut(
                public_key=base64.b64encode(key.public_key).decode("ascii"),
                active=key.active,
                added_at=rfc3339(key.added_at_us),
                retired_at=rfc3339_or_none(key.retired_at_us),
            )
            for key in institution.keys
        ],
        created_at=rfc3339(institution.created_at_us),
        net_debit_cap=_cap_out(institution.net_debit_cap),
    )


def _cap_out(cap: tuple[int, str] | None) -> MoneyOut | None:
    if cap is None:
        return None
    amount_minor, code = cap
    # A cap is in one of the corridor's system currencies (CNY, HKD), both of exponent 2.
    return MoneyOut(amount=format_amount(amount_minor, Currency(code, 2)), currency=code)


@routes.route(
    "POST",
    "/v1/institutions",
    summary="Register an institution (operator)",
    description="The same id with the same fields answers 200 with the existing institution and "
    "`Idempotent-Replayed: true`; with other fields 409 `exists_with_different_fields`.",
    request=InstitutionCreate,
    responses={201: InstitutionOut, 200: InstitutionOut},
    problems=["forbidden", "exists_with_different_fields", "invalid_amount"],
)
async def create_institution(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    body = await read_json(request, InstitutionCreate)
    net_debit_cap = None
    if body.net_debit_cap is not None:
        currency = await currency_named(request, body.net_debit_cap.currency, pointer="#/net_debit_cap/currency")
        cap_minor = minor_units(body.net_debit_cap.amount, currency, pointer="#/net_debit_cap/amount")
        net_debit_cap = (cap_minor, currency.code)
    with wallet_errors():
        institution, created = await wallets(request).register_institution(
            body.id, InstitutionKind(body.kind), body.name, base64.b64decode(body.public_key), actor=operator.id,
            net_debit_cap=net_debit_cap,
        )  # fmt: skip
    request.app[KEY_RESOLVER_KEY].forget(institution.id)
    return created_or_replayed(institution_out(institution), created)


@routes.route(
    "GET",
    "/v1/institutions",
    summary="List institutions (operator), by id",
    description="Query: `limit` (1–500, default 50) and `cursor` (the previous page's `next_cursor`).",
    responses={200: Page[InstitutionOut]},
    problems=["forbidden", "invalid_request"],
)
async def list_institutions(request: web.Request) -> web.Response:
    await require_operator(request)
    limit, cursor = page_params_text(request)
    with wallet_errors():
        everyone = sorted(await wallets(request).list_institutions(), key=lambda institution: institution.id)
    after = [institution for institution in everyone if cursor is None or institution.id > cursor]
    page = after[:limit]
    next_cursor = page[-1].id if len(after) > limit else None
    return json_response(Page[InstitutionOut](items=[institution_out(i) for i in page], next_cursor=next_cursor))


async def _institution_for(request: web.Request) -> Institution:
    """The institution of the path, for an operator or the institution itself (403 for others,
    whether or not it exists: institution ids are not secret, but nothing is told for free)."""
    institution_id = request.match_info["id"]
    signer = await caller_institution(request)
    if signer.id != institution_id and signer.kind is not InstitutionKind.OPERATOR:
        raise ProblemError("forbidden", "an institution may read and change only itself", 403)
    if signer.id == institution_id:
        return signer
    with wallet_errors():
        return await wallets(request).get_institution(institution_id)


@routes.route(
    "GET",
    "/v1/institutions/{id}",
    summary="An institution (operator, or the institution itself)",
    responses={200: InstitutionOut},
    problems=["forbidden", "not_found"],
)
async def get_institution(request: web.Request) -> web.Response:
    return json_response(institution_out(await _institution_for(request)))


@routes.route(
    "POST",
    "/v1/institutions/{id}/keys",
    summary="Add a signing key (operator, or the institution itself)",
    description="The new key verifies at once; the old ones keep verifying until retired. Adding an "
    "active key again changes nothing.",
    request=KeyChange,
    responses={200: InstitutionOut},
    problems=["forbidden", "not_found"],
)
async def add_institution_key(request: web.Request) -> web.Response:
    institution = await _institution_for(request)
    body = await read_json(request, KeyChange)
    with wallet_errors():
        changed = await wallets(request).add_key(institution.id, base64.b64decode(body.public_key))
    request.app[KEY_RESOLVER_KEY].forget(institution.id)
    return json_response(institution_out(changed))


@routes.route(
    "POST",
    "/v1/institutions/{id}/keys/retire",
    summary="Retire a signing key (operator, or the institution itself)",
    description="Signatures by a retired key are refused (`signature_invalid`). The last active key "
    "cannot be retired (400 `invalid_request`): add its successor first.",
    request=KeyChange,
    responses={200: InstitutionOut},
    problems=["forbidden", "not_found"],
)
async def retire_institution_key(request: web.Request) -> web.Response:
    institution = await _institution_for(request)
    body = await read_json(request, KeyChange)
    with wallet_errors():
        changed = await wallets(request).retire_key(institution.id, base64.b64decode(body.public_key))
    request.app[KEY_RESOLVER_KEY].forget(institution.id)
    return json_response(institution_out(changed))
