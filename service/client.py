"""An async client for integrators: signs every request (RFC 9421, Ed25519), retries safely, raises typed errors.

Retrying is safe because the body is serialised ONCE and the same bytes (with the same client-chosen ids)
are sent on every attempt: the ledger answers a repeated id with the original result
(``Idempotent-Replayed: true``), so a transfer is never made twice. Each attempt is signed afresh, so a
retry after a long ``Retry-After`` still has a ``created`` inside the server's 300 s window.

    async with LedgerClient("https://ledger.example", key_id="hk-alphapay", signing_key=key) as ledger:
        result = await ledger.post("/v1/transfers", {"id": str(transfer_id), "amount": "128.50", ...})
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json as json_module
import random
import shlex
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import aiohttp
from nacl.signing import SigningKey, VerifyKey
from yarl import URL

from ledger.ids import uuid7
from service.auth import sign_request

RETRY_STATUSES = frozenset({502, 503, 504})
RETRIES_MAX_DEFAULT = 3
TIMEOUT_S_DEFAULT = 10.0
BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 5.0
# A server asking for a longer pause than this is treated as down for now: the caller decides what next.
RETRY_AFTER_MAX_S = 30.0


# --- errors --------------------------------------------------------------------------------------------


class LedgerApiError(Exception):
    """The ledger answered with an RFC 9457 problem (or an error status); ``code`` is its stable code."""

    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem or {}


class AuthenticationError(LedgerApiError):
    """The request's signature or Content-Digest was refused: check the key id, key, clock and body bytes."""


class ForbiddenError(LedgerApiError):
    """The signer may not act on this resource (another institution's wallet, an operator-only route)."""


class NotFoundError(LedgerApiError):
    """No such resource, or not one the signer may see."""


class ConflictError(LedgerApiError):
    """The id was already used with a different body: choose a new id or resend the original body."""


class RefusedError(LedgerApiError):
    """A valid request the ledger refused by its rules (funds, limits, wallet state, caps, quotes, windows)."""


class ValidationError(LedgerApiError):
    """The request was malformed; ``problem["errors"]`` lists the fields when the server says which."""


class ServerError(LedgerApiError):
    """The ledger failed (5xx), after the retries that were safe to make."""


class LedgerConnectionError(LedgerApiError):
    """No answer at all (connection refused or reset, timeout) after every retry; status is 0."""


ERROR_CLASS_BY_CODE: dict[str, type[LedgerApiError]] = {
    **dict.fromkeys(
        ["signature_missing", "signature_invalid", "signature_expired", "unknown_key", "content_digest_mismatch"],
        AuthenticationError,
    ),
    "forbidden": ForbiddenError,
    **dict.fromkeys(["not_found", "pending_transfer_not_found"], NotFoundError),
    "exists_with_different_fields": ConflictError,
    **dict.fromkeys(
        [
            "insufficient_funds",
            "limit_exceeded",
            "currency_mismatch",
            "wallet_frozen",
            "wallet_closed",
            "wallet_not_empty",
            "pending_transfer_already_resolved",
            "pending_transfer_expired",
            "quote_expired",
            "quote_already_used",
            "net_debit_cap_exceeded",
            "window_not_open",
            "batch_not_settleable",
        ],
        RefusedError,
    ),
    **dict.fromkeys(["invalid_request", "invalid_amount", "payload_too_large"], ValidationError),
}


def error_from_problem(status: int, problem: dict[str, Any] | None, text: str = "") -> LedgerApiError:
    """The typed error for an error answer: by its stable code, else by its status."""
    problem = problem or {}
    code = problem.get("code") if isinstance(problem.get("code"), str) else f"http_{status}"
    detail = problem.get("detail") if isinstance(problem.get("detail"), str) else (text[:500] or str(status))
    error_class = ERROR_CLASS_BY_CODE.get(code, ServerError if status >= 500 else LedgerApiError)
    return error_class(status, code, detail, problem)


# --- results -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerResponse:
    """A successful answer: ``data`` is the parsed JSON (None when the answer is not JSON), ``content`` the bytes."""

    status: int
    headers: Mapping[str, str]
    data: Any
    content: bytes

    @property
    def replayed(self) -> bool:
        """True when the ledger answered a repeated id with the original result instead of acting again."""
        return self.headers.get("Idempotent-Replayed", "").strip().lower() == "true"


# --- the client ----------------------------------------------------------------------------------------


class LedgerClient:
    """Signed, retrying access to the ledger's /v1 API. Use as ``async with``, or call ``close()``."""

    def __init__(
        self,
        base_url: str,
        *,
        key_id: str,
        signing_key: SigningKey,
        session: aiohttp.ClientSession | None = None,
        retries_max: int = RETRIES_MAX_DEFAULT,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        backoff_base_s: float = BACKOFF_BASE_S,
    ) -> None:
        if retries_max < 0:
            raise ValueError("retries_max must be 0 or more")
        self.base_url = base_url.rstrip("/")
        self.key_id = key_id
        self._signing_key = signing_key
        self._session = session
        self._owns_session = session is None
        self.retries_max = retries_max
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        # A session the caller passed in is theirs to close.
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> LedgerResponse:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, json: Any = None, params: Mapping[str, Any] | None = None) -> LedgerResponse:
        return await self.request("POST", path, json=json, params=params)

    # -- typed conveniences: one per endpoint; each returns the answer's JSON body -------------
    # Amounts are decimal strings or Decimals (never floats); ids are UUIDs or their text. A
    # transfer id left out is chosen here, once, so that every retry of the call sends the same id.

    async def create_institution(
        self,
        institution_id: str,
        name: str,
        kind: str,
        public_key: str,
        *,
        net_debit_cap: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Operator only. ``public_key`` is base64 of the 32-byte Ed25519 key."""
        payload: dict[str, Any] = {"id": institution_id, "name": name, "kind": kind, "public_key": public_key}
        if net_debit_cap is not None:
            payload["net_debit_cap"] = dict(net_debit_cap)
        return (await self.post("/v1/institutions", payload)).data

    async def get_institution(self, institution_id: str) -> dict[str, Any]:
        return (await self.get(f"/v1/institutions/{_segment(institution_id)}")).data

    async def list_institutions(self, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        return (await self.get("/v1/institutions", _page(limit, cursor))).data

    async def add_key(self, institution_id: str, public_key: str) -> dict[str, Any]:
        return (await self.post(f"/v1/institutions/{_segment(institution_id)}/keys", {"public_key": public_key})).data

    async def retire_key(self, institution_id: str, public_key: str) -> dict[str, Any]:
        path = f"/v1/institutions/{_segment(institution_id)}/keys/retire"
        return (await self.post(path, {"public_key": public_key})).data

    async def create_wallet(
        self,
        owner_ref: str,
        currency: str,
        *,
        owner_kind: str = "person",
        wallet_id: UUID | str | None = None,
        tier: int | None = None,
        limit_profile: str | None = None,
        merchant: Mapping[str, str] | None = None,
        identity_hash: str | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"owner_ref": owner_ref, "owner_kind": owner_kind, "currency": currency}
        optional = {"tier": tier, "limit_profile": limit_profile, "identity_hash": identity_hash}
        payload |= {name: value for name, value in optional.items() if value is not None}
        payload["id"] = str(wallet_id or uuid7())
        if merchant is not None:
            payload["merchant"] = dict(merchant)
        return (await self.post("/v1/wallets", payload)).data

    async def get_wallet(self, wallet_id: UUID | str) -> dict[str, Any]:
        return (await self.get(f"/v1/wallets/{_segment(wallet_id)}")).data

    async def statement(
        self, wallet_id: UUID | str, *, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of the wallet's statement, newest first: ``{items, next_cursor}``."""
        return (await self.get(f"/v1/wallets/{_segment(wallet_id)}/transfers", _page(limit, cursor))).data

    async def freeze_wallet(self, wallet_id: UUID | str) -> dict[str, Any]:
        return (await self.post(f"/v1/wallets/{_segment(wallet_id)}/freeze")).data

    async def unfreeze_wallet(self, wallet_id: UUID | str) -> dict[str, Any]:
        return (await self.post(f"/v1/wallets/{_segment(wallet_id)}/unfreeze")).data

    async def close_wallet(self, wallet_id: UUID | str) -> dict[str, Any]:
        return (await self.post(f"/v1/wallets/{_segment(wallet_id)}/close")).data

    async def change_tier(self, wallet_id: UUID | str, tier: int) -> dict[str, Any]:
        return (await self.post(f"/v1/wallets/{_segment(wallet_id)}/tier", {"tier": tier})).data

    async def deposit(
        self, wallet_id: UUID | str, amount: str | Decimal, *, deposit_id: UUID | str | None = None
    ) -> dict[str, Any]:
        payload = {"id": str(deposit_id or uuid7()), "amount": amount}
        return (await self.post(f"/v1/wallets/{_segment(wallet_id)}/deposits", payload)).data

    async def withdraw(
        self, wallet_id: UUID | str, amount: str | Decimal, *, withdrawal_id: UUID | str | None = None
    ) -> dict[str, Any]:
        payload = {"id": str(withdrawal_id or uuid7()), "amount": amount}
        return (await self.post(f"/v1/wallets/{_segment(wallet_id)}/withdrawals", payload)).data

    async def transfer(
        self,
        source_wallet_id: UUID | str,
        target_wallet_id: UUID | str,
        amount: str | Decimal,
        currency: str,
        *,
        transfer_id: UUID | str | None = None,
        pending: bool = False,
        timeout_seconds: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """201 (or the original answer when the id was used before). A refusal raises ``RefusedError``."""
        return (
            await self.post(
                "/v1/transfers",
                transfer_payload(
                    source_wallet_id, target_wallet_id, amount, currency, transfer_id=transfer_id,
                    pending=pending, timeout_seconds=timeout_seconds, metadata=metadata,
                ),
            )
        ).data  # fmt: skip

    async def transfer_batch(self, transfers: list[Mapping[str, Any]], *, atomic: bool) -> dict[str, Any]:
        """``transfers`` as ``transfer_payload`` makes them; per-item results, never raised."""
        return (await self.post("/v1/transfer-batches", {"transfers": list(transfers), "atomic": atomic})).data

    async def post_transfer(self, transfer_id: UUID | str, amount: str | Decimal | None = None) -> dict[str, Any]:
        """Post a pending transfer, all of it or ``amount`` of it."""
        payload = {"amount": amount} if amount is not None else None
        return (await self.post(f"/v1/transfers/{_segment(transfer_id)}/post", payload)).data

    async def void_transfer(self, transfer_id: UUID | str) -> dict[str, Any]:
        return (await self.post(f"/v1/transfers/{_segment(transfer_id)}/void")).data

    async def get_transfer(self, transfer_id: UUID | str) -> dict[str, Any]:
        return (await self.get(f"/v1/transfers/{_segment(transfer_id)}")).data

    async def audit_head(self) -> dict[str, Any]:
        return (await self.get("/v1/audit/head")).data

    async def set_rate(
        self, source_currency: str, target_currency: str, mid_rate: str | Decimal, spread_bps: int
    ) -> dict[str, Any]:
        """Operator only: the pair's rate from now on (``mid_rate`` target per source unit)."""
        payload = {
            "source_currency": source_currency, "target_currency": target_currency,
            "mid_rate": mid_rate, "spread_bps": spread_bps,
        }  # fmt: skip
        return (await self.post("/v1/fx/rates", payload)).data

    async def rates(
        self, *, history: bool = False, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """The current rate of each pair, or with ``history`` one page of every rate set, newest first."""
        params = (_page(limit, cursor) or {}) | ({"history": "true"} if history else {})
        return (await self.get("/v1/fx/rates", params or None)).data

    async def quote(
        self,
        source_currency: str,
        target_currency: str,
        *,
        source_amount: str | Decimal | None = None,
        target_amount: str | Decimal | None = None,
    ) -> dict[str, Any]:
        """A signed quote; give exactly one amount. Check it with :func:`verify_quote`."""
        payload: dict[str, Any] = {"source_currency": source_currency, "target_currency": target_currency}
        amounts = {"source_amount": source_amount, "target_amount": target_amount}
        payload |= {name: amount for name, amount in amounts.items() if amount is not None}
        return (await self.post("/v1/fx/quotes", payload)).data

    async def get_quote(self, quote_id: UUID | str) -> dict[str, Any]:
        return (await self.get(f"/v1/fx/quotes/{_segment(quote_id)}")).data

    # -- payments and settlement ----------------------------------------------------------------

    async def pay(
        self,
        payer_wallet_id: UUID | str,
        merchant_wallet_id: UUID | str,
        quote: Mapping[str, Any],
        *,
        payment_id: UUID | str | None = None,
    ) -> dict[str, Any]:
        """Pay ``quote``'s target amount (CNY) to a Shenzhen merchant from the caller's HKD wallet."""
        payload = {
            "id": str(payment_id or uuid7()), "payer_wallet_id": str(payer_wallet_id),
            "merchant_wallet_id": str(merchant_wallet_id), "amount": quote["target_amount"],
            "currency": quote["target_currency"], "quote_id": quote["id"],
        }  # fmt: skip
        return (await self.post("/v1/payments", payload)).data

    async def get_payment(self, payment_id: UUID | str) -> dict[str, Any]:
        return (await self.get(f"/v1/payments/{_segment(payment_id)}")).data

    async def refund(
        self, payment_id: UUID | str, amount: str | Decimal | None = None, *, refund_id: UUID | str | None = None
    ) -> dict[str, Any]:
        """Refund a payment in part (``amount``, CNY) or in whole (what remains)."""
        payload: dict[str, Any] = {"id": str(refund_id or uuid7())} | ({"amount": amount} if amount is not None else {})
        return (await self.post(f"/v1/payments/{_segment(payment_id)}/refunds", payload)).data

    async def prefund(self, institution_id: str, amount: str | Decimal, currency: str = "CNY") -> dict[str, Any]:
        """Operator only: settlement liquidity into the institution's settlement account."""
        payload = {"id": str(uuid7()), "amount": amount, "currency": currency}
        return (await self.post(f"/v1/institutions/{_segment(institution_id)}/liquidity", payload)).data

    async def position(self, institution_id: str) -> dict[str, Any]:
        return (await self.get(f"/v1/institutions/{_segment(institution_id)}/position")).data

    async def windows(self, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        return (await self.get("/v1/settlement/windows", _page(limit, cursor))).data

    async def close_window(self, window_id: int) -> dict[str, Any]:
        """Operator only: close the open window; answers its batch (signed)."""
        return (await self.post(f"/v1/settlement/windows/{int(window_id)}/close")).data

    async def batch(self, batch_id: int) -> dict[str, Any]:
        return (await self.get(f"/v1/settlement/batches/{int(batch_id)}")).data

    async def settle(self, batch_id: int) -> dict[str, Any]:
        """Operator only: settle a closed batch (unwinding participants short of liquidity)."""
        return (await self.post(f"/v1/settlement/batches/{int(batch_id)}/settle")).data

    async def request(
        self, method: str, path: str, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> LedgerResponse:
        """Send a signed request; retry connection errors, timeouts and 502/503/504 with the same bytes.

        Raises a ``LedgerApiError`` subclass for an error answer, ``LedgerConnectionError`` when the
        ledger never answered.
        """
        method = method.upper()
        body = encode_json_body(json) if json is not None else None
        url = self.base_url + request_target(path, params)
        for attempt in range(self.retries_max + 1):
            is_last_attempt = attempt == self.retries_max
            try:
                status, headers, content = await self._send_once(method, url, body)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as error:
                if is_last_attempt:
                    raise LedgerConnectionError(0, "connection_failed", f"{method} {url}: {error!r}") from error
                await asyncio.sleep(self._backoff_s(attempt))
                continue
            if status in RETRY_STATUSES and not is_last_attempt:
                await asyncio.sleep(retry_after_s(headers) or self._backoff_s(attempt))
                continue
            return response_or_error(status, headers, content)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send_once(self, method: str, url: str, body: bytes | None) -> tuple[int, Mapping[str, str], bytes]:
        headers = {"Accept": "application/json, application/problem+json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        # Signed per attempt: a fresh created for each, over the same body bytes.
        headers |= sign_request(method, url, body, key_id=self.key_id, signing_key=self._signing_key)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        # encoded=True: send the target exactly as signed; yarl would otherwise re-quote it.
        async with self._session_or_new().request(
            method, URL(url, encoded=True), data=body, headers=headers, timeout=timeout
        ) as response:
            return response.status, response.headers, await response.read()

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _backoff_s(self, attempt: int) -> float:
        # Full jitter, so that many clients retrying after one outage do not return in step.
        return random.uniform(0, min(BACKOFF_MAX_S, self.backoff_base_s * 2**attempt))


def transfer_payload(
    source_wallet_id: UUID | str,
    target_wallet_id: UUID | str,
    amount: str | Decimal,
    currency: str,
    *,
    transfer_id: UUID | str | None = None,
    pending: bool = False,
    timeout_seconds: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``POST /v1/transfers`` body (also an item of a batch); the id is a new UUIDv7 if not given."""
    payload: dict[str, Any] = {
        "id": str(transfer_id or uuid7()),
        "source_wallet_id": str(source_wallet_id),
        "target_wallet_id": str(target_wallet_id),
        "amount": amount,
        "currency": currency,
    }
    if pending:
        payload["pending"] = True
    if timeout_seconds is not None:
        payload["timeout_seconds"] = timeout_seconds
    if metadata is not None:
        payload["metadata"] = dict(metadata)
    return payload


def _segment(value: UUID | str) -> str:
    """A path segment, percent-encoded: an id can never reach another route."""
    return urllib.parse.quote(str(value), safe="")


def _page(limit: int | None, cursor: str | None) -> dict[str, Any] | None:
    params = {name: value for name, value in (("limit", limit), ("cursor", cursor)) if value is not None}
    return params or None


def encode_json_body(payload: Any) -> bytes:
    """Compact UTF-8 JSON; Decimals become decimal strings, and floats are refused (money is never a float)."""
    _refuse_floats(payload)
    return json_module.dumps(
        payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_decimal_as_string
    ).encode("utf-8")


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise TypeError(f'{value!r} is a float: send amounts and rates as decimal strings ("128.50")')
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_floats(item)


def _decimal_as_string(value: Any) -> str:
    if isinstance(value, Decimal) and value.is_finite():
        return format(value, "f")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def request_target(path: str, params: Mapping[str, Any] | None) -> str:
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/': {path!r}")
    if not params:
        return path
    return path + ("&" if "?" in path else "?") + urllib.parse.urlencode(params, doseq=True)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or an HTTP date), capped; None if absent or unreadable."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), RETRY_AFTER_MAX_S)


def response_or_error(status: int, headers: Mapping[str, str], content: bytes) -> LedgerResponse:
    data = _json_or_none(headers, content)
    if status >= 400:
        problem = data if isinstance(data, dict) else None
        raise error_from_problem(status, problem, content.decode("utf-8", errors="replace"))
    return LedgerResponse(status, headers, data, content)


def _json_or_none(headers: Mapping[str, str], content: bytes) -> Any:
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not content or content_type not in ("application/json", "application/problem+json"):
        return None
    try:
        return json_module.loads(content)
    except ValueError:
        return None


# --- quotes ------------------------------------------------------------------------------------------

QUOTE_SIGNED_FIELDS = (
    "id", "source_currency", "target_currency", "rate", "source_amount", "target_amount", "created_at", "expires_at",
)  # fmt: skip


def quote_canonical_json(quote: Mapping[str, Any]) -> bytes:
    """The bytes the ledger signed for a quote answer: its signed fields as compact JSON with sorted
    keys, exactly as answered (``settlement.fx.canonical_quote_json`` on the server's side)."""
    signed = {name: quote[name] for name in QUOTE_SIGNED_FIELDS}
    return json_module.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def verify_quote(quote: Mapping[str, Any], ledger_public_key: str) -> None:
    """Raise ``nacl.exceptions.BadSignatureError`` unless the ledger signed this quote answer.
    ``ledger_public_key`` is ``GET /v1/audit/head``'s ``public_key`` (base64), recorded once."""
    key = VerifyKey(base64.b64decode(ledger_public_key, validate=True))
    key.verify(quote_canonical_json(quote), base64.b64decode(quote["signature"], validate=True))


# --- signing for curl ----------------------------------------------------------------------------------


def signed_curl_headers(
    method: str, url: str, body: bytes | None, *, key_id: str, signing_key: SigningKey
) -> list[str]:
    """``-H`` arguments (shell-quoted) that sign a curl request; valid for 300 s from now."""
    headers = sign_request(method, url, body, key_id=key_id, signing_key=signing_key)
    if body:
        headers = {"Content-Type": "application/json", **headers}
    return [f"-H {shlex.quote(f'{name}: {value}')}" for name, value in headers.items()]
