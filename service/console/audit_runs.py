""" "Verify now" from the console, run in the background.

``Ledger.verify_audit`` reads the whole chain and every account (in pages of
``VERIFY_PAGE_BLOCKS_MAX`` blocks, so in bounded memory, but in time that grows with the ledger):
on a ledger of a million transfers it takes longer than a browser should wait. So the POST records
a run and starts it as a task of the worker that took it, and answers at once; the run writes its
result to ``console_audit_runs`` when it ends, where the audit page of any worker finds it (the page
refreshes itself while a run is going). One run at a time: a start while another is going (and
younger than ``RUN_STALE_S``, past which its worker is taken to have died) is refused. Two workers
starting at the same instant could both run; a verification only reads, so that costs time, not
correctness. Server shutdown cancels a run and records it as interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from ledger import Ledger
from ledger.db import read_transaction
from service.console.tables import console_audit_runs

log = logging.getLogger(__name__)

RUNS_SHOWN_MAX = 10
RUN_STALE_S = 3600
PROBLEMS_SHOWN_MAX = 5
_US = 1_000_000


@dataclass(frozen=True, slots=True)
class AuditRun:
    id: int
    actor: str
    started_at_us: int
    finished_at_us: int | None
    ok: bool | None
    summary: str | None

    @property
    def running(self) -> bool:
        return self.finished_at_us is None


class AuditRuns:
    def __init__(self, ledger: Ledger, clock: Callable[[], int]) -> None:
        self.ledger = ledger
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, actor: str) -> int | None:
        """Record a run and start it in the background; None if one is going already."""
        now_us = self.clock()
        async with self.ledger.engine.begin() as conn:
            going = (
                await conn.execute(
                    sa.select(console_audit_runs.c.id)
                    .where(console_audit_runs.c.finished_at_us.is_(None))
                    .where(console_audit_runs.c.started_at_us > now_us - RUN_STALE_S * _US)
                    .limit(1)
                )
            ).first()
            if going is not None:
                return None
            inserted = await conn.execute(console_audit_runs.insert().values(actor=actor, started_at_us=now_us))
            run_id = int(inserted.inserted_primary_key[0])
        task = asyncio.get_running_loop().create_task(self._run(run_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run_id

    async def _run(self, run_id: int) -> None:
        started = time.perf_counter()
        try:
            report = await self.ledger.verify_audit()
        except asyncio.CancelledError:
            await asyncio.shield(self._finish(run_id, False, "interrupted: the server stopped before the run ended"))
            raise
        except Exception as error:  # recorded for the operator; the page shows it
            log.exception("console audit run %s failed", run_id)
            await self._finish(run_id, False, f"could not run: {type(error).__name__}: {error}")
            return
        elapsed = time.perf_counter() - started
        summary = (
            f"{report.blocks_checked} blocks, {report.transfers_checked} transfers, "
            f"{report.accounts_checked} accounts checked in {elapsed:.2f} s"
        )
        if not report.ok:
            details = []
            if report.first_bad_block is not None:
                details.append(f"first bad block: {report.first_bad_block}")
            if report.first_bad_account is not None:
                details.append(f"first bad account: {report.first_bad_account}")
            details.extend(report.problems[:PROBLEMS_SHOWN_MAX])
            summary = "; ".join([summary, *details])
        await self._finish(run_id, report.ok, summary)

    async def _finish(self, run_id: int, ok: bool, summary: str) -> None:
        async with self.ledger.engine.begin() as conn:
            await conn.execute(
                console_audit_runs.update()
                .where(console_audit_runs.c.id == run_id)
                .values(finished_at_us=self.clock(), ok=ok, summary=summary)
            )

    async def latest(self, limit: int = RUNS_SHOWN_MAX) -> list[AuditRun]:
        async with read_transaction(self.ledger.engine) as conn:
            rows = await conn.execute(
                sa.select(console_audit_runs).order_by(console_audit_runs.c.id.desc()).limit(limit)
            )
            return [
                AuditRun(row.id, row.actor, row.started_at_us, row.finished_at_us, row.ok, row.summary) for row in rows
            ]

    async def wait(self) -> None:
        """Until the runs this process started have ended (tests)."""
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
