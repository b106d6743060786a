"""What the settlement layer refuses, with the HTTP contract's stable codes (the service layer
turns them into problem+json, as it does the wallets layer's errors they extend)."""

from __future__ import annotations

from wallets.errors import WalletError


class SettlementError(WalletError):
    code, status = "invalid_request", 400


class WindowNotOpen(SettlementError):
    """The window named is not the open one (it closed, or never existed as open)."""

    code, status = "window_not_open", 409


class BatchNotSettleable(SettlementError):
    """The batch is not in a state that settles (already settled, still open), or no settlement
    bank is registered to settle through."""

    code, status = "batch_not_settleable", 409


class NetDebitCapExceeded(SettlementError):
    code, status = "net_debit_cap_exceeded", 422


__all__ = ["BatchNotSettleable", "NetDebitCapExceeded", "SettlementError", "WindowNotOpen"]
