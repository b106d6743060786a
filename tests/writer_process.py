"""A real ledger writer process for the process-level tests (``tests/test_processes.py``).

Run from the project root::

    python -m tests.writer_process --url URL --key-file KEY --accounts-file ACCOUNTS \
        --ack-file ACKS [--intent-file INTENTS] [--tasks 16] [--count N] [--duration S]

It opens a :class:`Ledger` and a :class:`Batcher` on ``URL``, then runs ``--tasks`` concurrent tasks
that each submit posted CNY transfers (ids generated here, amounts 1..1000) between random pairs of
the accounts listed in ``--accounts-file`` (one UUID per line, created beforehand by the test).

Files, each written with one ``os.write`` on an ``O_APPEND`` descriptor, so a line is in the
kernel (and survives a SIGKILL of this process) as soon as the call returns:

- ``--intent-file``: ``id debit credit amount`` BEFORE the transfer is handed to the batcher;
- ``--ack-file``: the same line, only AFTER the batcher answered ``ok`` for it (the transfer is
  committed). With ``--fsync`` (the default) each ack line is also fsynced before the task goes on.

SIGTERM: ``Batcher.close()`` at once, which refuses new work and drains what is queued; every task
writes the acks of what was drained, and its next hand-in is refused (``LedgerShuttingDown``, counted
as ``refused_shutting_down``), after which it stops; then the process exits 0.

``--payment-chains``: each task hands in a linked pair instead of one transfer, as settlement will:
a payment (user_data ``payment``) and the obligation it creates between two other accounts
(user_data ``obligation:<payment id>``); both lines are written together, before and after.

The run is bounded by ``--count`` (transfers attempted) and ``--duration`` (seconds). On exit a JSON
summary goes to stdout as the last line. The exit code is
0 when every answered transfer was ``ok``, 3 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from uuid import UUID

from nacl.signing import SigningKey

from ledger import Batcher, Ledger, LedgerOverloaded, LedgerShuttingDown, LedgerUnavailable, TransferCommand
from ledger.db import create_engine
from ledger.ids import uuid7

AMOUNT_MAX_MINOR = 1_000
UNAVAILABLE_RETRIES_MAX = 20


def read_key(path: str) -> SigningKey:
    """The key file holds the 32-byte Ed25519 seed in hex."""
    with open(path) as handle:
        return SigningKey(bytes.fromhex(handle.read().strip()))


def write_key(path: str, key: SigningKey) -> None:
    with open(path, "w") as handle:
        handle.write(bytes(key).hex() + "\n")


def read_lines(path: str) -> list[tuple[UUID, UUID, UUID, int]]:
    """Complete ``id debit credit amount`` lines of an intent or ack file (a torn last line is skipped)."""
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        text = handle.read()
    found = []
    for line in text.split("\n")[:-1]:  # everything after the last newline is not a whole line
        transfer_id, debit, credit, amount = line.split()
        found.append((UUID(transfer_id), UUID(debit), UUID(credit), int(amount)))
    return found


class Appender:
    """One ``os.write`` per line on an O_APPEND descriptor; optionally fsync after it."""

    def __init__(self, path: str | None, fsync: bool) -> None:
        self.fd = None if path is None else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.fsync = fsync

    def write(self, line: str) -> None:
        if self.fd is None:
            return
        data = line.encode()
        written = os.write(self.fd, data)
        assert written == len(data), "short write to a regular file"
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


class Writer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        with open(args.accounts_file) as handle:
            self.accounts = [UUID(line.strip()) for line in handle if line.strip()]
        if len(self.accounts) < 2:
            raise SystemExit("need at least two accounts")
        self.acks = Appender(args.ack_file, args.fsync)
        self.intents = Appender(args.intent_file, False)
        self.remaining = args.count
        self.deadline = time.monotonic() + args.duration
        self.stopping = False
        self.term_received = False
        self.acked = 0
        self.acked_after_term = 0
        self.failed: list[str] = []
        self.refused_shutting_down = 0
        self.overloaded = 0
        self.unavailable = 0
        self.queued_at_term: int | None = None
        self.batcher: Batcher | None = None
        self._close_task: asyncio.Task | None = None

    def on_sigterm(self) -> None:
        # Tasks keep handing in work: the batcher must refuse it (LedgerShuttingDown) from now on.
        self.term_received = True
        assert self.batcher is not None
        self.queued_at_term = self.batcher.queued
        # Refuse new work at once; the writer task finishes what is queued.
        self._close_task = asyncio.get_running_loop().create_task(self.batcher.close())

    def _claim(self) -> bool:
        if self.stopping or time.monotonic() >= self.deadline:
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
        return True

    async def worker(self, rng: random.Random) -> None:
        batcher = self.batcher
        assert batcher is not None
        while self._claim():
            commands = self._payment_chain(rng) if self.args.payment_chains else [self._transfer(rng)]
            line = "".join(f"{c.id} {c.debit_account_id} {c.credit_account_id} {c.amount_minor}\n" for c in commands)
            self.intents.write(line)
            attempts = 0
            while True:
                try:
                    results = await batcher.submit_many(commands)
                    result = next((r for r in results if not r.ok), results[-1])
                    break
                except LedgerShuttingDown:
                    self.refused_shutting_down += 1
                    return
                except LedgerOverloaded:
                    self.overloaded += 1
                    await asyncio.sleep(0.001)
                except LedgerUnavailable:
                    # Nothing was committed; the same id is safe to hand in again.
                    self.unavailable += 1
                    attempts += 1
                    if attempts >= UNAVAILABLE_RETRIES_MAX:
                        raise
                    await asyncio.sleep(0.01 * attempts)
            if result.ok:
                self.acks.write(line)  # only now: the batch holding it is committed
                self.acked += 1
                if self.term_received:
                    self.acked_after_term += 1
            else:
                self.failed.append(f"{commands[0].id}: {result.code}")

    def _transfer(self, rng: random.Random) -> TransferCommand:
        debit, credit = rng.sample(self.accounts, 2)
        return TransferCommand.posted(uuid7(), debit, credit, rng.randint(1, AMOUNT_MAX_MINOR), "CNY")

    def _payment_chain(self, rng: random.Random) -> list[TransferCommand]:
        """A payment and its obligation, all or nothing (one linked chain through the batcher)."""
        payer, merchant, owes, owed = rng.sample(self.accounts, 4)
        amount = rng.randint(1, AMOUNT_MAX_MINOR)
        payment = TransferCommand.posted(uuid7(), payer, merchant, amount, "CNY", linked=True, user_data="payment")
        obligation = TransferCommand.posted(uuid7(), owes, owed, amount, "CNY", user_data=f"obligation:{payment.id}")
        return [payment, obligation]

    async def run(self) -> int:
        args = self.args
        ledger = Ledger(create_engine(args.url), read_key(args.key_file))
        self.batcher = Batcher(
            ledger,
            batch_size_max=args.batch_size_max,
            batch_wait_ms=args.batch_wait_ms,
            queue_depth_max=args.queue_depth_max,
            expiry_interval_s=None,
        )
        self.batcher.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        print("READY", flush=True)
        started = time.monotonic()
        try:
            seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(8), "big")
            await asyncio.gather(*(self.worker(random.Random(seed + n)) for n in range(args.tasks)))
        finally:
            self.stopping = True
            if self._close_task is not None:
                await self._close_task
            await self.batcher.close()
            await ledger.close()
            self.acks.close()
            self.intents.close()
        summary = {
            "acked": self.acked,
            "acked_after_term": self.acked_after_term,
            "term_received": self.term_received,
            "queued_at_term": self.queued_at_term,
            "refused_shutting_down": self.refused_shutting_down,
            "overloaded": self.overloaded,
            "unavailable": self.unavailable,
            "failed": self.failed[:20],
            "failed_count": len(self.failed),
            "batches_committed": self.batcher.batches_committed,
            "batch_sizes_max_seen": self.batcher.batch_sizes_max_seen,
            "retries": ledger.stats.retries,
            "retry_reasons": ledger.stats.retry_reasons,
            "seconds": round(time.monotonic() - started, 3),
        }
        print(json.dumps(summary), flush=True)
        return 0 if not self.failed else 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.writer_process", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key-file", required=True, help="hex Ed25519 seed shared with the verifier")
    parser.add_argument("--accounts-file", required=True, help="one account UUID per line (CNY, created)")
    parser.add_argument("--ack-file", required=True)
    parser.add_argument("--intent-file")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--count", type=int, default=None, help="transfers to attempt at most")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run at most")
    parser.add_argument("--batch-size-max", type=int, default=1_000)
    parser.add_argument("--batch-wait-ms", type=float, default=1.0)
    parser.add_argument("--queue-depth-max", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--payment-chains", action="store_true", help="hand in linked payment/obligation pairs")
    parser.add_argument(
        "--fsync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fsync the ack file after each ack line (default on)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(Writer(parse_args(argv)).run())


if __name__ == "__main__":
    sys.exit(main())
