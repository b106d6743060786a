"""Multilateral netting of a settlement window's obligations, and unwinding a participant.

Pure: no database, no I/O, ints only. Payments in a window leave obligations (the payer's
institution owes the merchant's acquirer the CNY amount); at the window's close they are netted per
currency (deferred net settlement). Each participant's **net position** is what it is owed minus
what it owes: positive for a net creditor (it receives), negative for a net debtor (it pays), and
per currency the positions sum to zero. The nets settle hub-and-spoke through the settlement bank:
every net debtor pays its net debit to the bank, then the bank pays every net creditor its net
credit, so each participant makes or takes at most one payment per currency instead of one per
counterparty.

Every output is in a fixed order (currencies, then participant ids, sorted), so the same
obligations in any order give the same result, and the same bytes once reported and signed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from ledger.errors import InvariantViolation
from ledger.money import AMOUNT_MINOR_MAX

# The institution that settles the nets; the service passes the registered one.
SETTLEMENT_BANK_ID_DEFAULT = "settlement-bank"
# A sanity bound on one netting run (obligations are aggregated per payment in a window): far above a
# window's payments, low enough that a runaway input is refused before it exhausts memory.
OBLIGATIONS_PER_NETTING_MAX = 10_000_000
# The saving ratio is a report figure, not money: four places is a hundredth of a percent.
LIQUIDITY_SAVING_RATIO_DECIMAL_PLACES = 4

_RATIO_QUANTUM = Decimal(1).scaleb(-LIQUIDITY_SAVING_RATIO_DECIMAL_PLACES)
_CURRENCY_CODE = re.compile(r"[A-Z]{3}")

Direction = Literal["pay", "receive", "flat"]


class NettingError(ValueError):
    """Base of the netting input errors: the obligations handed in are malformed."""

    code = "invalid_request"


class InvalidObligation(NettingError):
    """An obligation's parties, currency or amount are not valid."""


class TooManyObligations(NettingError):
    """More obligations than ``OBLIGATIONS_PER_NETTING_MAX`` in one netting run."""


@dataclass(frozen=True, slots=True, order=True)
class Obligation:
    """``debtor`` owes ``creditor`` ``amount_minor`` of ``currency`` (institution ids, minor units).

    Field order is the sort order: by debtor, creditor, currency, amount.
    """

    debtor: str
    creditor: str
    currency: str
    amount_minor: int

    def __post_init__(self) -> None:
        for role in ("debtor", "creditor"):
            party = getattr(self, role)
            if not isinstance(party, str) or not party:
                raise InvalidObligation(f"an obligation's {role} must be an institution id, got {party!r}")
        if self.debtor == self.creditor:
            raise InvalidObligation(f"{self.debtor} cannot owe itself")
        if not isinstance(self.currency, str) or not _CURRENCY_CODE.fullmatch(self.currency):
            raise InvalidObligation(f"currency must be three capital letters, got {self.currency!r}")
        amount_minor = self.amount_minor
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
            raise InvalidObligation(f"amount must be an int of minor units, not {type(amount_minor).__name__}")
        if not 0 < amount_minor <= AMOUNT_MINOR_MAX:
            raise InvalidObligation(f"amount must be between 1 and {AMOUNT_MINOR_MAX} minor units, got {amount_minor}")

    def involves(self, participants: set[str] | frozenset[str]) -> bool:
        """True if the debtor or the creditor is one of ``participants``."""
        return self.debtor in participants or self.creditor in participants


@dataclass(frozen=True, slots=True)
class BilateralGross:
    """Everything ``debtor`` owes ``creditor`` in ``currency`` in the run, before netting: a sum of
    obligations, so not bound by one obligation's maximum. The reverse pair is a row of its own."""

    debtor: str
    creditor: str
    currency: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class NetPosition:
    """A participant's multilateral net in one currency: credits minus debits, in minor units."""

    participant: str
    currency: str
    net_minor: int

    @property
    def direction(self) -> Direction:
        """``pay`` for a net debtor, ``receive`` for a net creditor, ``flat`` at zero."""
        if self.net_minor < 0:
            return "pay"
        return "receive" if self.net_minor > 0 else "flat"

    @property
    def net_debit_minor(self) -> int:
        """What the participant pays in settlement (0 unless it is a net debtor)."""
        return max(0, -self.net_minor)

    @property
    def net_credit_minor(self) -> int:
        """What the participant receives in settlement (0 unless it is a net creditor)."""
        return max(0, self.net_minor)


@dataclass(frozen=True, slots=True)
class SettlementInstruction:
    """One payment that settles nets: ``payer`` pays ``payee`` ``amount_minor`` of ``currency``."""

    payer: str
    payee: str
    currency: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class CurrencyNetting:
    """The netting of one currency: positions, gross obligations, totals and instructions."""

    currency: str
    positions: tuple[NetPosition, ...]
    bilateral_gross: tuple[BilateralGross, ...]
    gross_total_minor: int
    net_total_minor: int
    instructions: tuple[SettlementInstruction, ...]

    @property
    def liquidity_saved_minor(self) -> int:
        """What netting spares the participants: gross − net."""
        return self.gross_total_minor - self.net_total_minor

    @property
    def liquidity_saving_ratio(self) -> Decimal:
        """``saved ÷ gross``, rounded half-even to ``LIQUIDITY_SAVING_RATIO_DECIMAL_PLACES``, exactly
        (on a Fraction, so no Decimal context rounds first)."""
        scaled = round(
            Fraction(self.liquidity_saved_minor * 10**LIQUIDITY_SAVING_RATIO_DECIMAL_PLACES, self.gross_total_minor)
        )
        # quantize keeps the places in the text: 0 is "0.0000", not "0E-4".
        return Decimal(scaled).scaleb(-LIQUIDITY_SAVING_RATIO_DECIMAL_PLACES).quantize(_RATIO_QUANTUM)

    def position(self, participant: str) -> NetPosition:
        """The participant's position; a participant with no obligations here is flat."""
        for position in self.positions:
            if position.participant == participant:
                return position
        return NetPosition(participant, self.currency, 0)


@dataclass(frozen=True, slots=True)
class NettingResult:
    """The netting of a set of obligations, one :class:`CurrencyNetting` per currency, by code."""

    settlement_bank_id: str
    currencies: tuple[CurrencyNetting, ...]

    def for_currency(self, currency: str) -> CurrencyNetting:
        for netting in self.currencies:
            if netting.currency == currency:
                return netting
        raise KeyError(f"no obligations in {currency}")

    @property
    def participants(self) -> frozenset[str]:
        """Every institution with a position in any currency (the settlement bank is not one)."""
        return frozenset(position.participant for netting in self.currencies for position in netting.positions)


def net(obligations: Iterable[Obligation], *, settlement_bank_id: str = SETTLEMENT_BANK_ID_DEFAULT) -> NettingResult:
    """Net ``obligations`` per currency; see the module docstring for the rules and the order."""
    by_currency = _group_by_currency(obligations, settlement_bank_id)
    return NettingResult(
        settlement_bank_id=settlement_bank_id,
        currencies=tuple(
            _net_one_currency(currency, by_currency[currency], settlement_bank_id) for currency in sorted(by_currency)
        ),
    )


def _group_by_currency(obligations: Iterable[Obligation], settlement_bank_id: str) -> dict[str, list[Obligation]]:
    by_currency: dict[str, list[Obligation]] = defaultdict(list)
    for count, obligation in enumerate(obligations, start=1):
        if count > OBLIGATIONS_PER_NETTING_MAX:
            raise TooManyObligations(f"more than {OBLIGATIONS_PER_NETTING_MAX} obligations in one netting run")
        if not isinstance(obligation, Obligation):
            raise InvalidObligation(f"expected an Obligation, got {type(obligation).__name__}")
        # The bank is the hub that settles the nets; as a party it would pay itself in the instructions.
        if obligation.involves({settlement_bank_id}):
            raise InvalidObligation(f"the settlement bank {settlement_bank_id} cannot be party to an obligation")
        by_currency[obligation.currency].append(obligation)
    return by_currency


def _net_one_currency(currency: str, obligations: list[Obligation], settlement_bank_id: str) -> CurrencyNetting:
    gross_by_pair: dict[tuple[str, str], int] = defaultdict(int)
    net_by_participant: dict[str, int] = defaultdict(int)
    for obligation in obligations:
        gross_by_pair[obligation.debtor, obligation.creditor] += obligation.amount_minor
        net_by_participant[obligation.debtor] -= obligation.amount_minor
        net_by_participant[obligation.creditor] += obligation.amount_minor
    positions = tuple(NetPosition(p, currency, net_by_participant[p]) for p in sorted(net_by_participant))
    gross_total_minor = sum(gross_by_pair.values())
    net_total_minor = sum(position.net_credit_minor for position in positions)
    _check_positions(currency, positions, net_total_minor)
    return CurrencyNetting(
        currency=currency,
        positions=positions,
        bilateral_gross=tuple(BilateralGross(d, c, currency, gross_by_pair[d, c]) for d, c in sorted(gross_by_pair)),
        gross_total_minor=gross_total_minor,
        net_total_minor=net_total_minor,
        instructions=settlement_instructions(positions, settlement_bank_id),
    )


def _check_positions(currency: str, positions: tuple[NetPosition, ...], net_total_minor: int) -> None:
    # Each obligation adds to one side what it takes from the other, so this cannot fail unless the
    # arithmetic above is broken; if it ever does, settling these nets would create or destroy money.
    net_debit_total_minor = sum(position.net_debit_minor for position in positions)
    if net_debit_total_minor != net_total_minor:
        raise InvariantViolation(
            f"{currency} net positions do not sum to zero: debits {net_debit_total_minor}, credits {net_total_minor}"
        )


def settlement_instructions(
    positions: Iterable[NetPosition], settlement_bank_id: str
) -> tuple[SettlementInstruction, ...]:
    """Hub-and-spoke instructions that settle ``positions``: first every net debtor pays the bank
    its net debit, then the bank pays every net creditor its net credit, each group by participant
    id. Pay-ins come first so the bank pays out only what it has received and never runs short;
    flat participants get no instruction."""
    ordered = sorted(positions, key=lambda position: (position.currency, position.participant))
    pay_ins = [
        SettlementInstruction(p.participant, settlement_bank_id, p.currency, p.net_debit_minor)
        for p in ordered
        if p.direction == "pay"
    ]
    pay_outs = [
        SettlementInstruction(settlement_bank_id, p.participant, p.currency, p.net_credit_minor)
        for p in ordered
        if p.direction == "receive"
    ]
    return (*pay_ins, *pay_outs)


def unwind(
    obligations: Iterable[Obligation], excluded: set[str] | frozenset[str]
) -> tuple[tuple[Obligation, ...], tuple[Obligation, ...]]:
    """Split ``obligations`` into ``(kept, removed)``: removed are those where an excluded
    participant is the debtor **or** the creditor; each part sorted (debtor, creditor, currency,
    amount).

    Both sides go because an unwound participant leaves the batch altogether. Keeping the payments
    it is owed would have the others pay it in this settlement while its own debts are pulled out,
    so it would be paid with the liquidity it failed to bring; keeping only those would also leave it
    with a position in a batch it does not settle. Re-netting the kept obligations can make another
    participant a net debtor beyond its liquidity; the settlement layer unwinds again until every
    remaining net debit is funded. What becomes of the removed payments is the caller's decision.
    """
    kept: list[Obligation] = []
    removed: list[Obligation] = []
    for obligation in obligations:
        (removed if obligation.involves(excluded) else kept).append(obligation)
    return tuple(sorted(kept)), tuple(sorted(removed))
