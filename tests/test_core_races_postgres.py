"""Races the core's new pieces must win on PostgreSQL, with real concurrent transactions on their
own connections, and ledger instances on separate engines standing in for separate processes:
an overdraft (net debit) cap crossed jointly, one id refused in one instance and paid in another,
and two instances with different signing keys starting on an empty chain."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from conftest import assert_invariants
from nacl.signing import SigningKey

import ledger.journal
from ledger import AccountSpec, Batcher, Ledger, LedgerKeyMismatch, Limits, ResultCode, TransferCommand
from ledger.db import create_engine
from ledger.ids import uuid7

# Real concurrent connections on PostgreSQL, seconds each: in CI's full run, out of the fast loop.
pytestmark = [pytest.mark.parametrize("backend", ["postgresql"]), pytest.mark.slow]
BARRIER_TIMEOUT_S = 10


@pytest.fixture
async def instances(database_url, signing_key, clock):
    opened: list[Ledger] = []

    def open_instance(key: SigningKey = signing_key, **engine_options) -> Ledger:
        instance = Ledger(create_engine(database_url, **engine_options), key, clock=clock)
        opened.append(instance)
        return instance

    yield open_instance
    for instance in opened:
        await instance.close()


class HeadBarrier:
    """Holds each instance's first take of the journal head until all have arrived, so that every
    one has read its ids and balances under its own account locks before any of them writes."""

    def __init__(self, parties: int) -> None:
        self.barrier = asyncio.Barrier(parties)
        self.first_call: set[int] = set()

    def wrap(self, lock_head):
        async def waiting_lock_head(*args):
            if id(lock_head) not in self.first_call:
                self.first_call.add(id(lock_head))
                with contextlib.suppress(TimeoutError, asyncio.BrokenBarrierError):
                    await asyncio.wait_for(self.barrier.wait(), BARRIER_TIMEOUT_S)
            return await lock_head(*args)

        return waiting_lock_head


async def test_fifty_concurrent_debits_cannot_jointly_cross_an_overdraft_cap(instances):
    """A net debit cap of 1,000 and fifty payments of 100 from two instances at once: exactly ten."""
    first, second = instances(pool_size=30, max_overflow=0), instances(pool_size=30, max_overflow=0)
    position, counterpart = uuid7(), uuid7()
    await first.create_accounts(
        [
            AccountSpec(position, "CNY", "position", limits=Limits(debit_balance_cap_minor=1_000)),
            AccountSpec(counterpart, "CNY", "position"),
        ]
    )
    commands = [TransferCommand.posted(uuid7(), position, counterpart, 100, "CNY") for _ in range(50)]

    results = await asyncio.gather(
        *((first if n % 2 else second).submit([command]) for n, command in enumerate(commands))
    )

    codes = [result.code for [result] in results]
    assert codes.count(ResultCode.OK) == 10
    assert codes.count(ResultCode.DEBIT_BALANCE_CAP_EXCEEDED) == 40
    account = await first.get_account(position)
    assert account.balances.debits_posted - account.balances.credits_posted == 1_000
    await assert_invariants(first)


async def test_concurrent_batchers_in_two_instances_hold_the_cap_too(instances):
    first, second = instances(), instances()
    position, counterpart = uuid7(), uuid7()
    await first.create_accounts(
        [
            AccountSpec(position, "CNY", "position", limits=Limits(debit_balance_cap_minor=2_500)),
            AccountSpec(counterpart, "CNY", "position"),
        ]
    )
    async with Batcher(first) as one, Batcher(second) as two:
        results = await asyncio.gather(
            *(
                (one if n % 2 else two).submit(TransferCommand.pending(uuid7(), position, counterpart, 100, "CNY"))
                for n in range(60)
            )
        )
    assert sum(result.ok for result in results) == 25
    assert (await first.get_account(position)).balances.debits_pending == 2_500
    await assert_invariants(first)


async def test_one_id_refused_in_one_instance_and_paid_in_another_at_once_is_stored_once(instances, monkeypatch):
    """Different fields, disjoint accounts, so no common lock: both read the id as free. The
    second to take the head finds it on the other side and is retried into a conflict."""
    clashes = 0
    for _ in range(3):
        refusing, paying = instances(), instances()
        barrier = HeadBarrier(2)
        for instance in (refusing, paying):
            monkeypatch.setattr(instance._store, "lock_head", barrier.wrap(instance._store.lock_head))
        empty, shop, funding, wallet = uuid7(), uuid7(), uuid7(), uuid7()
        await refusing.create_accounts(
            [
                AccountSpec(empty, "CNY", "wallet", flags=1),
                AccountSpec(shop, "CNY", "merchant"),
                AccountSpec(funding, "CNY", "funding"),
                AccountSpec(wallet, "CNY", "wallet"),
            ]
        )
        shared_id = uuid7()
        refused, paid = await asyncio.gather(
            refusing.submit([TransferCommand.posted(shared_id, empty, shop, 5, "CNY")]),
            paying.submit([TransferCommand.posted(shared_id, funding, wallet, 7, "CNY")]),
        )
        outcomes = sorted(str(result.code) for [result] in (refused, paid))
        stored_transfer = await paying.get_transfer(shared_id)
        stored_refusal = await paying.get_refusal(shared_id)
        assert (stored_transfer is None) != (stored_refusal is None), "the id is stored on both sides"
        assert "exists_with_different_fields" in outcomes, outcomes
        clashes += sum(i.stats.retry_reasons.get("IdClash", 0) for i in (refusing, paying))
        report = await paying.verify_audit()
        assert report.ok, report.problems
    assert clashes >= 1, "the race was never run: both batches must have read the id as free"


async def test_two_instances_with_different_keys_on_an_empty_chain_cannot_both_seal(instances, monkeypatch):
    """Checked once per process outside the head lock, both would pass on an empty chain."""
    barrier = HeadBarrier(2)
    real_lock_head = ledger.journal.lock_head
    monkeypatch.setattr(ledger.journal, "lock_head", barrier.wrap(real_lock_head))
    first, second = instances(SigningKey.generate()), instances(SigningKey.generate())

    outcomes = await asyncio.gather(
        first.create_accounts([AccountSpec(uuid7(), "CNY", "wallet")]),
        second.create_accounts([AccountSpec(uuid7(), "CNY", "wallet")]),
        return_exceptions=True,
    )

    mismatches = [o for o in outcomes if isinstance(o, LedgerKeyMismatch)]
    assert len(mismatches) == 1, outcomes
    winner = first if not isinstance(outcomes[0], Exception) else second
    report = await winner.verify_audit()
    assert report.ok and report.blocks_checked == 1
