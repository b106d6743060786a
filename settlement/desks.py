"""The settlement layer's desks over one ledger, batcher and wallet book, built together so that
the service (and the CLI) hold one object: windows, liquidity and caps, payments, refunds, batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ledger import Batcher, Ledger
from settlement.batches import SettlementDesk
from settlement.liquidity import LiquidityDesk
from settlement.payments import PaymentDesk, QuoteLookup
from settlement.refunds import RefundDesk
from settlement.transfers import CrossInstitutionTransfers
from settlement.windows import WindowBook
from wallets.service import WalletBook


@dataclass(frozen=True, slots=True)
class Settlement:
    windows: WindowBook
    liquidity: LiquidityDesk
    payments: PaymentDesk
    refunds: RefundDesk
    batches: SettlementDesk
    transfers: CrossInstitutionTransfers

    @classmethod
    def over(
        cls, ledger: Ledger, batcher: Batcher, wallets: WalletBook, quotes: QuoteLookup, clock: Callable[[], int]
    ) -> Settlement:
        windows = WindowBook(ledger, clock)
        liquidity = LiquidityDesk(ledger, batcher, wallets, windows, clock)
        payments = PaymentDesk(ledger, batcher, wallets, liquidity, quotes)
        return cls(
            windows, liquidity, payments, RefundDesk(ledger, batcher, wallets, liquidity, payments),
            SettlementDesk(ledger, batcher, wallets, liquidity),
            CrossInstitutionTransfers(ledger, batcher, wallets, liquidity),
        )  # fmt: skip


__all__ = ["Settlement"]
