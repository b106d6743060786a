"""Wallets: opened, read, frozen, closed and re-tiered by their institution, their statements,
and cash in and out between a wallet and its institution's funding account.

Every call names the caller's institution: the wallets layer answers 404 for another
institution's wallet exactly as for one that does not exist, so nothing leaks.
"""

from __future__ import annotations

import json
from uuid import UUID

from aiohttp import web

from ledger import Currency
from service.errors_map import wallet_errors, wallet_problem
from service.handlers import read_json, shielded
from service.openapi import RouteTable
from service.problems import problem_response
from service.routes._common import (
    amount_text,
    balance_out,
    caller_id,
    created_or_replayed,
    currency_named,
    field_problem,
    json_response,
    minor_units,
    outcome_response,
    page_params,
    rfc3339,
    transfer_fields,
    uuid_in_path,
    wallets,
)
from service.schemas import (
    CashMovement,
    LimitsOut,
    MerchantOut,
    Page,
    StatementLineOut,
    TierChange,
    TransferOut,
    WalletBatchCreate,
    WalletBatchItem,
    WalletBatchOut,
    WalletCreate,
    WalletOut,
)
from wallets.model import Merchant, OwnerKind, Wallet, WalletSpec, WalletStatus

routes = RouteTable(tag="wallets")

MONEY_REFUSALS = (
    "insufficient_funds",
    "limit_exceeded",
    "wallet_frozen",
    "wallet_closed",
    "exists_with_different_fields",
    "invalid_amount",
    (422, "invalid_amount"),
)


def wallet_out(wallet: Wallet, currency: Currency) -> WalletOut:
    limits = wallet.limits
    return WalletOut(
        id=wallet.id,
        institution_id=wallet.institution_id,
        owner_kind=str(wallet.owner_kind),
        owner_ref=wallet.owner_ref,
        currency=wallet.currency,
        tier=wallet.tier,
        limit_profile=wallet.profile,
        status=wallet.status.value,
        balance=balance_out(wallet.balances, currency),
        limits=LimitsOut(
            profile=wallet.profile,
            balance_cap=amount_text(limits.balance_cap_minor, currency),
            transfer_cap=amount_text(limits.transfer_cap_minor, currency),
            daily_debit_cap=amount_text(limits.daily_debit_cap_minor, currency),
            annual_debit_cap=amount_text(limits.annual_debit_cap_minor, currency),
        ),
        merchant=None
        if wallet.merchant is None
        else MerchantOut(
            name=wallet.merchant.name, city=wallet.merchant.city, category_code=wallet.merchant.category_code
        ),
        created_at=rfc3339(wallet.created_at_us),
    )


async def _wallet_response(request: web.Request, wallet: Wallet, status: int = 200, *, created: bool | None = None):
    out = wallet_out(wallet, await currency_named(request, wallet.currency))
    return created_or_replayed(out, created) if created is not None else json_response(out, status)


@routes.route(
    "POST",
    "/v1/wallets",
    summary="Open a wallet",
    description="Idempotent on `id`: the same body again answers 200 with the wallet and "
    "`Idempotent-Replayed: true`; another body under that id 409 `exists_with_different_fields`. "
    "`tier` is for CNY (e-CNY) personal wallets (1–4, default 4); `limit_profile` for HKD personal "
    "wallets (default `svf-basic`); `merchant` for merchant wallets.",
    request=WalletCreate,
    responses={201: WalletOut, 200: WalletOut},
    problems=["exists_with_different_fields"],
)
async def create_wallet(request: web.Request) -> web.Response:
    body = await read_json(request, WalletCreate)
    await currency_named(request, body.currency)  # an unknown currency names its field
    with wallet_errors():
        wallet, created = await wallets(request).open_wallet(caller_id(request), _wallet_spec(body))
    return await _wallet_response(request, wallet, created=created)


def _wallet_spec(body: WalletCreate) -> WalletSpec:
    return WalletSpec(
        owner_ref=body.owner_ref,
        owner_kind=OwnerKind(body.owner_kind),
        currency=body.currency,
        id=body.id,
        tier=body.tier,
        limit_profile=body.limit_profile,
        merchant=None
        if body.merchant is None
        else Merchant(name=body.merchant.name, city=body.merchant.city, category_code=body.merchant.category_code),
        identity_hash=body.identity_hash,
    )


@routes.route(
    "POST",
    "/v1/wallet-batches",
    summary="Open up to 1,000 wallets in one request",
    description="200 with one result per wallet, in order: `status` is what `POST /v1/wallets` would "
    "have answered for it (201 opened, 200 the same wallet again with `replayed`, 409 "
    "`exists_with_different_fields`, 400 `invalid_request`), with `wallet` or `problem`. Not atomic: "
    "each wallet opens or is refused on its own. Idempotent per wallet on its `id`, exactly as the "
    "single route; give every wallet an id, so that a retried batch answers the same wallets. Ids "
    "within one batch must be distinct.",
    request=WalletBatchCreate,
    responses={200: WalletBatchOut},
)
async def create_wallet_batch(request: web.Request) -> web.Response:
    body = await read_json(request, WalletBatchCreate)
    for index, item in enumerate(body.wallets):
        await currency_named(request, item.currency, pointer=f"#/wallets/{index}/currency")
    ids = [item.id for item in body.wallets if item.id is not None]
    if len(set(ids)) != len(ids):
        raise field_problem("the wallet ids of a batch must be distinct", "#/wallets")
    with wallet_errors():
        specs = [_wallet_spec(item) for item in body.wallets]
        openings = await wallets(request).open_wallets(caller_id(request), specs)
    items = []
    for item, opening in zip(body.wallets, openings, strict=True):
        if opening.wallet is not None:
            out = wallet_out(opening.wallet, await currency_named(request, opening.wallet.currency))
            status = 201 if opening.created else 200
            items.append(WalletBatchItem(id=opening.wallet.id, status=status, replayed=not opening.created, wallet=out))
            continue
        if opening.error is None:
            raise RuntimeError("a wallet opening with neither wallet nor error")  # a bug: never guess
        problem = wallet_problem(opening.error)
        problem_body = json.loads(problem_response(problem, None).body)
        items.append(WalletBatchItem(id=item.id, status=problem.status, problem=problem_body))
    return json_response(WalletBatchOut(items=items))


@routes.route(
    "GET",
    "/v1/wallets/{id}",
    summary="A wallet of the caller's, with its balances and limits",
    responses={200: WalletOut},
    problems=["not_found"],
)
async def get_wallet(request: web.Request) -> web.Response:
    wallet_id = uuid_in_path(request)
    with wallet_errors():
        wallet = await wallets(request).get_wallet(caller_id(request), wallet_id)
    return await _wallet_response(request, wallet)


@routes.route(
    "GET",
    "/v1/wallets/{id}/transfers",
    summary="The wallet's statement, newest first, with its balances after each transfer",
    description="Query: `limit` (1–500, default 50) and `cursor` (the previous page's `next_cursor`).",
    responses={200: Page[StatementLineOut]},
    problems=["not_found", "invalid_request"],
)
async def get_wallet_statement(request: web.Request) -> web.Response:
    wallet_id = uuid_in_path(request)
    limit, cursor = page_params(request)
    with wallet_errors():
        statement = await wallets(request).statement(caller_id(request), wallet_id, limit=limit, cursor=cursor)
    items = []
    for line in statement.items:
        currency = await currency_named(request, line.transfer.currency)
        items.append(
            StatementLineOut(
                **transfer_fields(line.transfer, currency),
                side=line.side,
                balance_after=balance_out(line.balances_after, currency),
            )
        )
    next_cursor = None if statement.next_cursor is None else str(statement.next_cursor)
    return json_response(Page[StatementLineOut](items=items, next_cursor=next_cursor))


async def _set_status(request: web.Request, status: WalletStatus) -> web.Response:
    wallet_id = uuid_in_path(request)
    institution_id = caller_id(request)
    with wallet_errors():
        wallet = await wallets(request).set_wallet_status(institution_id, wallet_id, status, actor=institution_id)
    return await _wallet_response(request, wallet)


@routes.route(
    "POST",
    "/v1/wallets/{id}/freeze",
    summary="Freeze a wallet: no money in or out until unfrozen",
    responses={200: WalletOut},
    problems=["not_found", "wallet_closed"],
)
async def freeze_wallet(request: web.Request) -> web.Response:
    return await _set_status(request, WalletStatus.FROZEN)


@routes.route(
    "POST",
    "/v1/wallets/{id}/unfreeze",
    summary="Unfreeze a wallet",
    responses={200: WalletOut},
    problems=["not_found", "wallet_closed"],
)
async def unfreeze_wallet(request: web.Request) -> web.Response:
    return await _set_status(request, WalletStatus.OPEN)


@routes.route(
    "POST",
    "/v1/wallets/{id}/close",
    summary="Close a wallet for good (only at zero balance)",
    responses={200: WalletOut},
    problems=["not_found", "wallet_closed", "wallet_not_empty"],
)
async def close_wallet(request: web.Request) -> web.Response:
    return await _set_status(request, WalletStatus.CLOSED)


@routes.route(
    "POST",
    "/v1/wallets/{id}/tier",
    summary="Change an e-CNY wallet's category (1–4)",
    description="Upgrades raise the caps from the next transfer on; a downgrade whose balance cap is "
    "below the balance is refused (422 `limit_exceeded`).",
    request=TierChange,
    responses={200: WalletOut},
    problems=["not_found", "wallet_closed", "limit_exceeded"],
)
async def change_wallet_tier(request: web.Request) -> web.Response:
    wallet_id = uuid_in_path(request)
    body = await read_json(request, TierChange)
    institution_id = caller_id(request)
    with wallet_errors():
        wallet = await wallets(request).change_tier(institution_id, wallet_id, body.tier, actor=institution_id)
    return await _wallet_response(request, wallet)


async def _cash(request: web.Request, direction: str) -> web.Response:
    wallet_id: UUID = uuid_in_path(request)
    body = await read_json(request, CashMovement)
    institution_id = caller_id(request)
    book = wallets(request)
    with wallet_errors():
        wallet = await book.get_wallet(institution_id, wallet_id)
    amount_minor = minor_units(body.amount, await currency_named(request, wallet.currency))
    move = book.deposit if direction == "deposit" else book.withdraw
    with wallet_errors():
        outcome = await shielded(move(institution_id, wallet_id, body.id, amount_minor))
    return await outcome_response(request, outcome)


@routes.route(
    "POST",
    "/v1/wallets/{id}/deposits",
    summary="Cash in: the institution's funding account pays the wallet",
    description="`amount` is in the wallet's currency. Idempotent on `id`, as transfers are.",
    request=CashMovement,
    responses={201: TransferOut, 200: TransferOut},
    problems=["not_found", *MONEY_REFUSALS],
)
async def create_deposit(request: web.Request) -> web.Response:
    return await _cash(request, "deposit")


@routes.route(
    "POST",
    "/v1/wallets/{id}/withdrawals",
    summary="Cash out: the wallet pays the institution's funding account",
    description="`amount` is in the wallet's currency. Idempotent on `id`, as transfers are.",
    request=CashMovement,
    responses={201: TransferOut, 200: TransferOut},
    problems=["not_found", *MONEY_REFUSALS],
)
async def create_withdrawal(request: web.Request) -> web.Response:
    return await _cash(request, "withdrawal")
