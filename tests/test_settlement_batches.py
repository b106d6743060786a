"""Settlement batches on SQLite and PostgreSQL: closing a window gives its netted batch, settling
moves exactly the instructions between settlement accounts (once, even if run again), a net debtor
short of liquidity is unwound and its obligations carried into a later batch with nothing lost, and
the liquidity bounds the net debit cap unless the operator says otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nacl.signing import SigningKey

from ledger import Batcher, TransferCommand
from ledger.ids import uuid7
from settlement.errors import BatchNotSettleable, WindowNotOpen
from tests.settlement_support import Corridor, build_corridor
from wallets.errors import NotFound
from wallets.model import AccountRole, InstitutionKind

PAYERS = {"hk-alpha": 10_000_000, "hk-beta": 10_000_000, "hk-gamma": 10_000_000}
ACQUIRERS = ["sz-one", "sz-two", "sz-three"]


@pytest.fixture
async def corridor(ledger) -> AsyncIterator[Corridor]:
    async with Batcher(ledger) as batcher:
        corridor = await build_corridor(ledger, batcher, PAYERS, ACQUIRERS)
        for payer in PAYERS:
            await corridor.prefund(payer, 10_000_000)
        yield corridor


async def _pay_grid(corridor: Corridor) -> dict[tuple[str, str], int]:
    """Each payer pays each acquirer a different amount; the expected gross per pair."""
    expected: dict[tuple[str, str], int] = {}
    for i, payer in enumerate(PAYERS):
        for j, acquirer in enumerate(ACQUIRERS):
            amount = 1_000 * (i + 1) + 10 * (j + 1)
            for _ in range(2):
                assert (await corridor.pay(payer, acquirer, amount)).ok
            expected[payer, acquirer] = 2 * amount
    return expected


async def test_closing_a_window_answers_its_batch_netted_from_the_books(corridor):
    expected = await _pay_grid(corridor)
    batch = await corridor.settlement.close(1, actor="operator")
    assert (batch.id, batch.status) == (1, "closed")
    assert {(o.debtor, o.creditor): o.amount_minor for o in batch.obligations} == expected
    cny = batch.netting.for_currency("CNY")
    assert sum(p.net_minor for p in cny.positions) == 0
    for payer in PAYERS:
        assert cny.position(payer).net_minor == -sum(a for (d, _), a in expected.items() if d == payer)
    assert cny.gross_total_minor == sum(expected.values()) == cny.net_total_minor  # no one both pays and receives
    assert [change.status for change in batch.history] == ["open", "closed"]
    with pytest.raises(WindowNotOpen):
        await corridor.settlement.close(1, actor="operator")
    with pytest.raises(NotFound):
        await corridor.settlement.batch(2)  # the open window has no batch yet


async def test_settling_moves_exactly_the_instructions_between_settlement_accounts_once(corridor):
    await _pay_grid(corridor)
    await corridor.settlement.close(1, actor="operator")
    participants = [*PAYERS, *ACQUIRERS, "settlement-bank"]
    before = {p: await corridor.settlement_balance(p) for p in participants}
    batch = await corridor.settlement.settle(1, actor="operator")
    assert batch.status == "settled" and not batch.exclusions
    cny = batch.netting.for_currency("CNY")
    for participant in participants:
        moved = await corridor.settlement_balance(participant) - before[participant]
        assert moved == (cny.position(participant).net_minor if participant != "settlement-bank" else 0)
    assert [change.status for change in batch.history] == ["open", "closed", "settling", "settled"]
    again = await corridor.settlement.settle(1, actor="operator")
    assert again.status == "settled"
    assert {p: await corridor.settlement_balance(p) for p in participants} == {
        p: before[p] + (cny.position(p).net_minor if p != "settlement-bank" else 0) for p in participants
    }


async def test_a_settle_cut_off_after_its_chain_committed_finishes_without_paying_twice(corridor, monkeypatch):
    await _pay_grid(corridor)
    await corridor.settlement.close(1, actor="operator")
    before = await corridor.settlement_balance("hk-alpha")

    async def crash(*_args, **_kwargs):
        raise ConnectionError("the process died after the chain committed")

    monkeypatch.setattr(corridor.windows, "set_status", crash)
    with pytest.raises(ConnectionError):
        await corridor.settlement.settle(1, actor="operator")
    assert (await corridor.windows.get(1)).status == "settling"
    paid_once = await corridor.settlement_balance("hk-alpha")
    assert paid_once < before
    monkeypatch.undo()
    assert (await corridor.settlement.settle(1, actor="operator")).status == "settled"
    assert await corridor.settlement_balance("hk-alpha") == paid_once


async def test_a_net_debtor_short_of_liquidity_is_unwound_and_its_payments_settle_in_a_later_batch(corridor):
    expected = await _pay_grid(corridor)
    # hk-gamma's liquidity falls one unit short of its net debit.
    gamma_debit = sum(a for (d, _), a in expected.items() if d == "hk-gamma")
    await _drain_liquidity(corridor, "hk-gamma", keep_minor=gamma_debit - 1)
    await corridor.settlement.close(1, actor="operator")
    batch = await corridor.settlement.settle(1, actor="operator")
    assert batch.status == "unwound"
    assert [(e.institution_id, e.net_debit_minor, e.liquidity_minor) for e in batch.exclusions] == [
        ("hk-gamma", gamma_debit, gamma_debit - 1)
    ]
    assert "hk-gamma" not in batch.netting.participants
    assert sum(o.amount_minor for o in batch.carried_out) == gamma_debit
    assert await corridor.settlement_balance("hk-gamma") == gamma_debit - 1  # it paid nothing
    # The carried obligations are in the next window's batch, with that window's own payments.
    assert (await corridor.pay("hk-alpha", "sz-one", 500)).ok
    await corridor.prefund("hk-gamma", 1)
    batch2 = await corridor.settlement.close(2, actor="operator")
    assert set(batch2.carried_in) == set(batch.carried_out)
    assert (await corridor.settlement.settle(2, actor="operator")).status == "settled"
    # Nothing lost: every obligation of window 1 settled once, in batch 1 or batch 2.
    received = {a: await corridor.settlement_balance(a) for a in ACQUIRERS}
    assert received["sz-one"] == sum(v for (_, c), v in expected.items() if c == "sz-one") + 500
    assert received["sz-two"] == sum(v for (_, c), v in expected.items() if c == "sz-two")
    assert await corridor.settlement_balance("hk-gamma") == 0


async def test_carried_obligations_count_against_the_excluded_institutions_cap(ledger):
    async with Batcher(ledger) as batcher:
        corridor = await build_corridor(ledger, batcher, {"hk-alpha": 50_000}, ["sz-one"])
        await corridor.prefund("hk-alpha", 50_000)
        assert (await corridor.pay("hk-alpha", "sz-one", 30_000)).ok
        await _drain_liquidity(corridor, "hk-alpha", keep_minor=20_000)
        await corridor.settlement.close(1, actor="operator")
        assert (await corridor.settlement.settle(1, actor="operator")).status == "unwound"
        # The cap in force is now its liquidity, 20,000, and 30,000 is still owed: nothing more.
        assert (await corridor.pay("hk-alpha", "sz-one", 1)).code == "net_debit_cap_exceeded"
        await corridor.prefund("hk-alpha", 30_000)
        assert (await corridor.pay("hk-alpha", "sz-one", 20_000)).ok
        assert (await corridor.pay("hk-alpha", "sz-one", 1)).code == "net_debit_cap_exceeded"


async def test_the_net_debit_cap_in_force_is_bounded_by_liquidity_unless_the_operator_allows_more(ledger):
    async with Batcher(ledger) as batcher:
        corridor = await build_corridor(ledger, batcher, {"hk-alpha": 50_000}, ["sz-one"])
        assert (await corridor.pay("hk-alpha", "sz-one", 1)).code == "net_debit_cap_exceeded"  # no liquidity
        await corridor.prefund("hk-alpha", 10_000)
        assert (await corridor.pay("hk-alpha", "sz-one", 10_001)).code == "net_debit_cap_exceeded"
        assert (await corridor.pay("hk-alpha", "sz-one", 10_000)).ok
        await corridor.liquidity.allow_beyond_liquidity("hk-alpha", True, actor="operator")
        assert (await corridor.pay("hk-alpha", "sz-one", 40_001)).code == "net_debit_cap_exceeded"
        assert (await corridor.pay("hk-alpha", "sz-one", 40_000)).ok  # the registered cap, 50,000


async def test_batches_settle_oldest_first_and_only_once_closed_through_a_settlement_bank(ledger):
    async with Batcher(ledger) as batcher:
        corridor = await build_corridor(ledger, batcher, {"hk-alpha": None}, ["sz-one"], bank=False)
        await corridor.prefund("hk-alpha", 10_000)
        assert (await corridor.pay("hk-alpha", "sz-one", 100)).ok
        with pytest.raises(NotFound):
            await corridor.settlement.batch(1)  # open: running totals, no batch
        with pytest.raises(BatchNotSettleable):
            await corridor.settlement.settle(1, actor="operator")  # still open
        await corridor.settlement.close(1, actor="operator")
        with pytest.raises(BatchNotSettleable, match="settlement bank"):
            await corridor.settlement.settle(1, actor="operator")
        await corridor.settlement.close(2, actor="operator")
        key = bytes(SigningKey.generate().verify_key)
        await corridor.book.register_institution("settlement-bank", InstitutionKind.SETTLEMENT_BANK, "Bank", key)
        with pytest.raises(BatchNotSettleable, match="oldest first"):
            await corridor.settlement.settle(2, actor="operator")
        assert (await corridor.settlement.settle(1, actor="operator")).status == "settled"
        empty = await corridor.settlement.settle(2, actor="operator")
        assert empty.status == "settled" and not empty.obligations


async def _drain_liquidity(corridor: Corridor, institution_id: str, *, keep_minor: int) -> None:
    """Move the institution's settlement money back to its funding account, leaving ``keep_minor``
    (the ledger-level way liquidity is spent; the API has no withdrawal of liquidity)."""
    institution = await corridor.book.get_institution(institution_id)
    held = await corridor.settlement_balance(institution_id)
    [result] = await corridor.ledger.submit(
        [
            TransferCommand.posted(
                uuid7(),
                institution.accounts[("CNY", AccountRole.SETTLEMENT)],
                institution.accounts[("CNY", AccountRole.FUNDING)],
                held - keep_minor,
                "CNY",
            )
        ]
    )
    assert result.ok, result.code
