"""What the wallets layer refuses, as exceptions with the HTTP contract's stable codes (the
service layer turns them into problem+json). Business refusals of a transfer are not exceptions:
they are ``TransferOutcome.code`` values (the ledger's result codes)."""

from __future__ import annotations


class WalletError(Exception):
    code = "invalid_request"
    status = 400


class InvalidRequest(WalletError):
    code, status = "invalid_request", 400


class NotFound(WalletError):
    """The thing does not exist, or belongs to another institution (never told apart)."""

    code, status = "not_found", 404


class Forbidden(WalletError):
    code, status = "forbidden", 403


class Conflict(WalletError):
    """The id is taken with other fields."""

    code, status = "exists_with_different_fields", 409


class WalletFrozen(WalletError):
    code, status = "wallet_frozen", 422


class WalletClosed(WalletError):
    code, status = "wallet_closed", 422


class WalletNotEmpty(WalletError):
    code, status = "wallet_not_empty", 422


class LimitBelowBalance(WalletError):
    """A tier downgrade whose balance cap is below what the wallet holds."""

    code, status = "limit_exceeded", 422
