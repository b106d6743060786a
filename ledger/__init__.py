"""The ledger core: accounts, double-entry transfers, two-phase holds, idempotent ids, limits,
group commit and an Ed25519-signed audit chain. Knows nothing of wallets, settlement or HTTP."""

from ledger.audit import Anchor, AuditReport
from ledger.batcher import Batcher
from ledger.core import Ledger, StatementLine, StatementPage
from ledger.errors import (
    AccountResultCode,
    InvalidAmount,
    InvariantViolation,
    LedgerError,
    LedgerKeyMismatch,
    LedgerOutcomeUnknown,
    LedgerOverloaded,
    LedgerShuttingDown,
    LedgerUnavailable,
    ResultCode,
)
from ledger.model import (
    Account,
    AccountFlags,
    AccountResult,
    AccountSpec,
    AccountStatus,
    Balances,
    Limits,
    Transfer,
    TransferCommand,
    TransferKind,
    TransferResult,
)
from ledger.money import Currency, format_amount, parse_amount

__all__ = [
    "Account",
    "AccountFlags",
    "AccountResult",
    "AccountResultCode",
    "AccountSpec",
    "AccountStatus",
    "Anchor",
    "AuditReport",
    "Balances",
    "Batcher",
    "Currency",
    "InvalidAmount",
    "InvariantViolation",
    "Ledger",
    "LedgerError",
    "LedgerKeyMismatch",
    "LedgerOutcomeUnknown",
    "LedgerOverloaded",
    "LedgerShuttingDown",
    "LedgerUnavailable",
    "Limits",
    "ResultCode",
    "StatementLine",
    "StatementPage",
    "Transfer",
    "TransferCommand",
    "TransferKind",
    "TransferResult",
    "format_amount",
    "parse_amount",
]
