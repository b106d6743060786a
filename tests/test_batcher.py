"""Group commit through the Batcher, on SQLite and PostgreSQL.

Many concurrent callers share batches and each gets its own result; linked chains stay whole; a
full queue pushes back; close() drains; a database error fails only the batch it hit; expiry runs
from the batcher's writer task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest
import sqlalchemy as sa
from conftest import Overlap, assert_invariants

from ledger import (
    AccountFlags,
    AccountSpec,
    Batcher,
    Ledger,
    LedgerOutcomeUnknown,
    LedgerOverloaded,
    LedgerShuttingDown,
    LedgerUnavailable,
    ResultCode,
    TransferCommand,
    TransferKind,
)
from ledger.db import create_engine
from ledger.ids import uuid7
from ledger.schema import journal_blocks, transfers

WAIT_S = 10  # upper bound for anything a test awaits, so a hang fails instead of stalling the run
WALLET = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS

# One and two writer tasks on each backend.
BACKENDS_AND_WRITERS = pytest.mark.parametrize(
    "backend, writers",
    [
        ("sqlite", 1),
        ("sqlite", 2),
        ("postgresql", 1),
        ("postgresql", 2),
    ],
)


@pytest.fixture
async def ledger(database_url, signing_key, clock):
    """As conftest's ``ledger``, except that each test checks the invariants at the end of its own
    body (some tests break the database on purpose first)."""
    instance = Ledger(create_engine(database_url), signing_key, clock=clock)
    yield instance
    await instance.close()


async def open_accounts(ledger, count: int, *, flags=AccountFlags.NONE, kind: str = "wallet") -> list:
    ids = [uuid7() for _ in range(count)]
    results = await ledger.create_accounts([AccountSpec(i, "CNY", kind, flags=flags) for i in ids])
    assert all(r.code == "ok" for r in results)
    return ids


async def fund(ledger, source, target, amount: int) -> None:
    [result] = await ledger.submit([TransferCommand.posted(uuid7(), source, target, amount, "CNY")])
    assert result.ok, result.code


async def stored_count(ledger) -> int:
    async with ledger.engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(transfers))).scalar_one()


async def wait_until(predicate, what: str, timeout_s: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


class Gate:
    """Holds every call of ``ledger.submit`` until released: a stalled database. However many
    writer tasks the batcher runs, each gets stuck inside its first batch."""

    def __init__(self, ledger, monkeypatch) -> None:
        self.entered = asyncio.Event()
        self.released = asyncio.Event()
        self.batch_sizes: list[int] = []
        real_submit = ledger.submit

        async def gated_submit(commands):
            self.batch_sizes.append(len(commands))
            self.entered.set()
            await self.released.wait()
            return await real_submit(commands)

        monkeypatch.setattr(ledger, "submit", gated_submit)

    def release(self) -> None:
        self.released.set()


async def warm_pool(ledger, connections: int) -> None:
    """Open pooled connections ahead, so that writer tasks released together also start together
    instead of one connect apart."""
    opened = [await ledger.engine.connect() for _ in range(connections)]
    for conn in opened:
        await conn.close()


async def test_concurrent_callers_each_get_their_own_result_in_fewer_batches_than_transfers(ledger):
    [source] = await open_accounts(ledger, 1, kind="funding")
    [poor] = await open_accounts(ledger, 1, flags=WALLET)  # holds nothing: every debit fails
    wallets = await open_accounts(ledger, 200, flags=WALLET)
    commands = []
    for n, wallet in enumerate(wallets):
        commands.append(TransferCommand.posted(uuid7(), source, wallet, n + 1, "CNY"))
        if n % 10 == 0:
            commands.append(TransferCommand.posted(uuid7(), poor, wallet, 5, "CNY"))

    async with Batcher(ledger, writers=1) as batcher:
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(c) for c in commands)), WAIT_S)

    assert len(results) == len(commands)
    for command, result in zip(commands, results):
        if command.debit_account_id == poor:
            assert result.code == ResultCode.INSUFFICIENT_FUNDS and result.transfer is None
        else:
            assert result.ok, result.code
            assert result.transfer.id == command.id
            assert (result.transfer.credit_account_id, result.transfer.amount_minor) == (
                command.credit_account_id,
                command.amount_minor,
            )
            assert not result.replayed
    assert 1 <= batcher.batches_committed < len(commands)
    assert batcher.batch_sizes_max_seen > 1
    balances = await ledger.get_accounts(wallets)
    assert [balances[w].balances.credits_posted for w in wallets] == list(range(1, 201))
    assert (await ledger.get_account(source)).balances.debits_posted == sum(range(1, 201))
    assert await stored_count(ledger) == 200
    await assert_invariants(ledger)


@pytest.mark.parametrize("user_data", ["order\x00 8841", "order \ud800"], ids=["nul", "lone-surrogate"])
async def test_user_data_the_database_cannot_store_fails_its_own_transfer_and_the_batch_commits(ledger, user_data):
    """Text with a NUL (PostgreSQL refuses it) or a lone surrogate (no UTF-8 form) must be refused
    as that command's result: as a database error it would fail every caller sharing the batch."""
    [source] = await open_accounts(ledger, 1, kind="funding")
    wallets = await open_accounts(ledger, 20)
    good = [TransferCommand.posted(uuid7(), source, wallet, 10, "CNY") for wallet in wallets]
    bad = TransferCommand.posted(uuid7(), source, wallets[0], 10, "CNY", user_data=user_data)

    async with Batcher(ledger) as batcher:
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(c) for c in [*good[:10], bad, *good[10:]])), WAIT_S
        )

    assert results[10].code == ResultCode.INVALID_COMMAND and results[10].transfer is None
    assert all(result.ok for result in results[:10] + results[11:])
    assert await stored_count(ledger) == 20
    await assert_invariants(ledger)


@pytest.mark.parametrize(
    "field, value, code",
    [
        ("id", "not-a-uuid", ResultCode.INVALID_COMMAND),
        ("debit_account_id", ["unhashable"], ResultCode.INVALID_COMMAND),
        ("credit_account_id", str(uuid7()), ResultCode.INVALID_COMMAND),
        ("amount_minor", 1.5, ResultCode.INVALID_AMOUNT),
        ("linked", "yes", ResultCode.INVALID_COMMAND),
        ("kind", "posted", ResultCode.INVALID_COMMAND),
        ("user_data", b"bytes", ResultCode.INVALID_COMMAND),
        ("currency", 156, ResultCode.INVALID_COMMAND),
        ("timeout_s", "60", ResultCode.INVALID_COMMAND),
        ("pending_id", {}, ResultCode.INVALID_COMMAND),
    ],
)
async def test_a_command_with_a_field_of_the_wrong_type_fails_alone_and_its_batch_commits(ledger, field, value, code):
    [source] = await open_accounts(ledger, 1, kind="funding")
    wallets = await open_accounts(ledger, 5)
    good = [TransferCommand.posted(uuid7(), source, wallet, 10, "CNY") for wallet in wallets]
    bad = dataclasses.replace(good[0], **{"id": uuid7(), **{field: value}})

    async with Batcher(ledger) as batcher:
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(c) for c in [good[0], good[1], bad, *good[2:]])), WAIT_S
        )

    assert results[2].code == code and results[2].transfer is None
    assert all(result.ok for result in results[:2] + results[3:])
    assert await stored_count(ledger) == 5
    await assert_invariants(ledger)


async def test_an_object_that_is_no_transfer_command_is_refused_to_its_caller_with_type_error(ledger):
    [source, wallet] = await open_accounts(ledger, 2)
    async with Batcher(ledger) as batcher:
        with pytest.raises(TypeError, match="expected TransferCommand, got dict"):
            await batcher.submit_many([TransferCommand.posted(uuid7(), source, wallet, 1, "CNY"), {"id": 1}])
        assert batcher.queued == 0
    with pytest.raises(TypeError, match="expected TransferCommand"):
        await ledger.submit([None])
    assert await stored_count(ledger) == 0


@BACKENDS_AND_WRITERS
async def test_writer_tasks_committing_batches_at_the_same_time_keep_every_balance_right(ledger, writers, monkeypatch):
    [source] = await open_accounts(ledger, 1, kind="funding")
    wallets = await open_accounts(ledger, 4, flags=WALLET)
    for wallet in wallets:
        await fund(ledger, source, wallet, 10_000)
    await warm_pool(ledger, 4)
    commands = [
        TransferCommand.posted(uuid7(), wallets[n % 4], wallets[(n + 1) % 4], 1 + n % 7, "CNY") for n in range(160)
    ]
    overlap = Overlap(ledger, monkeypatch, parties=writers)
    # Batches of at most 20, so that every writer task has one; they commit at the same moment.
    async with Batcher(ledger, writers=writers, batch_size_max=20) as batcher:
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(c) for c in commands)), WAIT_S)
    assert overlap.max_in_flight >= writers and batcher.batches_committed >= 8  # they did overlap
    assert all(r.ok for r in results)
    moved = {w: 0 for w in wallets}
    for command in commands:
        moved[command.debit_account_id] -= command.amount_minor
        moved[command.credit_account_id] += command.amount_minor
    balances = await ledger.get_accounts(wallets)
    assert {w: balances[w].balances.posted_minor for w in wallets} == {w: 10_000 + moved[w] for w in wallets}
    await assert_invariants(ledger)


async def test_linked_chains_handed_to_submit_many_stay_whole_in_one_batch(ledger):
    [source] = await open_accounts(ledger, 1, kind="funding")
    a, b, c, poor = await open_accounts(ledger, 4, flags=WALLET)
    await fund(ledger, source, a, 1_000)
    singles = [TransferCommand.posted(uuid7(), source, c, 1, "CNY") for _ in range(5)]
    good_chain = [
        TransferCommand.posted(uuid7(), a, b, 300, "CNY", linked=True),
        TransferCommand.posted(uuid7(), b, c, 200, "CNY", linked=True),
        TransferCommand.posted(uuid7(), c, a, 100, "CNY"),
    ]
    bad_chain = [
        TransferCommand.posted(uuid7(), a, b, 50, "CNY", linked=True),
        TransferCommand.posted(uuid7(), b, c, 50, "CNY", linked=True),
        TransferCommand.posted(uuid7(), poor, c, 1, "CNY"),
    ]  # poor holds nothing

    # batch_size_max 4: three singles fill most of the first batch, so a chain that could be split
    # would run past the batch boundary.
    async with Batcher(ledger, batch_size_max=4, writers=1) as batcher:  # one writer: batches in order
        calls = [
            batcher.submit(singles[0]),
            batcher.submit(singles[1]),
            batcher.submit(singles[2]),
            batcher.submit_many(good_chain),
            batcher.submit(singles[3]),
            batcher.submit_many(bad_chain),
            batcher.submit(singles[4]),
        ]
        answers = await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)

    good, bad = answers[3], answers[5]
    assert all(r.ok for r in [*answers[:3], answers[4], answers[6]])
    assert [r.code for r in good] == [ResultCode.OK] * 3
    assert [r.code for r in bad] == [
        ResultCode.LINKED_EVENT_FAILED,
        ResultCode.LINKED_EVENT_FAILED,
        ResultCode.INSUFFICIENT_FUNDS,
    ]
    assert batcher.batches_committed >= 3  # 10 commands cannot fit in fewer batches of 4
    assert batcher.batch_sizes_max_seen <= 4
    for command in bad_chain:
        assert await ledger.get_transfer(command.id) is None
    seqs = [r.transfer.seq for r in good]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    async with ledger.engine.connect() as conn:
        holding = (
            (
                await conn.execute(
                    sa.select(journal_blocks.c.sequence).where(
                        journal_blocks.c.first_transfer_seq <= seqs[0],
                        journal_blocks.c.first_transfer_seq + journal_blocks.c.transfer_count > seqs[-1],
                    )
                )
            )
            .scalars()
            .all()
        )
    assert len(holding) == 1, "the linked chain was split across journal blocks (batches)"
    a_after, b_after, c_after = [await ledger.get_account(x) for x in (a, b, c)]
    assert a_after.balances.posted_minor == 1_000 - 300 + 100
    assert b_after.balances.posted_minor == 300 - 200
    assert c_after.balances.posted_minor == 200 - 100 + 5
    await assert_invariants(ledger)


async def test_submit_many_ending_in_a_linked_command_answers_chain_open_without_touching_the_database(
    ledger, monkeypatch
):
    [source] = await open_accounts(ledger, 1, kind="funding")
    [wallet] = await open_accounts(ledger, 1, flags=WALLET)
    calls = []
    real_submit = ledger.submit

    async def counting_submit(commands):
        calls.append(list(commands))
        return await real_submit(commands)

    monkeypatch.setattr(ledger, "submit", counting_submit)
    async with Batcher(ledger) as batcher:
        open_chain = [
            TransferCommand.posted(uuid7(), source, wallet, 10, "CNY", linked=True),
            TransferCommand.posted(uuid7(), source, wallet, 20, "CNY", linked=True),
        ]
        results = await asyncio.wait_for(batcher.submit_many(open_chain), WAIT_S)
        assert [r.code for r in results] == [ResultCode.LINKED_EVENT_FAILED, ResultCode.LINKED_EVENT_CHAIN_OPEN]
        [alone] = await batcher.submit_many([TransferCommand.posted(uuid7(), source, wallet, 5, "CNY", linked=True)])
        assert alone.code == ResultCode.LINKED_EVENT_CHAIN_OPEN
        assert calls == [] and batcher.batches_committed == 0 and batcher.queued == 0
        assert await stored_count(ledger) == 0
        # The batcher is unharmed: the next caller is served normally.
        assert (
            await asyncio.wait_for(batcher.submit(TransferCommand.posted(uuid7(), source, wallet, 7, "CNY")), WAIT_S)
        ).ok
    assert len(calls) == 1
    assert (await ledger.get_account(wallet)).balances.credits_posted == 7
    await assert_invariants(ledger)


@BACKENDS_AND_WRITERS
async def test_full_queue_refuses_with_ledger_overloaded_and_refused_calls_leave_no_trace(ledger, writers, monkeypatch):
    [source] = await open_accounts(ledger, 1, kind="funding")
    [wallet] = await open_accounts(ledger, 1, flags=WALLET)
    await warm_pool(ledger, writers + 1)
    gate = Gate(ledger, monkeypatch)
    batcher = Batcher(ledger, batch_size_max=2, queue_depth_max=4, expiry_interval_s=None, writers=writers)
    batcher.start()
    accepted: list[tuple[TransferCommand, asyncio.Task]] = []
    refused: list[TransferCommand] = []

    def hand_in(amount: int) -> None:
        command = TransferCommand.posted(uuid7(), source, wallet, amount, "CNY")
        accepted.append((command, asyncio.create_task(batcher.submit(command))))

    try:
        # The database is stuck: hand in one transfer per writer task and let each writer take
        # it and hang inside its batch...
        for n in range(writers):
            hand_in(n + 1)
            await wait_until(lambda: len(gate.batch_sizes) == n + 1, f"writer {n + 1} to take a batch")
        # ...then fill the queue to its bound.
        for n in range(4):
            hand_in(10 * (n + 1))
        await wait_until(lambda: batcher.queued == 4, "the queue to fill")
        assert not any(task.done() for _, task in accepted), "a call was answered while the database was stuck"

        for amount in (7, 8, 9):
            refused.append(TransferCommand.posted(uuid7(), source, wallet, amount, "CNY"))
            with pytest.raises(LedgerOverloaded):
                await batcher.submit(refused[-1])
        extra = [TransferCommand.posted(uuid7(), source, wallet, 1_000 + n, "CNY") for n in range(2)]
        with pytest.raises(LedgerOverloaded):
            await batcher.submit_many(extra)
        refused += extra
        assert batcher.queued == 4, "a refused call must not grow the queue"
        assert len(gate.batch_sizes) == writers, "a writer took work past the stuck batches"

        gate.release()
        results = await asyncio.wait_for(asyncio.gather(*(task for _, task in accepted)), WAIT_S)
        assert all(r.ok for r in results)
        # With room again, a refused transfer goes through when its caller retries it.
        assert (await asyncio.wait_for(batcher.submit(refused[0]), WAIT_S)).ok
    finally:
        gate.release()
        await asyncio.wait_for(batcher.close(), WAIT_S)
    for command in refused[1:]:
        assert await ledger.get_transfer(command.id) is None
    expected = sum(command.amount_minor for command, _ in accepted) + refused[0].amount_minor
    assert (await ledger.get_account(wallet)).balances.credits_posted == expected
    assert await stored_count(ledger) == len(accepted) + 1
    await assert_invariants(ledger)


@BACKENDS_AND_WRITERS
async def test_close_drains_queued_work_then_refuses_new_work(ledger, writers, monkeypatch):
    [source] = await open_accounts(ledger, 1, kind="funding")
    wallets = await open_accounts(ledger, 20, flags=WALLET)
    await warm_pool(ledger, writers + 1)
    gate = Gate(ledger, monkeypatch)
    batcher = Batcher(ledger, batch_size_max=2, queue_depth_max=50, expiry_interval_s=None, writers=writers)
    batcher.start()
    commands = [TransferCommand.posted(uuid7(), source, w, n + 1, "CNY") for n, w in enumerate(wallets)]
    late = TransferCommand.posted(uuid7(), source, wallets[0], 999, "CNY")
    try:
        tasks = [asyncio.create_task(batcher.submit(c)) for c in commands]
        await asyncio.wait_for(gate.entered.wait(), WAIT_S)
        await asyncio.sleep(0.05)  # every writer is now stuck inside a batch of at most 2
        assert batcher.queued >= 10, "expected most of the work still queued"
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.01)
        assert batcher.closing and not closing.done()
        with pytest.raises(LedgerShuttingDown):
            await batcher.submit(late)
        gate.release()
        await asyncio.wait_for(closing, WAIT_S)
        assert all(task.done() for task in tasks), "close() returned before answering every queued call"
        results = [task.result() for task in tasks]
    finally:
        gate.release()
        await asyncio.wait_for(batcher.close(), WAIT_S)
    assert [r.code for r in results] == [ResultCode.OK] * 20
    assert batcher.queued == 0 and sum(gate.batch_sizes) == 20
    assert batcher.batches_committed == len(gate.batch_sizes) >= 10
    with pytest.raises(LedgerShuttingDown):
        await batcher.submit(late)
    assert await ledger.get_transfer(late.id) is None
    for command in commands:
        stored = await ledger.get_transfer(command.id)
        assert stored is not None and stored.amount_minor == command.amount_minor
    assert await stored_count(ledger) == 20
    await assert_invariants(ledger)


FAULT_AMOUNT = 777

# A real error raised by the database itself, inside the batch's transaction, when a transfer of
# FAULT_AMOUNT is inserted: neither a business rule nor a retryable conflict.
INSTALL_FAULT = {
    "postgresql": [
        "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected fault'; END $$",
        f"CREATE TRIGGER injected_fault BEFORE INSERT ON transfers FOR EACH ROW "
        f"WHEN (NEW.amount_minor = {FAULT_AMOUNT}) EXECUTE FUNCTION injected_fault()",
    ],
    "sqlite": [  # abs() of the smallest integer is a runtime "integer overflow" error
        f"CREATE TRIGGER injected_fault BEFORE INSERT ON transfers WHEN NEW.amount_minor = {FAULT_AMOUNT} "
        "BEGIN SELECT abs(-9223372036854775807 - 1); END",
    ],
}
REMOVE_FAULT = {
    "postgresql": ["DROP TRIGGER injected_fault ON transfers", "DROP FUNCTION injected_fault()"],
    "sqlite": ["DROP TRIGGER injected_fault"],
}


async def run_sql(ledger, statements) -> None:
    async with ledger.engine.begin() as conn:
        for statement in statements:
            await conn.exec_driver_sql(statement)


async def test_database_error_fails_only_that_batch_with_ledger_unavailable_and_the_next_batch_commits(ledger, backend):
    [source] = await open_accounts(ledger, 1, kind="funding")
    [wallet] = await open_accounts(ledger, 1, flags=WALLET)
    await run_sql(ledger, INSTALL_FAULT[backend])
    amounts = [1, 2, FAULT_AMOUNT, 4, 8, 16, 32, 64, 128, 256]
    commands = [TransferCommand.posted(uuid7(), source, wallet, amount, "CNY") for amount in amounts]
    async with Batcher(ledger, batch_size_max=5) as batcher:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(c) for c in commands), return_exceptions=True), WAIT_S
        )
        failed = [c for c, o in zip(commands, outcomes) if isinstance(o, BaseException)]
        succeeded = [c for c, o in zip(commands, outcomes) if not isinstance(o, BaseException)]
        assert all(isinstance(o, LedgerUnavailable) or o.ok for o in outcomes), outcomes
        assert commands[2] in failed  # the batch that hit the error failed as a whole...
        assert len(failed) <= 5 and len(succeeded) >= 5  # ...and only that batch
        assert batcher.batches_committed >= 1
        for command in failed:
            assert await ledger.get_transfer(command.id) is None
        for command in succeeded:
            assert await ledger.get_transfer(command.id) is not None
        assert (await ledger.get_account(wallet)).balances.credits_posted == sum(c.amount_minor for c in succeeded)
        # Nothing of the failed batch happened, so its callers may hand in the same ids again.
        await run_sql(ledger, REMOVE_FAULT[backend])
        retried = await asyncio.wait_for(asyncio.gather(*(batcher.submit(c) for c in failed)), WAIT_S)
        assert all(r.ok and not r.replayed for r in retried)
    assert (await ledger.get_account(wallet)).balances.credits_posted == sum(amounts)
    assert await stored_count(ledger) == 10
    await assert_invariants(ledger)


async def test_batcher_expires_pending_transfers_past_their_timeout(ledger, clock):
    [source] = await open_accounts(ledger, 1, kind="funding")
    [payer, payee] = await open_accounts(ledger, 2, flags=WALLET)
    await fund(ledger, source, payer, 500)
    async with Batcher(ledger, expiry_interval_s=0.02) as batcher:
        hold = TransferCommand.pending(uuid7(), payer, payee, 300, "CNY", timeout_s=60)
        assert (await asyncio.wait_for(batcher.submit(hold), WAIT_S)).ok
        await asyncio.sleep(0.2)  # several expiry passes; the hold's timeout has not passed
        assert await ledger.pending_status(hold.id) is None
        assert (await ledger.get_account(payer)).balances.available_minor == 200

        clock.advance(seconds=61)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while await ledger.pending_status(hold.id) is None:
            assert loop.time() < deadline, "the batcher never expired the pending transfer"
            await asyncio.sleep(0.02)
        assert await ledger.pending_status(hold.id) is TransferKind.EXPIRE_PENDING
        late_post = await asyncio.wait_for(batcher.submit(TransferCommand.post(uuid7(), hold.id)), WAIT_S)
        assert late_post.code == ResultCode.PENDING_TRANSFER_EXPIRED
    payer_after, payee_after = await ledger.get_account(payer), await ledger.get_account(payee)
    assert payer_after.balances.debits_pending == 0 and payer_after.balances.available_minor == 500
    assert payee_after.balances.credits_pending == 0 and payee_after.balances.credits_posted == 0
    await assert_invariants(ledger)


async def test_batcher_keeps_serving_and_expiring_after_a_database_error_during_an_expiry_pass(ledger, clock):
    """A failed expiry pass (here the sweep's table is briefly gone; in life, a lost connection)
    must neither kill a writer task (callers would wait forever) nor stop later expiry passes."""
    [source] = await open_accounts(ledger, 1, kind="funding")
    [payer, payee] = await open_accounts(ledger, 2, flags=WALLET)
    await fund(ledger, source, payer, 100)
    batcher = Batcher(ledger, expiry_interval_s=0.02)
    batcher.start()
    try:
        hold = TransferCommand.pending(uuid7(), payer, payee, 40, "CNY", timeout_s=60)
        assert (await asyncio.wait_for(batcher.submit(hold), WAIT_S)).ok
        # The expiry sweep's table disappears for a moment: its reads fail in the database.
        await run_sql(ledger, ["ALTER TABLE pending_timeouts RENAME TO pending_timeouts_away"])
        await asyncio.sleep(0.2)
        await run_sql(ledger, ["ALTER TABLE pending_timeouts_away RENAME TO pending_timeouts"])
        result = await asyncio.wait_for(batcher.submit(TransferCommand.posted(uuid7(), source, payee, 2, "CNY")), 1.5)
        assert result.ok
        clock.advance(seconds=61)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2
        while await ledger.pending_status(hold.id) is None:
            assert loop.time() < deadline, "pending transfers stopped expiring after the failed pass"
            await asyncio.sleep(0.02)
        await asyncio.wait_for(batcher.close(), 2)  # and no writer task died of it
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(batcher.close(), 1)
    await assert_invariants(ledger)


@BACKENDS_AND_WRITERS
async def test_a_writer_that_stops_on_a_bug_fails_its_waiting_callers_and_refuses_new_work(
    ledger, writers, monkeypatch
):
    """Nobody may wait forever on a dead writer, and /readyz must be able to tell (``alive``)."""
    [source, wallet] = await open_accounts(ledger, 2)
    batcher = Batcher(ledger, writers=writers)
    calls = 0
    real_commit = batcher._commit

    async def commit_with_a_bug(items, **options):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a bug in the writer")
        await real_commit(items, **options)

    monkeypatch.setattr(batcher, "_commit", commit_with_a_bug)
    batcher.start()
    assert batcher.alive
    first = await asyncio.wait_for(batcher.submit(TransferCommand.posted(uuid7(), source, wallet, 1, "CNY")), WAIT_S)
    assert first.ok

    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(batcher.submit(TransferCommand.posted(uuid7(), source, wallet, 1, "CNY")) for _ in range(5)),
            return_exceptions=True,
        ),
        WAIT_S,
    )

    assert outcomes and all(isinstance(o, LedgerUnavailable) and "a bug in the writer" in str(o) for o in outcomes)
    assert not batcher.alive
    with pytest.raises(LedgerUnavailable, match="writer stopped"):
        await batcher.submit(TransferCommand.posted(uuid7(), source, wallet, 1, "CNY"))
    await asyncio.wait_for(batcher.close(), WAIT_S)  # returns: the stop was reported already
    assert await stored_count(ledger) == 1
    await assert_invariants(ledger)


async def test_a_writer_cancelled_after_its_commit_tells_its_callers_the_outcome_is_unknown(ledger, monkeypatch):
    """The batch in flight when a writer stops may be committed: its callers get
    LedgerOutcomeUnknown (resubmit the same ids), and resubmitting answers the stored transfer."""
    [source, wallet] = await open_accounts(ledger, 2)
    real_submit = ledger.submit

    async def submit_then_get_cancelled(commands):
        await real_submit(commands)
        raise asyncio.CancelledError()

    batcher = Batcher(ledger)
    batcher.start()
    monkeypatch.setattr(ledger, "submit", submit_then_get_cancelled)
    command = TransferCommand.posted(uuid7(), source, wallet, 5, "CNY")

    with pytest.raises(LedgerOutcomeUnknown, match="resubmit the same ids"):
        await asyncio.wait_for(batcher.submit(command), WAIT_S)

    assert not batcher.alive
    await batcher.close()
    monkeypatch.setattr(ledger, "submit", real_submit)
    [again] = await ledger.submit([command])
    assert again.ok and again.replayed
    assert await stored_count(ledger) == 1
    await assert_invariants(ledger)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_cancellation_landing_while_sqlite_commits_stays_a_cancellation(ledger, monkeypatch):
    """aiosqlite runs COMMIT in its thread; a cancellation arriving meanwhile used to queue a
    ROLLBACK behind it, which then found no transaction and replaced the cancellation with a
    "not committed" error although the batch was stored."""
    import aiosqlite

    [source, wallet] = await open_accounts(ledger, 2)
    real_execute = aiosqlite.Connection.execute
    armed = [True]
    in_flight: list[asyncio.Future] = []  # the COMMIT sent ahead of the cancellation

    async def execute(self, sql, *args, **kwargs):
        if sql == "COMMIT" and armed:
            armed.clear()
            in_flight.append(asyncio.ensure_future(real_execute(self, sql, *args, **kwargs)))
            await asyncio.sleep(0)
            raise asyncio.CancelledError()
        return await real_execute(self, sql, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "execute", execute)
    command = TransferCommand.posted(uuid7(), source, wallet, 5, "CNY")

    with pytest.raises(asyncio.CancelledError):
        await ledger.submit([command])

    await asyncio.sleep(0.05)  # the COMMIT finishes in aiosqlite's thread
    assert (await ledger.get_transfer(command.id)).amount_minor == 5
    [again] = await ledger.submit([command])
    assert again.ok and again.replayed
    await assert_invariants(ledger)
