"""The ledger's result codes and the wallets layer's errors in the HTTP contract's stable codes.

Two kinds of "no":

- A transfer the ledger refused (``TransferOutcome.code``) is an answer, not an exception. It maps
  to a problem here with a ``detail`` that depends on the code alone, so that the original refusal
  and every replay of it under the same id answer the same status and the same body.
- A wallets-layer exception (``wallets.errors.WalletError``) carries its own code and status;
  :func:`wallet_errors` turns it into a :class:`ProblemError` for the error middleware.

Statuses follow ``service.problems.CODES`` except where said below.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from ledger import ResultCode
from service.problems import CODES, ProblemError
from settlement.fx import FxError, InvalidQuoteAmount
from wallets.errors import WalletError

# A batch member that was not applied only because another member of its atomic batch was
# refused. The contract has no code of its own for it; 424 Failed Dependency says what happened,
# and ``detail`` names the reason.
LINKED_FAILURE_STATUS = 424


@dataclass(frozen=True)
class Refusal:
    code: str  # a stable API code
    status: int
    detail: str


def _refusal(code: str, detail: str, status: int | None = None) -> Refusal:
    return Refusal(code, status if status is not None else CODES[code].status, detail)


REFUSALS: dict[ResultCode, Refusal] = {
    ResultCode.INVALID_AMOUNT: _refusal("invalid_amount", "the amount is not valid for this transfer"),
    ResultCode.INVALID_COMMAND: _refusal("invalid_request", "the transfer is not valid"),
    ResultCode.ACCOUNTS_MUST_BE_DIFFERENT: _refusal(
        "invalid_request", "the source and target wallets must be different"
    ),
    ResultCode.EXISTS_WITH_DIFFERENT_FIELDS: _refusal(
        "exists_with_different_fields",
        "this id was already used with a different body: resend the original body or choose a new id",
    ),
    ResultCode.LINKED_EVENT_FAILED: _refusal(
        "invalid_request",
        "not applied: another transfer of this atomic batch was refused",
        LINKED_FAILURE_STATUS,
    ),
    ResultCode.LINKED_EVENT_CHAIN_OPEN: _refusal("invalid_request", "the last transfer of the batch left a chain open"),
    ResultCode.ACCOUNT_NOT_FOUND: _refusal("not_found", "a wallet of this transfer does not exist"),
    ResultCode.ACCOUNT_FROZEN: _refusal("wallet_frozen", "a wallet of this transfer is frozen"),
    ResultCode.ACCOUNT_CLOSED: _refusal("wallet_closed", "a wallet of this transfer is closed"),
    ResultCode.CURRENCY_MISMATCH: _refusal(
        "currency_mismatch", "the transfer's currency is not the currency of both wallets"
    ),
    ResultCode.INSUFFICIENT_FUNDS: _refusal("insufficient_funds", "the source wallet has insufficient funds"),
    # A debit-normal account (an institution's funding account) may not be credited past its debits.
    ResultCode.CREDITS_EXCEED_DEBITS: _refusal("insufficient_funds", "the paying account has insufficient funds"),
    ResultCode.BALANCE_CAP_EXCEEDED: _refusal("limit_exceeded", "the target wallet's balance cap would be exceeded"),
    ResultCode.TRANSFER_CAP_EXCEEDED: _refusal(
        "limit_exceeded", "the amount is above the source wallet's per-payment cap"
    ),
    ResultCode.DAILY_DEBIT_CAP_EXCEEDED: _refusal(
        "limit_exceeded", "the source wallet's daily payment cap would be exceeded"
    ),
    ResultCode.ANNUAL_DEBIT_CAP_EXCEEDED: _refusal(
        "limit_exceeded", "the source wallet's annual payment cap would be exceeded"
    ),
    # Wallets have no overdraft cap: on a transfer it is the payer institution's net debit cap in
    # force, on the obligation a transfer to another institution's wallet records.
    ResultCode.DEBIT_BALANCE_CAP_EXCEEDED: _refusal(
        "net_debit_cap_exceeded", "the transfer would take the paying institution past its net debit cap in force"
    ),
    # Balances would pass the 64-bit range: only absurd amounts get here.
    ResultCode.OVERFLOW: _refusal("invalid_amount", "the amount would overflow a balance", 422),
    ResultCode.PENDING_TRANSFER_NOT_FOUND: _refusal("pending_transfer_not_found", "no pending transfer has this id"),
    ResultCode.PENDING_TRANSFER_NOT_PENDING: _refusal(
        "pending_transfer_not_found", "the transfer with this id is not a pending transfer"
    ),
    ResultCode.PENDING_TRANSFER_ALREADY_POSTED: _refusal(
        "pending_transfer_already_resolved", "the pending transfer was already posted"
    ),
    ResultCode.PENDING_TRANSFER_ALREADY_VOIDED: _refusal(
        "pending_transfer_already_resolved", "the pending transfer was already voided"
    ),
    ResultCode.PENDING_TRANSFER_EXPIRED: _refusal(
        "pending_transfer_expired", "the pending transfer expired and its funds went back"
    ),
    # 422, not invalid_amount's usual 400: the amount is well formed; the hold is smaller.
    ResultCode.EXCEEDS_PENDING_AMOUNT: _refusal(
        "invalid_amount", "the amount to post is more than the pending transfer holds", 422
    ),
    ResultCode.PENDING_FIELDS_MISMATCH: _refusal(
        "invalid_request", "the fields do not match the pending transfer's", 422
    ),
}

# Refusals on business grounds, counted by ``ServiceMetrics.record_refusal``; the rest are the
# caller's mistakes (bad ids, malformed commands), counted only as problems.
BUSINESS_REFUSAL_CODES = frozenset(
    {
        "insufficient_funds",
        "limit_exceeded",
        "wallet_frozen",
        "wallet_closed",
        "currency_mismatch",
        "pending_transfer_already_resolved",
        "pending_transfer_expired",
        "net_debit_cap_exceeded",
    }
)


def refusal_for(code: ResultCode) -> Refusal:
    """The API's answer to a ledger result code other than ``ok``."""
    refusal = REFUSALS.get(code)
    if refusal is None:
        # A result code added to the ledger without a mapping: a bug of ours, loudly.
        raise LookupError(f"no API mapping for the ledger result code {code!r}: add it to REFUSALS")
    return refusal


def refusal_problem(code: ResultCode, *, headers: dict[str, str] | None = None) -> ProblemError:
    refusal = refusal_for(code)
    return ProblemError(refusal.code, refusal.detail, refusal.status, headers=headers)


def wallet_problem(error: WalletError) -> ProblemError:
    code = error.code if error.code in CODES else "invalid_request"
    detail = str(error) or CODES[code].title
    return ProblemError(code, detail, error.status)


@contextmanager
def wallet_errors() -> Iterator[None]:
    """Turn the wallets layer's exceptions raised inside into problems."""
    try:
        yield
    except WalletError as error:
        raise wallet_problem(error) from None


@contextmanager
def fx_errors(pointers: Mapping[type[FxError], str]) -> Iterator[None]:
    """The FX desk's refusals as problems: its wallets-style errors (an unsupported pair, no rate,
    a quote not found or expired) as :func:`wallet_errors` does, and ``settlement.fx``'s input
    errors as 400 ``invalid_request`` naming the field ``pointers`` gives for the error's kind.
    A quote amount that prices to nothing or past the maximum is 422 ``invalid_amount``: the amount
    is well formed, the conversion is not possible."""
    try:
        yield
    except WalletError as error:
        raise wallet_problem(error) from None
    except FxError as error:
        pointer = next((pointer for kind, pointer in pointers.items() if isinstance(error, kind)), "#")
        code, status = ("invalid_amount", 422) if isinstance(error, InvalidQuoteAmount) else ("invalid_request", 400)
        raise ProblemError(code, str(error), status, errors=[{"pointer": pointer, "detail": str(error)}]) from None
