"""Group commit: many concurrent callers, one writer task, one database transaction per batch.

Callers hand in commands (one, or a linked chain that must stay whole) and await their results.
The writer drains the queue into batches of at most ``batch_size_max`` commands, waiting at most
``batch_wait_ms`` for a batch to fill, applies each with ``Ledger.submit`` and answers every caller
with its own result. A hot merchant account is then updated once per batch, not once per payment.

Every bound is named: a full queue refuses new work with :class:`LedgerOverloaded` instead of
growing, and :meth:`Batcher.close` refuses new work with :class:`LedgerShuttingDown` while it
finishes what was queued, so that a SIGTERM loses no accepted transfer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

from ledger.core import Ledger
from ledger.errors import (
    LedgerError,
    LedgerOutcomeUnknown,
    LedgerOverloaded,
    LedgerShuttingDown,
    LedgerUnavailable,
    ResultCode,
)
from ledger.model import TransferCommand, TransferResult
from ledger.submit import BATCH_SIZE_MAX, check_commands

log = logging.getLogger(__name__)

BATCH_SIZE_MAX_DEFAULT = 1_000
BATCH_WAIT_MS_DEFAULT = 1.0
QUEUE_DEPTH_MAX_DEFAULT = 50_000
EXPIRY_INTERVAL_S_DEFAULT = 1.0
WRITERS_MAX = 4
# A writer splits the queue with an idle writer only when each half still makes a real batch.
PIPELINE_SPLIT_MIN = 16


class _Item:
    __slots__ = ("commands", "future")

    def __init__(self, commands: list[TransferCommand], future: asyncio.Future[list[TransferResult]]) -> None:
        self.commands = commands
        self.future = future


class Batcher:
    """The per-process write path in front of a :class:`Ledger`. Use as an async context manager
    or call :meth:`start` and :meth:`close`."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        batch_size_max: int = BATCH_SIZE_MAX_DEFAULT,
        batch_wait_ms: float = BATCH_WAIT_MS_DEFAULT,
        queue_depth_max: int = QUEUE_DEPTH_MAX_DEFAULT,
        expiry_interval_s: float | None = EXPIRY_INTERVAL_S_DEFAULT,
        writers: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if writers is None:
            # One writer: measured on PostgreSQL, two writers splitting the queue cost more per
            # transfer (twice the batches, each paying BEGIN/commit/head) than their overlap won,
            # because the journal head serialises the write half of every batch anyway. SQLite has
            # one writer at a time whatever we do.
            writers = 1
        if not 1 <= writers <= WRITERS_MAX:
            raise ValueError(f"writers must be between 1 and {WRITERS_MAX}")
        if not 1 <= batch_size_max <= BATCH_SIZE_MAX:
            raise ValueError(f"batch_size_max must be between 1 and {BATCH_SIZE_MAX}")
        if queue_depth_max < batch_size_max:
            raise ValueError("queue_depth_max must hold at least one full batch")
        self.ledger = ledger
        self.batch_size_max = batch_size_max
        self.batch_wait_s = batch_wait_ms / 1000
        self.queue_depth_max = queue_depth_max
        self.expiry_interval_s = expiry_interval_s
        self._queue: deque[_Item] = deque()
        self._queued = 0  # commands waiting, across all items
        self._wakeup = asyncio.Event()
        self._closing = False
        self.writers = writers
        self._writer_tasks: list[asyncio.Task[None]] = []
        self._busy_writers = 0  # writers with a batch in flight
        self._next_expiry = 0.0
        self._stopped: BaseException | None = None  # why a writer stopped, if one did
        self._taken: dict[int, list[_Item]] = {}  # each busy writer's batch, until it is answered
        self.batches_committed = 0
        self.batch_sizes_max_seen = 0
        # Called with each committed batch's size (metrics); must be quick and must not raise.
        self.on_batch = on_batch

    async def __aenter__(self) -> Batcher:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        if not self._writer_tasks:
            loop = asyncio.get_running_loop()
            self._next_expiry = time.monotonic() + (self.expiry_interval_s or 0)
            self._writer_tasks = [
                loop.create_task(self._run(index), name=f"ledger-batcher-{index}") for index in range(self.writers)
            ]

    async def submit(self, command: TransferCommand) -> TransferResult:
        """Apply one command; returns once its batch is committed (or raises, committing nothing)."""
        return (await self.submit_many([command]))[0]

    async def submit_many(self, commands: Sequence[TransferCommand]) -> list[TransferResult]:
        """Apply commands together in one batch, in order. A linked chain must end inside them.
        More than ``batch_size_max`` commands (a settlement of many participants is one long chain)
        run whole in a batch of their own, up to the hard maximum ``ledger.submit.BATCH_SIZE_MAX``."""
        commands = list(commands)
        if not commands:
            return []
        if self._stopped is not None:
            raise LedgerUnavailable(f"the ledger's writer stopped: {self._stopped!r}")
        if self._closing:
            raise LedgerShuttingDown("the ledger is shutting down and takes no new transfers")
        if len(commands) > BATCH_SIZE_MAX:
            raise ValueError(f"at most {BATCH_SIZE_MAX} commands go in one batch, got {len(commands)}")
        check_commands(commands)  # here, so that a foreign object fails its caller, not a shared batch
        if commands[-1].linked is True:
            # A chain left open here would run on into another caller's commands.
            return [TransferResult(ResultCode.LINKED_EVENT_FAILED) for _ in commands[:-1]] + [
                TransferResult(ResultCode.LINKED_EVENT_CHAIN_OPEN)
            ]
        # A hand-in larger than the whole queue bound is still taken into an empty queue.
        if self._queued and self._queued + len(commands) > self.queue_depth_max:
            raise LedgerOverloaded(
                f"{self._queued} transfers are already waiting (at most {self.queue_depth_max}); retry shortly"
            )
        if not self._writer_tasks:
            raise RuntimeError("Batcher.start() was not called")
        future: asyncio.Future[list[TransferResult]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(commands, future))
        self._queued += len(commands)
        self._wakeup.set()
        return await future

    @property
    def alive(self) -> bool:
        """Started, not closing, and every writer task still running."""
        return bool(self._writer_tasks) and not self._closing and not any(t.done() for t in self._writer_tasks)

    async def close(self) -> None:
        """Refuse new work, finish every queued batch, then stop the writers. A writer that had
        already stopped on an error was reported then (and its callers failed); close still
        returns normally."""
        self._closing = True
        self._wakeup.set()
        if self._writer_tasks:
            await asyncio.gather(*self._writer_tasks, return_exceptions=True)

    async def _run(self, index: int) -> None:
        try:
            await self._serve(index)
        except BaseException as error:
            # A bug or a cancellation stopped this writer: nobody may wait on it forever, and no
            # new work may queue behind it. /readyz reads ``alive``.
            self._stopped = error
            self._closing = True
            log.error("batcher writer %d stopped: %r; failing %d queued transfers", index, error, self._queued)
            in_flight, queued, self._queue = self._taken.pop(index, []), list(self._queue), deque()
            self._queued = 0
            # The batch in flight may have reached its COMMIT: its callers must resubmit to learn.
            self._fail(
                in_flight,
                LedgerOutcomeUnknown(
                    f"the ledger's writer stopped during this batch ({error!r}); "
                    "resubmit the same ids to learn each outcome"
                ),
            )
            self._fail(queued, LedgerUnavailable(f"the ledger's writer stopped: {error!r}"))
            raise

    async def _serve(self, index: int) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._idle(runs_expiry=index == 0)
                continue
            if self._queued < self.batch_size_max and self.batch_wait_s > 0 and not self._closing:
                await self._linger()
            items = self._take_batch()
            if items:
                self._busy_writers += 1
                self._taken[index] = items
                try:
                    await self._commit(items, runs_expiry=index == 0)
                finally:
                    self._busy_writers -= 1
                del self._taken[index]  # answered; on an exception _run fails them instead

    async def _linger(self) -> None:
        """Let callers that are about to hand in work join this batch: yield to the event loop
        while each turn brings more work, for at most ``batch_wait_ms``. Under a steady load the
        callers answered by the last batch come back within a turn or two; waiting out the full
        bound every time would idle the writer for nothing."""
        deadline = time.monotonic() + self.batch_wait_s
        while self._queued < self.batch_size_max and time.monotonic() < deadline:
            before = self._queued
            await asyncio.sleep(0)
            if self._queued == before:
                return

    async def _idle(self, *, runs_expiry: bool) -> None:
        self._wakeup.clear()
        if self.expiry_interval_s is None or not runs_expiry:
            await self._wakeup.wait()
            return
        delay = self._next_expiry - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(self._wakeup.wait(), delay)
                return
            except TimeoutError:
                pass
        await self._expire()

    async def _expire(self) -> None:
        self._next_expiry = time.monotonic() + (self.expiry_interval_s or 0)
        try:
            expired = await self.ledger.expire_pending()
        except Exception:  # the database may be away; the writer must live to serve the queue
            log.exception("expiry pass failed; the next one retries")
            return
        if expired:
            log.info("expired %d pending transfers", expired)

    def _take_batch(self) -> list[_Item]:
        limit = self.batch_size_max
        free_writers = self.writers - 1 - self._busy_writers
        if free_writers > 0 and self._queued >= 2 * PIPELINE_SPLIT_MIN:
            # Leave a share for the free writer: two half batches in flight keep both Python and
            # the database busy, where one full batch would leave each idle half the time.
            limit = min(limit, -(-self._queued // (free_writers + 1)))
        items: list[_Item] = []
        size = 0
        queue = self._queue
        while queue:
            next_size = len(queue[0].commands)
            # The first item is always taken, so one longer than batch_size_max runs alone.
            if items and (size + next_size > limit or size + next_size > self.batch_size_max):
                break
            items.append(queue.popleft())
            size += next_size
        self._queued -= size
        if queue:
            self._wakeup.set()
        return items

    async def _commit(self, items: list[_Item], *, runs_expiry: bool) -> None:
        commands = [command for item in items for command in item.commands]
        try:
            results = await self.ledger.submit(commands)
        except LedgerError as error:
            self._fail(items, error)
            return
        except Exception as error:  # a bug: nobody may wait forever
            log.exception("batch of %d commands failed", len(commands))
            self._fail(
                items, LedgerUnavailable(f"the batch failed ({error!r}); resubmit the same ids to learn each outcome")
            )
            return
        self.batches_committed += 1
        self.batch_sizes_max_seen = max(self.batch_sizes_max_seen, len(commands))
        if self.on_batch is not None:
            try:
                self.on_batch(len(commands))
            except Exception:  # an observer's bug must not stop the writer or fail a committed batch
                log.exception("on_batch callback failed")
        start = 0
        for item in items:
            end = start + len(item.commands)
            if not item.future.done():  # the caller may have gone; the transfer is committed anyway
                item.future.set_result(results[start:end])
            start = end
        if runs_expiry and self.expiry_interval_s is not None and time.monotonic() >= self._next_expiry:
            await self._expire()

    @staticmethod
    def _fail(items: list[_Item], error: Exception) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)
