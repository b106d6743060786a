"""Refunds of cross-border payments: backwards at the payment's own rate, full or partial, several
up to the original, each reducing the obligation in the window where it happens.

One linked chain through the batcher, all or nothing:

0. the **claim**: the payment's refund bound account pays the refund sink the CNY refunded. The
   bound account's overdraft cap is the payment's CNY amount, so refunds can never add up to more
   than the payment, whatever runs concurrently (the ledger checks it under the account's lock). The
   claim's id is the payment's n-th refund slot: two refunds computed from the same "refunded so
   far" race for one slot and the second is refused by the id (exists with different fields) and
   recomputed, so each refund's HKD share is worked out from the exact total before it and the
   series adds up to the payment's HKD amount exactly (``settlement.fx.refund_source_minor``);
1. the merchant's CNY wallet pays the acquirer's CNY funding account;
2. the acquirer's position pays the payer institution's position in the open window: the
   obligation runs backwards (the acquirer's position carries its own cap in force, like a payer's);
3. the payer institution's HKD funding account pays the customer's HKD wallet the HKD share.

A close racing the refund is met as a payment meets it (run again in the new window). Refunds are
asked for by the payer institution, whose payment it is (the merchant asks its acquirer, which asks
the payer's institution, out of band).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ledger import AccountResultCode, AccountSpec, Batcher, Ledger, Limits, ResultCode, TransferCommand, TransferResult
from settlement.fx import refund_source_minor
from settlement.liquidity import LiquidityDesk
from settlement.payments import SOURCE_CURRENCY, Payment, PaymentDesk
from settlement.remembered import RefusalMemory, request_digest
from settlement.windows import SETTLEMENT_CURRENCY, WindowClosed
from wallets.errors import NotFound
from wallets.ids import Origin, scoped_id
from wallets.service import WalletBook

_REFUND_NAMESPACE = uuid.UUID("2a8f6c1e-5b3d-4e9a-8c7f-1d0e3b5a7c92")
REFUND_SINK_ACCOUNT_ID = uuid.uuid5(_REFUND_NAMESPACE, "refund-sink/CNY")
# Refunds of one payment claiming a slot at the same moment are recomputed at most this often.
SLOT_RACE_ATTEMPTS_MAX = 8
CLOSE_RACE_ATTEMPTS_MAX = 3
_WINDOW_CLOSED = object()  # the window closed under the refund: run it again in the new one


@dataclass(frozen=True, slots=True)
class RefundRequest:
    id: UUID  # the payer institution's own id for the refund
    payment_id: UUID
    amount_minor: int | None  # CNY; None refunds what remains


@dataclass(frozen=True, slots=True)
class Refund:
    id: UUID
    payment_id: UUID
    target_minor: int  # CNY taken back from the merchant
    source_minor: int  # HKD given back to the customer
    settlement_window_id: int
    created_at_us: int


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    """``code`` is ``ok``, a ledger result code, ``invalid_amount`` (beyond what remains) or
    ``net_debit_cap_exceeded``."""

    code: str
    refund: Refund | None = None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.code == ResultCode.OK.value


def bound_account_id(institution_id: str, payment_id: UUID) -> UUID:
    return uuid.uuid5(_REFUND_NAMESPACE, f"bound/{scoped_id(institution_id, payment_id)}")


def slot_id(institution_id: str, payment_id: UUID, slot: int) -> UUID:
    return uuid.uuid5(_REFUND_NAMESPACE, f"slot/{scoped_id(institution_id, payment_id)}/{slot}")


class RefundDesk:
    def __init__(
        self, ledger: Ledger, batcher: Batcher, wallets: WalletBook, liquidity: LiquidityDesk, payments: PaymentDesk
    ) -> None:
        self.ledger = ledger
        self.batcher = batcher
        self.wallets = wallets
        self.liquidity = liquidity
        self.windows = liquidity.windows
        self.payments = payments
        self.refusals = RefusalMemory(ledger, "refund", ledger.clock)

    async def refund(self, institution_id: str, request: RefundRequest) -> RefundOutcome:
        stored = await self.get(institution_id, request.id, missing_ok=True)
        if stored is not None:
            same = stored.payment_id == request.payment_id and request.amount_minor in (None, stored.target_minor)
            return RefundOutcome(
                "ok" if same else ResultCode.EXISTS_WITH_DIFFERENT_FIELDS.value, stored if same else None, True
            )
        digest = request_digest(request.payment_id, request.amount_minor)
        return await self.refusals.once(
            institution_id, request.id, digest,
            lambda: self._refund_new(institution_id, request), lambda code: RefundOutcome(code, None, True),
        )  # fmt: skip

    async def _refund_new(self, institution_id: str, request: RefundRequest) -> RefundOutcome:
        payment = await self.payments.get(institution_id, request.payment_id)
        if payment is None:
            raise NotFound(f"no payment {request.payment_id}")
        await self._open_bound(institution_id, payment)
        for _ in range(SLOT_RACE_ATTEMPTS_MAX):
            slot, refunded = await self._next_slot(institution_id, payment.id)
            amount = payment.target_minor - refunded if request.amount_minor is None else request.amount_minor
            if not 0 < amount <= payment.target_minor - refunded:
                return RefundOutcome("invalid_amount")
            outcome = await self._in_open_window(institution_id, request, payment, slot, amount, refunded)
            if outcome is not None:
                return outcome
        raise RuntimeError(f"refunds of payment {payment.id} kept racing for a slot")

    async def _in_open_window(
        self, institution_id: str, request: RefundRequest, payment: Payment, slot: int, amount: int, refunded: int
    ) -> RefundOutcome | None:
        """The refund's outcome, or None when another refund took the slot (recompute)."""
        source = refund_source_minor(payment.source_minor, payment.target_minor, amount, refunded_target_minor=refunded)
        parties = await self.payments.parties_of(institution_id, payment)
        for _ in range(CLOSE_RACE_ATTEMPTS_MAX):
            window = await self.windows.open_window_for_money()
            try:
                acquirer_position = await self.liquidity.position(window, parties.acquirer_id, actor=institution_id)
                payer_position = await self.liquidity.position(window, parties.payer_id, actor=institution_id)
            except WindowClosed:
                continue
            legs = _Legs(institution_id, request.id, payment, slot, amount, source, window.id)
            chain = legs.chain(parties.acquirer_funding, acquirer_position, payer_position, parties.payer_fx_account)
            results = await self.batcher.submit_many(chain)
            outcome = await self._outcome(institution_id, request, window.id, results)
            if outcome is not _WINDOW_CLOSED:
                return outcome if isinstance(outcome, RefundOutcome) else None
        raise RuntimeError("the settlement window kept closing under this refund")

    async def _outcome(
        self, institution_id: str, request: RefundRequest, window_id: int, results: list[TransferResult]
    ) -> RefundOutcome | object | None:
        claim, _debit, obligation, _credit = results
        if all(r.ok for r in results):
            return RefundOutcome("ok", await self.get(institution_id, request.id), all(r.replayed for r in results))
        if claim.ok and claim.replayed:  # this very refund committed meanwhile (a retry racing it)
            return RefundOutcome("ok", await self.get(institution_id, request.id), True)
        if claim.code is ResultCode.EXISTS_WITH_DIFFERENT_FIELDS:
            return None  # another refund took this slot
        if obligation.code is ResultCode.DEBIT_BALANCE_CAP_EXCEEDED:
            current = await self.windows.get(window_id)
            if current is not None and current.status != "open":
                return _WINDOW_CLOSED
            return RefundOutcome("net_debit_cap_exceeded")
        failed = next(r for r in results if r.code is not ResultCode.LINKED_EVENT_FAILED)
        return RefundOutcome(failed.code.value, None, failed.replayed)

    async def _open_bound(self, institution_id: str, payment: Payment) -> None:
        specs = [
            AccountSpec(
                bound_account_id(institution_id, payment.id), SETTLEMENT_CURRENCY, "settlement:refund-bound",
                owner_ref=f"{institution_id}/payment", limits=Limits(debit_balance_cap_minor=payment.target_minor),
            ),
            AccountSpec(REFUND_SINK_ACCOUNT_ID, SETTLEMENT_CURRENCY, "settlement:refund-sink", owner_ref="ledger"),
        ]  # fmt: skip
        for result in await self.ledger.create_accounts(specs, actor=institution_id):
            if result.code not in (AccountResultCode.OK, AccountResultCode.EXISTS_WITH_DIFFERENT_FIELDS):
                raise RuntimeError(f"refund accounts of payment {payment.id}: {result.code}")

    async def _next_slot(self, institution_id: str, payment_id: UUID) -> tuple[int, int]:
        """The first free refund slot of the payment and the CNY refunded in the slots before it."""
        slot, refunded = 1, 0
        while (claim := await self.ledger.get_transfer(slot_id(institution_id, payment_id, slot))) is not None:
            refunded += claim.amount_minor
            slot += 1
        return slot, refunded

    async def refunded_minor(self, institution_id: str, payment_id: UUID) -> int:
        account = await self.ledger.get_account(bound_account_id(institution_id, payment_id))
        return 0 if account is None else account.balances.debits_posted

    async def get(self, institution_id: str, refund_id: UUID, *, missing_ok: bool = False) -> Refund | None:
        """The caller's refund, read from its ledger transfers (NotFound for another's)."""
        credit = await self.ledger.get_transfer(scoped_id(institution_id, refund_id, "refund-credit"))
        origin = None if credit is None else Origin.decode(credit.user_data)
        if credit is None or origin is None or origin.institution_id != institution_id or origin.metadata is None:
            if missing_ok:
                return None
            raise NotFound(f"no refund {refund_id}")
        meta: dict[str, Any] = origin.metadata
        return Refund(
            id=refund_id, payment_id=UUID(meta["payment"]), target_minor=int(meta["target"]),
            source_minor=credit.amount_minor, settlement_window_id=int(meta["window"]),
            created_at_us=credit.created_at_us,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Legs:
    institution_id: str
    refund_id: UUID
    payment: Payment
    slot: int
    target_minor: int
    source_minor: int
    window_id: int

    def chain(
        self, acquirer_funding: UUID, acquirer_position: UUID, payer_position: UUID, payer_funding: UUID
    ) -> list[TransferCommand]:
        inst, payment, cny = self.institution_id, self.payment, SETTLEMENT_CURRENCY
        details = {"payment": str(payment.id), "target": self.target_minor, "window": self.window_id}
        return [
            TransferCommand.posted(
                slot_id(inst, payment.id, self.slot), bound_account_id(inst, payment.id), REFUND_SINK_ACCOUNT_ID,
                self.target_minor, cny, linked=True, user_data=self._origin("claim"), replay_ends_chain=True,
            ),
            TransferCommand.posted(
                scoped_id(inst, self.refund_id, "refund-debit"), payment.merchant_wallet_id, acquirer_funding,
                self.target_minor, cny, linked=True, user_data=self._origin("debit"),
            ),
            TransferCommand.posted(
                scoped_id(inst, self.refund_id, f"refund-obligation:{self.window_id}"), acquirer_position,
                payer_position, self.target_minor, cny, linked=True, user_data=self._origin("obligation"),
            ),
            TransferCommand.posted(
                scoped_id(inst, self.refund_id, "refund-credit"), payer_funding, payment.payer_wallet_id,
                self.source_minor, SOURCE_CURRENCY, user_data=self._origin("credit", **details),
            ),
        ]  # fmt: skip

    def _origin(self, leg: str, **extra: Any) -> str:
        return Origin(self.institution_id, self.refund_id, "refund", {"leg": leg, **extra}).encode()


__all__ = ["Refund", "RefundDesk", "RefundOutcome", "RefundRequest", "bound_account_id"]
