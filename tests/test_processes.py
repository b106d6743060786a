"""Process-level tests: real writer processes (``tests/writer_process.py``) against one database.

Several processes at once on PostgreSQL; SIGKILL mid-stream and restart on both databases; SIGTERM
drains. What a writer acknowledged it wrote to its ack file only after the batcher answered ``ok``;
what it was about to hand in it wrote to its intent file first. The signing key is shared through a
key file, so the test verifies the audit chain the processes wrote.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa
from conftest import assert_invariants
from nacl.signing import SigningKey

from ledger import AccountSpec, Ledger, TransferCommand
from ledger.db import create_engine
from ledger.ids import uuid7
from ledger.schema import accounts, journal_blocks, journal_head, transfers

try:
    from tests.writer_process import read_lines, write_key
except ImportError:  # tests/ imported as rootdir modules rather than as a package
    from writer_process import read_lines, write_key

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_COUNT = 12
START_TIMEOUT_S = 30  # a writer imports, connects and acknowledges its first transfers within this
EXIT_TIMEOUT_S = 30


class WriterProcess:
    """One ``python -m tests.writer_process`` child with its own ack and intent files."""

    def __init__(self, tmp_path: Path, name: str, url: str, key_file: Path, accounts_file: Path, *args: str) -> None:
        self.name = name
        self.ack_file = tmp_path / f"{name}.acks"
        self.intent_file = tmp_path / f"{name}.intents"
        self.out_file = tmp_path / f"{name}.out"
        self.err_file = tmp_path / f"{name}.err"
        with open(self.out_file, "w") as out, open(self.err_file, "w") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.writer_process",
                    "--url",
                    url,
                    "--key-file",
                    str(key_file),
                    "--accounts-file",
                    str(accounts_file),
                    "--ack-file",
                    str(self.ack_file),
                    "--intent-file",
                    str(self.intent_file),
                    *args,
                ],
                cwd=ROOT,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    def acks(self):
        return read_lines(str(self.ack_file))

    def intents(self):
        return read_lines(str(self.intent_file))

    def output(self) -> str:
        return f"--- {self.name} stdout:\n{self.out_file.read_text()}\n--- stderr:\n{self.err_file.read_text()[-4000:]}"

    def summary(self) -> dict:
        lines = [line for line in self.out_file.read_text().splitlines() if line.startswith("{")]
        assert lines, f"{self.name} printed no summary\n{self.output()}"
        return json.loads(lines[-1])

    async def wait_for_acks(self, count: int, timeout_s: float = START_TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.acks()) < count:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}) before {count} acks\n{self.output()}"
                )
            if loop.time() > deadline:
                raise AssertionError(
                    f"{self.name} acknowledged {len(self.acks())} < {count} in {timeout_s}s\n{self.output()}"
                )
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.process.poll() is None:
            if loop.time() > deadline:
                raise AssertionError(f"{self.name} did not exit within {timeout_s}s\n{self.output()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
async def setup(database_url, tmp_path):
    """Accounts to write among, a shared key file, a verifying ledger, and the children to reap."""
    key = SigningKey.generate()
    key_file = tmp_path / "ledger.key"
    write_key(str(key_file), key)
    verifier = Ledger(create_engine(database_url), key)
    account_ids = [uuid7() for _ in range(ACCOUNT_COUNT)]
    results = await verifier.create_accounts([AccountSpec(i, "CNY", "test") for i in account_ids])
    assert all(r.code == "ok" for r in results)
    accounts_file = tmp_path / "accounts.txt"
    accounts_file.write_text("".join(f"{i}\n" for i in account_ids))
    children: list[WriterProcess] = []

    def start(name: str, *args: str) -> WriterProcess:
        child = WriterProcess(tmp_path, name, database_url, key_file, accounts_file, *args)
        children.append(child)
        return child

    try:
        yield verifier, start
    finally:
        for child in children:
            child.kill()
        await verifier.close()


async def stored_transfers(ledger: Ledger) -> dict:
    """id -> (debit, credit, amount) for every stored transfer; fails if an id is stored twice."""
    async with ledger.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    transfers.c.id,
                    transfers.c.debit_account_id,
                    transfers.c.credit_account_id,
                    transfers.c.amount_minor,
                )
            )
        ).all()
    counts = Counter(row.id for row in rows)
    assert not [i for i, n in counts.items() if n > 1], "a transfer id is stored more than once"
    return {row.id: (row.debit_account_id, row.credit_account_id, row.amount_minor) for row in rows}


async def assert_no_half_batch(ledger: Ledger) -> None:
    """Every journal block's transfers are all there, and there is no transfer outside a block."""
    async with ledger.engine.connect() as conn:
        stored = (
            await conn.execute(
                sa.select(sa.func.count(), sa.func.min(transfers.c.seq), sa.func.max(transfers.c.seq)).select_from(
                    transfers
                )
            )
        ).one()
        in_blocks = (
            await conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(journal_blocks.c.transfer_count), 0), sa.func.count())
            )
        ).one()
        head = (await conn.execute(sa.select(journal_head))).one()
    count, first, last = stored
    assert count == in_blocks[0], f"{count} transfers stored, blocks account for {in_blocks[0]}"
    assert head.sequence == in_blocks[1] and head.last_transfer_seq == count
    if count:
        assert (first, last) == (1, count), "transfer seqs are not contiguous"
    report = await ledger.verify_audit()
    assert report.ok, report.problems
    assert report.transfers_checked == count and report.blocks_checked == head.sequence


def as_map(lines) -> dict:
    return {transfer_id: (debit, credit, amount) for transfer_id, debit, credit, amount in lines}


async def assert_balances_equal(ledger: Ledger, moves: dict) -> None:
    expected = defaultdict(lambda: [0, 0])
    for debit, credit, amount in moves.values():
        expected[debit][0] += amount
        expected[credit][1] += amount
    async with ledger.engine.connect() as conn:
        rows = (await conn.execute(sa.select(accounts.c.id, accounts.c.debits_posted, accounts.c.credits_posted))).all()
    for row in rows:
        assert [row.debits_posted, row.credits_posted] == expected[row.id], f"balances of {row.id} are off"


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_three_writer_processes_on_one_postgres_store_every_ack_once_with_matching_balances(setup):
    verifier, start = setup
    writers = [start(f"writer{n}", "--duration", "4", "--count", "4000", "--tasks", "16") for n in range(3)]
    for writer in writers:
        assert await writer.wait_exit() == 0, writer.output()

    acked = [as_map(writer.acks()) for writer in writers]
    for writer, acks in zip(writers, acked):
        summary = writer.summary()
        assert summary["acked"] == len(acks) > 100, writer.output()
        assert summary["failed_count"] == 0
        # Accounts are locked in id order in every process: no deadlock to retry, nor anything else.
        assert summary["retries"] == 0, summary["retry_reasons"]
    union = {k: v for acks in acked for k, v in acks.items()}
    assert len(union) == sum(len(acks) for acks in acked)
    stored = await stored_transfers(verifier)
    # Every writer exited normally, so everything it handed in was answered: stored == acknowledged.
    assert stored == union
    await assert_balances_equal(verifier, union)
    await assert_no_half_batch(verifier)
    await assert_invariants(verifier)
    # The processes really wrote at the same time: their transfers interleave in the global order.
    owner = {transfer_id: n for n, acks in enumerate(acked) for transfer_id in acks}
    async with verifier.engine.connect() as conn:
        order = (await conn.execute(sa.select(transfers.c.id).order_by(transfers.c.seq))).scalars().all()
    switches = sum(1 for a, b in itertools.pairwise(order) if owner[a] != owner[b])
    assert switches >= 10, f"writers barely overlapped ({switches} switches)"


async def test_sigkill_mid_stream_then_restart_keeps_every_ack_exactly_once_and_no_half_batch(setup, backend):
    verifier, start = setup
    first = start("killed", "--duration", "60", "--tasks", "16")
    await first.wait_for_acks(300)
    await asyncio.sleep(0.1)  # let it run on a little: the kill lands mid-stream, not at a pause
    first.process.send_signal(signal.SIGKILL)
    assert await first.wait_exit() == -signal.SIGKILL
    acked_before_kill = as_map(first.acks())
    intended_before_kill = as_map(first.intents())
    assert len(acked_before_kill) >= 300

    second = start("restarted", "--count", "500", "--duration", "30", "--tasks", "16")
    assert await second.wait_exit() == 0, second.output()
    acked_after_restart = as_map(second.acks())
    assert len(acked_after_restart) == 500 and second.summary()["failed_count"] == 0

    stored = await stored_transfers(verifier)
    for transfer_id, move in {**acked_before_kill, **acked_after_restart}.items():
        assert stored.get(transfer_id) == move, f"acknowledged transfer {transfer_id} is not stored as acknowledged"
    intended = {**intended_before_kill, **as_map(second.intents())}
    strays = set(stored) - set(intended)
    assert not strays, f"{len(strays)} stored transfers no writer ever handed in"
    for transfer_id, move in stored.items():
        assert intended[transfer_id] == move
    # What was in flight at the kill either committed whole (stored, unacknowledged) or not at all.
    in_flight = set(intended_before_kill) - set(acked_before_kill)
    assert in_flight, "the kill cut nothing off: nothing was in flight"
    in_flight_stored = set(stored) - set(acked_before_kill) - set(acked_after_restart)
    assert in_flight_stored <= in_flight
    await assert_no_half_batch(verifier)
    await assert_invariants(verifier)
    await assert_balances_equal(verifier, stored)

    # A client that never heard back resubmits the same ids: each is answered as stored (replayed)
    # if its batch committed before the kill, or applied now, and none is applied twice.
    resubmitted = sorted(in_flight)
    results = await verifier.submit(
        [TransferCommand.posted(transfer_id, *intended_before_kill[transfer_id], "CNY") for transfer_id in resubmitted]
    )
    assert all(result.ok for result in results)
    assert {i for i, result in zip(resubmitted, results) if result.replayed} == in_flight_stored
    after = await stored_transfers(verifier)
    assert after == {**stored, **{i: intended_before_kill[i] for i in in_flight}}
    await assert_balances_equal(verifier, after)
    await assert_no_half_batch(verifier)


@pytest.mark.parametrize("kill_after_acks", [50, 200, 400])
async def test_sigkill_at_any_point_leaves_each_payment_with_its_obligation_or_neither(setup, backend, kill_after_acks):
    """Settlement records a payment's obligation in the same linked chain as the payment; a
    process killed anywhere must leave both transfers of a chain stored, or neither."""
    verifier, start = setup
    writer = start("chains", "--payment-chains", "--duration", "60", "--tasks", "16")
    await writer.wait_for_acks(kill_after_acks)
    await asyncio.sleep(random.uniform(0, 0.2))
    writer.process.send_signal(signal.SIGKILL)
    assert await writer.wait_exit() == -signal.SIGKILL

    async with verifier.engine.connect() as conn:
        rows = (await conn.execute(sa.select(transfers.c.id, transfers.c.user_data))).all()
    payments = {row.id for row in rows if row.user_data == "payment"}
    obligations = {UUID(row.user_data.split(":", 1)[1]) for row in rows if row.user_data.startswith("obligation:")}
    assert payments == obligations, "a payment without its obligation, or an obligation without its payment"
    acked = as_map(writer.acks())
    assert set(acked) <= {row.id for row in rows}
    intended = as_map(writer.intents())
    assert len(intended) > len(acked), "the kill cut nothing off"
    await assert_no_half_batch(verifier)
    await assert_invariants(verifier)


async def test_sigterm_drains_in_flight_work_refuses_new_work_and_exits_zero(setup, backend):
    verifier, start = setup
    writer = start("terminated", "--duration", "60", "--tasks", "16")
    await writer.wait_for_acks(300)
    writer.process.send_signal(signal.SIGTERM)
    assert await writer.wait_exit(EXIT_TIMEOUT_S) == 0, writer.output()

    summary = writer.summary()
    acked = as_map(writer.acks())
    assert summary["term_received"] and summary["acked"] == len(acked)
    assert summary["failed_count"] == 0
    # Work already handed in when the signal came was finished and acknowledged...
    assert summary["acked_after_term"] >= 1, summary
    # ...and the tasks that came back for more were refused.
    assert summary["refused_shutting_down"] >= 1, summary
    stored = await stored_transfers(verifier)
    assert set(stored) >= set(acked), "an acknowledged transfer is missing"
    for transfer_id, move in acked.items():
        assert stored[transfer_id] == move
    # A drained shutdown answers everything it accepted: nothing is stored that was not acknowledged.
    assert set(stored) == set(acked)
    refused = set(as_map(writer.intents())) - set(acked)
    assert len(refused) == summary["refused_shutting_down"]
    await assert_no_half_batch(verifier)
    await assert_invariants(verifier)
