"""Unit and property tests of settlement/netting.py: multilateral nets, instructions, unwinding."""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

import settlement.netting as netting_module
from ledger.money import AMOUNT_MINOR_MAX
from settlement.netting import (
    SETTLEMENT_BANK_ID_DEFAULT,
    BilateralGross,
    CurrencyNetting,
    InvalidObligation,
    NetPosition,
    NettingError,
    Obligation,
    SettlementInstruction,
    TooManyObligations,
    net,
    settlement_instructions,
    unwind,
)

BANK = SETTLEMENT_BANK_ID_DEFAULT
# Three Hong Kong payment institutions and three Shenzhen acquirers; ids sort in this order.
ALPHA, BETA, GAMMA = "hk-alphapay", "hk-betawallet", "hk-gammasvf"
FUTIAN, LUOHU, NANSHAN = "sz-futian-bank", "sz-luohu-pay", "sz-nanshan-acq"

# One CNY window, amounts in fen. Payments make an HK institution owe an acquirer; refunds run the
# other way (the acquirer owes the HK institution the refunded CNY).
WINDOW = [
    Obligation(ALPHA, FUTIAN, "CNY", 100_000),  # 1,000.00
    Obligation(ALPHA, LUOHU, "CNY", 50_000),
    Obligation(BETA, FUTIAN, "CNY", 30_000),
    Obligation(BETA, NANSHAN, "CNY", 80_000),
    Obligation(GAMMA, LUOHU, "CNY", 20_000),
    Obligation(GAMMA, NANSHAN, "CNY", 10_000),
    Obligation(FUTIAN, ALPHA, "CNY", 40_000),  # a refund
    Obligation(ALPHA, FUTIAN, "CNY", 5_000),  # a second payment on the same pair
    Obligation(NANSHAN, GAMMA, "CNY", 25_000),  # a refund
]
# By hand:
#   alpha   owes 100,000 + 50,000 + 5,000 = 155,000, is owed 40,000            → −115,000
#   beta    owes  30,000 + 80,000         = 110,000                            → −110,000
#   gamma   owes  20,000 + 10,000         =  30,000, is owed 25,000            →   −5,000
#   futian  is owed 100,000 + 30,000 + 5,000 = 135,000, owes 40,000            →  +95,000
#   luohu   is owed  50,000 + 20,000         =  70,000                         →  +70,000
#   nanshan is owed  80,000 + 10,000         =  90,000, owes 25,000            →  +65,000
#   sum: −230,000 + 230,000 = 0
# gross = 155,000 + 110,000 + 30,000 + 40,000 + 25,000 = 360,000
# net   = 95,000 + 70,000 + 65,000 = 230,000; saved 130,000; ratio 130/360 = 0.36111… → 0.3611


def test_hand_worked_window_positions():
    cny = net(WINDOW).for_currency("CNY")
    assert cny.positions == (
        NetPosition(ALPHA, "CNY", -115_000),
        NetPosition(BETA, "CNY", -110_000),
        NetPosition(GAMMA, "CNY", -5_000),
        NetPosition(FUTIAN, "CNY", 95_000),
        NetPosition(LUOHU, "CNY", 70_000),
        NetPosition(NANSHAN, "CNY", 65_000),
    )
    assert [position.direction for position in cny.positions] == ["pay"] * 3 + ["receive"] * 3
    assert cny.position(ALPHA).net_debit_minor == 115_000
    assert cny.position(FUTIAN).net_credit_minor == 95_000


def test_hand_worked_window_totals_and_saving():
    cny = net(WINDOW).for_currency("CNY")
    assert cny.gross_total_minor == 360_000
    assert cny.net_total_minor == 230_000
    assert cny.liquidity_saved_minor == 130_000
    assert cny.liquidity_saving_ratio == Decimal("0.3611")
    assert str(cny.liquidity_saving_ratio) == "0.3611"


def test_hand_worked_window_bilateral_gross_adds_up_each_pair():
    # alpha → futian is 100,000 + 5,000; the refunds stay their own direction (gross, not netted).
    assert net(WINDOW).for_currency("CNY").bilateral_gross == (
        BilateralGross(ALPHA, FUTIAN, "CNY", 105_000),
        BilateralGross(ALPHA, LUOHU, "CNY", 50_000),
        BilateralGross(BETA, FUTIAN, "CNY", 30_000),
        BilateralGross(BETA, NANSHAN, "CNY", 80_000),
        BilateralGross(GAMMA, LUOHU, "CNY", 20_000),
        BilateralGross(GAMMA, NANSHAN, "CNY", 10_000),
        BilateralGross(FUTIAN, ALPHA, "CNY", 40_000),
        BilateralGross(NANSHAN, GAMMA, "CNY", 25_000),
    )


def test_hand_worked_window_settles_through_the_bank_pay_ins_first():
    assert net(WINDOW).for_currency("CNY").instructions == (
        SettlementInstruction(ALPHA, BANK, "CNY", 115_000),
        SettlementInstruction(BETA, BANK, "CNY", 110_000),
        SettlementInstruction(GAMMA, BANK, "CNY", 5_000),
        SettlementInstruction(BANK, FUTIAN, "CNY", 95_000),
        SettlementInstruction(BANK, LUOHU, "CNY", 70_000),
        SettlementInstruction(BANK, NANSHAN, "CNY", 65_000),
    )


def test_hand_worked_unwind_of_a_debtor_and_re_netting():
    # beta cannot fund its 110,000: its two payments (to futian and nanshan) leave the batch.
    kept, removed = unwind(WINDOW, {BETA})
    assert removed == (Obligation(BETA, FUTIAN, "CNY", 30_000), Obligation(BETA, NANSHAN, "CNY", 80_000))
    assert len(kept) == 7
    cny = net(kept).for_currency("CNY")
    # By hand, without beta:
    #   alpha −115,000 and gamma −5,000 unchanged (they had no obligation with beta)
    #   futian  135,000 − 30,000 − 40,000 = +65,000
    #   luohu   +70,000 unchanged
    #   nanshan 10,000 − 25,000 = −15,000: the refund now outweighs what it is owed, so a Shenzhen
    #   acquirer becomes a net debtor: re-netting can create new debtors (the caller checks again).
    assert [(p.participant, p.net_minor) for p in cny.positions] == [
        (ALPHA, -115_000),
        (GAMMA, -5_000),
        (FUTIAN, 65_000),
        (LUOHU, 70_000),
        (NANSHAN, -15_000),
    ]
    # gross 360,000 − 110,000 = 250,000; net 65,000 + 70,000 = 135,000; saved 115,000 = 0.46
    assert (cny.gross_total_minor, cny.net_total_minor, cny.liquidity_saved_minor) == (250_000, 135_000, 115_000)
    assert cny.liquidity_saving_ratio == Decimal("0.4600")
    assert BETA not in net(kept).participants


def test_unwinding_a_creditor_removes_what_it_is_owed_and_what_it_owes():
    kept, removed = unwind(WINDOW, {NANSHAN})
    assert removed == (
        Obligation(BETA, NANSHAN, "CNY", 80_000),
        Obligation(GAMMA, NANSHAN, "CNY", 10_000),
        Obligation(NANSHAN, GAMMA, "CNY", 25_000),
    )
    assert all(NANSHAN not in (o.debtor, o.creditor) for o in kept)


def test_currencies_are_netted_apart_in_code_order():
    obligations = [
        Obligation(ALPHA, FUTIAN, "HKD", 700),
        Obligation(ALPHA, FUTIAN, "CNY", 500),
        Obligation(FUTIAN, ALPHA, "HKD", 200),
    ]
    result = net(obligations)
    assert [c.currency for c in result.currencies] == ["CNY", "HKD"]
    assert result.for_currency("HKD").positions == (NetPosition(ALPHA, "HKD", -500), NetPosition(FUTIAN, "HKD", 500))
    assert result.for_currency("CNY").net_total_minor == 500
    with pytest.raises(KeyError, match="USD"):
        result.for_currency("USD")


def test_a_balanced_circle_nets_to_nothing_and_needs_no_instruction():
    circle = [
        Obligation(ALPHA, FUTIAN, "CNY", 100),
        Obligation(FUTIAN, BETA, "CNY", 100),
        Obligation(BETA, ALPHA, "CNY", 100),
    ]
    cny = net(circle).for_currency("CNY")
    assert [p.direction for p in cny.positions] == ["flat"] * 3
    assert cny.instructions == ()
    assert (cny.gross_total_minor, cny.net_total_minor, cny.liquidity_saving_ratio) == (300, 0, Decimal("1.0000"))
    assert str(cny.liquidity_saving_ratio) == "1.0000"


def test_a_single_obligation_saves_nothing():
    cny = net([Obligation(ALPHA, FUTIAN, "CNY", 1)]).for_currency("CNY")
    assert (cny.gross_total_minor, cny.net_total_minor, cny.liquidity_saving_ratio) == (1, 1, Decimal("0.0000"))
    assert str(cny.liquidity_saving_ratio) == "0.0000"  # four places, not "0E-4"
    assert cny.instructions == (
        SettlementInstruction(ALPHA, BANK, "CNY", 1),
        SettlementInstruction(BANK, FUTIAN, "CNY", 1),
    )


def test_no_obligations_net_to_no_currencies():
    assert net([]).currencies == ()
    assert net([]).participants == frozenset()


def test_the_settlement_bank_id_is_the_callers():
    result = net(WINDOW, settlement_bank_id="hkma-chats")
    assert result.settlement_bank_id == "hkma-chats"
    assert {i.payee for i in result.for_currency("CNY").instructions[:3]} == {"hkma-chats"}


def test_a_participant_without_obligations_is_flat():
    assert net(WINDOW).for_currency("CNY").position("hk-deltapay") == NetPosition("hk-deltapay", "CNY", 0)


def test_settlement_instructions_order_positions_given_in_any_order():
    positions = [NetPosition(LUOHU, "CNY", 5), NetPosition(BETA, "CNY", -2), NetPosition(ALPHA, "CNY", -3)]
    assert settlement_instructions(positions, BANK) == (
        SettlementInstruction(ALPHA, BANK, "CNY", 3),
        SettlementInstruction(BETA, BANK, "CNY", 2),
        SettlementInstruction(BANK, LUOHU, "CNY", 5),
    )


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((ALPHA, ALPHA, "CNY", 100), "cannot owe itself"),
        (("", FUTIAN, "CNY", 100), "debtor must be an institution id"),
        ((ALPHA, None, "CNY", 100), "creditor must be an institution id"),
        ((ALPHA, FUTIAN, "cny", 100), "three capital letters"),
        ((ALPHA, FUTIAN, "CNY", 0), "between 1 and"),
        ((ALPHA, FUTIAN, "CNY", -100), "between 1 and"),
        ((ALPHA, FUTIAN, "CNY", AMOUNT_MINOR_MAX + 1), "between 1 and"),
        ((ALPHA, FUTIAN, "CNY", 1.0), "must be an int"),
        ((ALPHA, FUTIAN, "CNY", True), "must be an int"),
        ((ALPHA, FUTIAN, "CNY", Decimal(1)), "must be an int"),
    ],
)
def test_a_malformed_obligation_is_refused(fields, message):
    with pytest.raises(InvalidObligation, match=message):
        Obligation(*fields)


def test_the_settlement_bank_cannot_be_party_to_an_obligation():
    with pytest.raises(InvalidObligation, match="settlement bank settlement-bank cannot be party"):
        net([Obligation(ALPHA, BANK, "CNY", 100)])


def test_only_obligations_are_netted():
    with pytest.raises(InvalidObligation, match="expected an Obligation, got tuple"):
        net([(ALPHA, FUTIAN, "CNY", 100)])  # type: ignore[list-item]


def test_a_netting_run_has_a_bounded_size(monkeypatch):
    monkeypatch.setattr(netting_module, "OBLIGATIONS_PER_NETTING_MAX", 2)
    net(WINDOW[:2])
    with pytest.raises(TooManyObligations, match="more than 2 obligations"):
        net(WINDOW[:3])


def test_netting_errors_are_value_errors():
    assert issubclass(InvalidObligation, NettingError)
    assert issubclass(TooManyObligations, NettingError)
    assert issubclass(NettingError, ValueError)


# -- properties ------------------------------------------------------------------------------------

PARTICIPANTS = [ALPHA, BETA, GAMMA, FUTIAN, LUOHU, NANSHAN]


@st.composite
def obligations(draw: st.DrawFn) -> Obligation:
    debtor = draw(st.sampled_from(PARTICIPANTS))
    creditor = draw(st.sampled_from([p for p in PARTICIPANTS if p != debtor]))
    currency = draw(st.sampled_from(["CNY", "HKD"]))
    # Mostly everyday amounts, sometimes the largest one, so sums far past 2^63 are covered too.
    amount_minor = draw(st.one_of(st.integers(min_value=1, max_value=10**9), st.just(AMOUNT_MINOR_MAX)))
    return Obligation(debtor, creditor, currency, amount_minor)


windows = st.lists(obligations(), max_size=60)


@given(windows)
def test_nets_sum_to_zero_and_equal_each_participants_obligations(window):
    for cny_or_hkd in net(window).currencies:
        assert sum(p.net_minor for p in cny_or_hkd.positions) == 0
        expected: dict[str, int] = defaultdict(int)
        for o in window:
            if o.currency == cny_or_hkd.currency:
                expected[o.creditor] += o.amount_minor
                expected[o.debtor] -= o.amount_minor
        assert {p.participant: p.net_minor for p in cny_or_hkd.positions} == expected
        assert [p.participant for p in cny_or_hkd.positions] == sorted(expected)


@given(windows)
def test_net_total_is_at_most_gross_and_the_gross_is_every_obligation(window):
    for netting in net(window).currencies:
        underlying = [o.amount_minor for o in window if o.currency == netting.currency]
        assert netting.gross_total_minor == sum(underlying) == sum(o.amount_minor for o in netting.bilateral_gross)
        assert 0 <= netting.net_total_minor <= netting.gross_total_minor
        assert netting.liquidity_saved_minor == netting.gross_total_minor - netting.net_total_minor
        assert Decimal(0) <= netting.liquidity_saving_ratio <= Decimal(1)


def apply_instructions(netting: CurrencyNetting, bank: str) -> dict[str, int]:
    """Run the instructions in order on zero balances; the bank must never go below zero."""
    balances: dict[str, int] = defaultdict(int)
    for instruction in netting.instructions:
        assert instruction.currency == netting.currency
        assert instruction.amount_minor > 0
        balances[instruction.payer] -= instruction.amount_minor
        balances[instruction.payee] += instruction.amount_minor
        assert balances[bank] >= 0, "the bank paid out before it was paid in"
    return balances


@given(windows)
def test_instructions_leave_every_participant_at_its_net_and_the_bank_at_zero(window):
    result = net(window)
    for netting in result.currencies:
        balances = apply_instructions(netting, result.settlement_bank_id)
        assert balances.pop(result.settlement_bank_id, 0) == 0
        for position in netting.positions:
            assert balances.pop(position.participant, 0) == position.net_minor
        assert balances == {}
        # Hub and spoke: at most one instruction per participant, always with the bank.
        parties = [i.payer if i.payee == result.settlement_bank_id else i.payee for i in netting.instructions]
        assert len(parties) == len(set(parties))
        assert all(result.settlement_bank_id in (i.payer, i.payee) for i in netting.instructions)


@given(windows, st.randoms(use_true_random=False))
def test_netting_does_not_depend_on_the_order_of_obligations(window, random):
    shuffled = list(window)
    random.shuffle(shuffled)
    assert net(shuffled) == net(window)
    assert unwind(shuffled, {ALPHA}) == unwind(window, {ALPHA})


@given(windows, st.sets(st.sampled_from(PARTICIPANTS)))
def test_unwinding_then_re_netting_never_includes_an_excluded_participant(window, excluded):
    kept, removed = unwind(window, excluded)
    assert Counter(kept) + Counter(removed) == Counter(window)
    assert all(o.debtor in excluded or o.creditor in excluded for o in removed)
    assert not net(kept).participants & excluded
    for netting in net(kept).currencies:
        assert not {i.payer for i in netting.instructions} & excluded
        assert not {i.payee for i in netting.instructions} & excluded
        assert sum(p.net_minor for p in netting.positions) == 0
    assert list(kept) == sorted(kept)
    assert list(removed) == sorted(removed)
