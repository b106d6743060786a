"""A linked chain longer than the batcher's batch size (a settlement of many participants is one)
runs whole in a batch of its own, up to the hard maximum; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from ledger import AccountSpec, Batcher, ResultCode, TransferCommand
from ledger.core import BATCH_SIZE_MAX
from ledger.ids import uuid7


async def open_pair(ledger) -> tuple:
    source, target = uuid7(), uuid7()
    await ledger.create_accounts([AccountSpec(source, "CNY", "funding"), AccountSpec(target, "CNY", "wallet")])
    return source, target


def chain(source, target, length: int, *, amount: int = 1) -> list[TransferCommand]:
    return [
        TransferCommand.posted(uuid7(), source, target, amount, "CNY", linked=position < length - 1)
        for position in range(length)
    ]


async def test_a_chain_longer_than_batch_size_max_commits_whole_in_a_batch_of_its_own(ledger):
    source, target = await open_pair(ledger)
    async with Batcher(ledger, batch_size_max=10) as batcher:
        short = [batcher.submit(TransferCommand.posted(uuid7(), source, target, 1, "CNY")) for _ in range(15)]
        results, *singles = await asyncio.gather(batcher.submit_many(chain(source, target, 25)), *short)
        assert all(result.ok for result in results) and all(single.ok for single in singles)
        assert batcher.batch_sizes_max_seen == 25
    assert (await ledger.get_account(target)).balances.credits_posted == 40


async def test_a_long_chain_with_one_failing_member_moves_nothing(ledger):
    source, target = await open_pair(ledger)
    commands = chain(source, target, 30)
    commands[17] = TransferCommand.posted(uuid7(), source, uuid7(), 1, "CNY", linked=True)  # no such account
    async with Batcher(ledger, batch_size_max=10) as batcher:
        results = await batcher.submit_many(commands)
    assert results[17].code is ResultCode.ACCOUNT_NOT_FOUND
    assert {r.code for n, r in enumerate(results) if n != 17} == {ResultCode.LINKED_EVENT_FAILED}
    assert (await ledger.get_account(target)).balances.credits_posted == 0


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_chain_beyond_the_hard_maximum_is_refused_to_its_caller(ledger):
    source, target = await open_pair(ledger)
    async with Batcher(ledger, batch_size_max=10) as batcher:
        with pytest.raises(ValueError, match=f"at most {BATCH_SIZE_MAX}"):
            await batcher.submit_many(chain(source, target, BATCH_SIZE_MAX + 1))
        assert (await batcher.submit(TransferCommand.posted(uuid7(), source, target, 1, "CNY"))).ok


async def test_a_replayed_member_that_ends_its_chain_keeps_the_rest_of_the_chain_from_applying(ledger):
    """A retry of a composite operation racing the original: its key member is a replay, so the
    other members (here built for another window's accounts) must not apply."""
    a, b, c = uuid7(), uuid7(), uuid7()
    await ledger.create_accounts([AccountSpec(x, "CNY", "test") for x in (a, b, c)])
    key, first, second = uuid7(), uuid7(), uuid7()
    original = [
        TransferCommand.posted(key, a, b, 100, "CNY", linked=True, replay_ends_chain=True),
        TransferCommand.posted(first, b, c, 100, "CNY"),
    ]
    assert all(r.ok and not r.replayed for r in await ledger.submit(original))
    racing = [
        TransferCommand.posted(key, a, b, 100, "CNY", linked=True, replay_ends_chain=True),
        TransferCommand.posted(second, a, c, 100, "CNY"),
    ]
    replayed, other = await ledger.submit(racing)
    assert (replayed.code, replayed.replayed, other.code) == (ResultCode.OK, True, ResultCode.LINKED_EVENT_FAILED)
    assert await ledger.get_transfer(second) is None
    assert (await ledger.get_account(c)).balances.credits_posted == 100
    # Without the flag a replayed member lets the chain go on (what plain retries of chains rely on).
    plain = [
        TransferCommand.posted(key, a, b, 100, "CNY", linked=True),
        TransferCommand.posted(second, a, c, 100, "CNY"),
    ]
    assert [r.code for r in await ledger.submit(plain)] == [ResultCode.OK, ResultCode.OK]
