"""What can go wrong in the ledger, in two kinds.

Expected business outcomes of a transfer (insufficient funds, a limit, an unknown account) are
*values*: a :class:`ResultCode` in the transfer's result, so that one bad transfer in a batch fails
alone. Everything else is an exception from the small tree below: bad input at the edge, a ledger
that cannot take more work, or a broken invariant, which is a bug and stops the operation loudly.
"""

from __future__ import annotations

from enum import StrEnum


class ResultCode(StrEnum):
    """The stable outcome of one transfer command. Integrators match on these strings."""

    OK = "ok"
    # The command itself is malformed.
    INVALID_AMOUNT = "invalid_amount"
    INVALID_COMMAND = "invalid_command"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    # Idempotency: the id is taken by a transfer with other fields.
    EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"
    # Linked chains.
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    # Accounts.
    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_FROZEN = "account_frozen"
    ACCOUNT_CLOSED = "account_closed"
    CURRENCY_MISMATCH = "currency_mismatch"
    # Balances and limits.
    INSUFFICIENT_FUNDS = "insufficient_funds"
    CREDITS_EXCEED_DEBITS = "credits_exceed_debits"
    BALANCE_CAP_EXCEEDED = "balance_cap_exceeded"
    TRANSFER_CAP_EXCEEDED = "transfer_cap_exceeded"
    DAILY_DEBIT_CAP_EXCEEDED = "daily_debit_cap_exceeded"
    ANNUAL_DEBIT_CAP_EXCEEDED = "annual_debit_cap_exceeded"
    DEBIT_BALANCE_CAP_EXCEEDED = "debit_balance_cap_exceeded"
    OVERFLOW = "overflow"
    # Two-phase transfers.
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    EXCEEDS_PENDING_AMOUNT = "exceeds_pending_amount"
    PENDING_FIELDS_MISMATCH = "pending_fields_mismatch"

    @property
    def is_limit(self) -> bool:
        """True for the codes that the HTTP edge reports as ``limit_exceeded``."""
        return self in _LIMIT_CODES

    @property
    def is_remembered(self) -> bool:
        """True for a refusal the ledger stores under the command's id (a business refusal that
        depends on the ledger's state). Not remembered, as in TigerBeetle: success, a malformed
        command (judged without the ledger's state), an id already taken, and a chain member that
        failed only because another did, so the chain can be sent again with the failing member
        replaced under a new id."""
        return self not in _NOT_REMEMBERED


_LIMIT_CODES = frozenset(
    {
        ResultCode.BALANCE_CAP_EXCEEDED,
        ResultCode.TRANSFER_CAP_EXCEEDED,
        ResultCode.DAILY_DEBIT_CAP_EXCEEDED,
        ResultCode.ANNUAL_DEBIT_CAP_EXCEEDED,
        ResultCode.DEBIT_BALANCE_CAP_EXCEEDED,
    }
)
_NOT_REMEMBERED = frozenset(
    {
        ResultCode.OK,
        ResultCode.INVALID_AMOUNT,
        ResultCode.INVALID_COMMAND,
        ResultCode.ACCOUNTS_MUST_BE_DIFFERENT,
        ResultCode.EXISTS_WITH_DIFFERENT_FIELDS,
        ResultCode.LINKED_EVENT_FAILED,
        ResultCode.LINKED_EVENT_CHAIN_OPEN,
    }
)


class AccountResultCode(StrEnum):
    """The outcome of creating or changing one account."""

    OK = "ok"
    EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"
    CURRENCY_NOT_FOUND = "currency_not_found"
    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_CLOSED = "account_closed"
    ACCOUNT_NOT_EMPTY = "account_not_empty"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    LIMIT_BELOW_BALANCE = "limit_below_balance"
    INVALID_LIMIT = "invalid_limit"
    INVALID_ACCOUNT = "invalid_account"


class LedgerError(Exception):
    """Base of every exception the ledger raises on purpose."""

    code = "ledger_error"


class InvalidAmount(LedgerError, ValueError):
    """An amount at the edge is not a positive decimal with at most the currency's decimals."""

    code = "invalid_amount"


class UnknownCurrency(LedgerError, ValueError):
    """A currency code the ledger has no exponent for."""

    code = "invalid_request"


class LedgerOverloaded(LedgerError):
    """The batcher's queue is full: the caller should back off and retry the same transfer id."""

    code = "overloaded"


class LedgerShuttingDown(LedgerError):
    """The batcher is draining for shutdown and takes no new work; retry on another instance."""

    code = "shutting_down"


class LedgerUnavailable(LedgerError):
    """The database could not commit the batch: nothing in it was acknowledged, retry by id."""

    code = "unavailable"


class LedgerOutcomeUnknown(LedgerUnavailable):
    """The connection died while the batch's COMMIT was in flight and no retry could reach the
    database to find out: the batch may be committed or not. Resubmit the same ids: each is then
    answered from the stored transfer (``replayed``) or applied once. Never pay again under a new id."""

    code = "outcome_unknown"


class LedgerKeyMismatch(LedgerError):
    """This ledger's signing key did not sign the chain's newest block. Writing with it would seal
    blocks that no single key verifies; open the ledger with the key that signed the chain."""

    code = "key_mismatch"


class InvariantViolation(LedgerError):
    """A rule that must always hold was found broken. This is a bug, never a business outcome."""

    code = "invariant_violation"
