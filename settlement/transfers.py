"""Same-currency transfers between wallets of different institutions record the payer
institution's obligation to the payee institution in the open settlement window, as a payment does.

The wallet-to-wallet transfer stays one ledger transfer (its id, view and statement lines are those
of any transfer); an obligation leg between the two institutions' position accounts, in the
transfer's currency, is linked to it, so both commit or neither, and the payer's cap in force is
checked by the ledger under the position account's lock. The transfer leg carries
``replay_ends_chain``: a retry racing the original (across a window's close, say) is answered the
original and adds no second obligation. A hold across institutions records nothing until it is
posted: its post is linked to the obligation for the amount posted (a void or an expiry owes
nothing). A refusal at the cap (``debit_balance_cap_exceeded``, answered ``net_debit_cap_exceeded``)
is remembered by request id, so a retry gets the same answer.

Transfers within one institution go to the wallets layer unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from ledger import Batcher, Ledger, ResultCode, TransferCommand, TransferResult
from settlement.liquidity import LiquidityDesk
from settlement.remembered import RefusalMemory, request_digest
from settlement.windows import WindowClosed
from wallets.errors import NotFound
from wallets.ids import Origin, scoped_id
from wallets.model import TransferOutcome, TransferRequest, WalletOwner
from wallets.service import WalletBook

CLOSE_RACE_ATTEMPTS_MAX = 3


@dataclasses.dataclass(frozen=True, slots=True)
class _Crossing:
    """A money movement from the caller's institution to another's."""

    payer: str
    payee: str
    currency: str
    amount_minor: int
    key: UUID  # the caller's id of the movement (the transfer's, or the hold's for a post)
    purpose: str = "obligation"  # what the obligation leg's id derives from, besides the key and window


class CrossInstitutionTransfers:
    def __init__(self, ledger: Ledger, batcher: Batcher, wallets: WalletBook, liquidity: LiquidityDesk) -> None:
        self.ledger = ledger
        self.batcher = batcher
        self.wallets = wallets
        self.liquidity = liquidity
        self.windows = liquidity.windows
        self.refusals = RefusalMemory(ledger, "transfer", ledger.clock)

    async def transfer(self, institution_id: str, request: TransferRequest) -> TransferOutcome:
        payee = await self._other_institution(institution_id, request.target_wallet_id)
        if payee is None or request.pending:
            return await self.wallets.transfer(institution_id, request)
        command = await self.wallets.transfer_command(institution_id, request)
        crossing = _Crossing(institution_id, payee, request.currency, request.amount_minor, request.id)
        return await self._remembered(institution_id, request.id, _digest(request), command, crossing)

    async def post_pending(self, institution_id: str, client_id: UUID, amount_minor: int | None) -> TransferOutcome:
        hold = await self.ledger.get_transfer(scoped_id(institution_id, client_id))
        payee = None if hold is None else await self._other_institution(institution_id, hold.credit_account_id)
        if hold is None or payee is None:  # an unknown hold is the wallets layer's NotFound
            return await self.wallets.post_pending(institution_id, client_id, amount_minor)
        command = await self.wallets.post_command(institution_id, client_id, amount_minor)
        posted = hold.amount_minor if amount_minor is None else amount_minor
        purpose = f"post-obligation:{'all' if amount_minor is None else amount_minor}"
        crossing = _Crossing(institution_id, payee, hold.currency, posted, client_id, purpose)
        digest = request_digest("post", client_id, amount_minor)
        return await self._remembered(institution_id, command.id, digest, command, crossing)

    async def _other_institution(self, institution_id: str, wallet_id: UUID) -> str | None:
        return _other(institution_id, await self.wallets.wallet_owner(wallet_id))

    async def _remembered(
        self, institution_id: str, request_id: UUID, digest: str, command: TransferCommand, crossing: _Crossing
    ) -> TransferOutcome:
        return await self.refusals.once(
            institution_id, request_id, digest,
            lambda: self._cross(command, crossing), lambda code: TransferOutcome(ResultCode(code), None, True),
        )  # fmt: skip

    async def _cross(self, command: TransferCommand, crossing: _Crossing) -> TransferOutcome:
        main = dataclasses.replace(command, linked=True, replay_ends_chain=True)
        for _ in range(CLOSE_RACE_ATTEMPTS_MAX):
            try:
                obligation, window_id = await self._obligation(crossing)
            except WindowClosed:
                continue
            result, leg = await self.batcher.submit_many([main, obligation])
            outcome = await self._outcome(crossing.payer, result, leg, window_id)
            if outcome is not None:
                return outcome
        raise RuntimeError("the settlement window kept closing under this transfer")

    async def _obligation(self, crossing: _Crossing) -> tuple[TransferCommand, int]:
        window = await self.windows.open_window_for_money()
        positions = [
            await self.liquidity.position(window, institution_id, actor=crossing.payer, currency=crossing.currency)
            for institution_id in (crossing.payer, crossing.payee)
        ]
        details: dict[str, Any] = {"leg": "obligation", "window": window.id, "payee": crossing.payee}
        origin = Origin(crossing.payer, crossing.key, "transfer", details).encode()
        leg_id = scoped_id(crossing.payer, crossing.key, f"{crossing.purpose}:{window.id}")
        leg = TransferCommand.posted(
            leg_id, positions[0], positions[1], crossing.amount_minor, crossing.currency, user_data=origin
        )
        return leg, window.id

    async def _outcome(
        self, institution_id: str, result: TransferResult, leg: TransferResult, window_id: int
    ) -> TransferOutcome | None:
        """The caller's outcome, or None when the window closed under the obligation (run again)."""
        if result.ok or result.code is not ResultCode.LINKED_EVENT_FAILED:
            return await self.wallets.outcome_of(institution_id, result)  # done, replayed, or its own refusal
        if leg.code is ResultCode.DEBIT_BALANCE_CAP_EXCEEDED:
            window = await self.windows.get(window_id)
            if window is not None and window.status != "open":
                return None
        return TransferOutcome(leg.code)

    async def transfer_batch(
        self, institution_id: str, requests: Sequence[TransferRequest], *, atomic: bool
    ) -> list[TransferOutcome]:
        """A batch with no transfer to another institution goes to the wallets layer as it is. Not
        ``atomic``: each item as :meth:`transfer` handles it. ``atomic``: one chain, each transfer
        to another institution followed by its obligation leg, all or none (see :meth:`_atomic`)."""
        owners = await self.wallets.wallet_owners({r.target_wallet_id for r in requests})  # one query for the batch
        payees = [_other(institution_id, owners.get(r.target_wallet_id)) for r in requests]
        crossings = [
            None if payee is None or r.pending else _Crossing(institution_id, payee, r.currency, r.amount_minor, r.id)
            for payee, r in zip(payees, requests, strict=True)
        ]  # fmt: skip
        if all(crossing is None for crossing in crossings):
            return await self.wallets.transfer_batch(institution_id, list(requests), atomic=atomic)
        if not atomic:
            return [await self._batch_item(institution_id, request) for request in requests]
        try:
            commands = [await self.wallets.transfer_command(institution_id, r) for r in requests]
        except NotFound:  # the wallets layer answers it without saying which or whose
            return await self.wallets.transfer_batch(institution_id, list(requests), atomic=True)
        return await self._atomic(institution_id, list(requests), commands, crossings)

    async def _atomic(
        self,
        institution_id: str,
        requests: list[TransferRequest],
        commands: list[TransferCommand],
        crossings: list[_Crossing | None],
    ) -> list[TransferOutcome]:
        """One linked chain: each transfer, and after each to another institution its obligation.
        The first transfer ends the chain if it is a replay (the batch committed before: each item
        is answered from what is stored). A refusal at a cap is remembered under that item's id."""
        digests = [_digest(r) for r in requests]
        for index, request in enumerate(requests):
            remembered = await self.refusals.recall(institution_id, request.id, digests[index])
            if remembered is not None:
                code = ResultCode(remembered.code if remembered.same_request else "exists_with_different_fields")
                return [_linked_failure(i, index, code) for i in range(len(requests))]
        for _ in range(CLOSE_RACE_ATTEMPTS_MAX):
            try:
                outcomes = await self._atomic_once(institution_id, requests, commands, crossings)
            except WindowClosed:
                continue
            if outcomes is not None:
                for index, outcome in enumerate(outcomes):
                    if outcome.code is ResultCode.DEBIT_BALANCE_CAP_EXCEEDED and not outcome.replayed:
                        await self.refusals.remember(institution_id, requests[index].id, digests[index], outcome.code)
                return outcomes
        raise RuntimeError("the settlement window kept closing under this batch")

    async def _atomic_once(
        self,
        institution_id: str,
        requests: list[TransferRequest],
        commands: list[TransferCommand],
        crossings: list[_Crossing | None],
    ) -> list[TransferOutcome] | None:
        chain: list[TransferCommand] = []
        owners: list[tuple[int, bool]] = []  # (item, is its obligation leg) of each chain member
        window_id = 0
        for index, (command, crossing) in enumerate(zip(commands, crossings, strict=True)):
            chain.append(dataclasses.replace(command, linked=True, replay_ends_chain=index == 0))
            owners.append((index, False))
            if crossing is not None:
                leg, window_id = await self._obligation(crossing)
                chain.append(dataclasses.replace(leg, linked=True))
                owners.append((index, True))
        chain[-1] = dataclasses.replace(chain[-1], linked=False)
        results = await self.batcher.submit_many(chain)
        if results[0].ok and results[0].replayed and not all(r.ok for r in results):  # committed before
            return [await self.wallets.get_transfer(institution_id, r.id) for r in requests]
        if all(r.ok for r in results):
            mains = [result for result, (_, is_leg) in zip(results, owners, strict=True) if not is_leg]
            return [await self.wallets.outcome_of(institution_id, result) for result in mains]
        position = next(i for i, r in enumerate(results) if r.code is not ResultCode.LINKED_EVENT_FAILED)
        failed_item, is_leg = owners[position]
        code = results[position].code
        if is_leg and code is ResultCode.DEBIT_BALANCE_CAP_EXCEEDED:
            window = await self.windows.get(window_id)
            if window is not None and window.status != "open":
                return None  # the window closed under the batch: nothing committed, run it again
        return [
            _linked_failure(i, failed_item, code, replayed=results[position].replayed) for i in range(len(requests))
        ]

    async def _batch_item(self, institution_id: str, request: TransferRequest) -> TransferOutcome:
        try:
            return await self.transfer(institution_id, request)
        except NotFound:  # as the wallets layer answers a batch item: without saying whose it is
            return TransferOutcome(ResultCode.ACCOUNT_NOT_FOUND)


def _other(institution_id: str, owner: WalletOwner | None) -> str | None:
    """The wallet's institution if it is not ``institution_id``'s own wallet."""
    return None if owner is None or owner.institution_id == institution_id else owner.institution_id


def _linked_failure(index: int, failed: int, code: ResultCode, *, replayed: bool = True) -> TransferOutcome:
    """An atomic batch's outcome for item ``index`` when item ``failed`` was refused ``code``."""
    return TransferOutcome(code, None, replayed) if index == failed else TransferOutcome(ResultCode.LINKED_EVENT_FAILED)


def _digest(request: TransferRequest) -> str:
    return request_digest(
        "transfer", request.source_wallet_id, request.target_wallet_id, request.amount_minor, request.currency,
        request.pending, request.timeout_s, request.metadata,
    )  # fmt: skip


__all__ = ["CrossInstitutionTransfers"]
