"""Two-phase expiry: void pending transfers whose timeout has passed, through the batch path."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db import read_transaction
from ledger.errors import ResultCode
from ledger.ids import uuid7
from ledger.model import TransferCommand, TransferKind, TransferResult
from ledger.schema import pending_timeouts
from ledger.submit import BATCH_SIZE_MAX

log = logging.getLogger(__name__)

# Expired pending transfers voided per expiry pass.
EXPIRY_BATCH_MAX = 1_000
# Expiry answers meaning the hold is resolved already, or was never a hold: its due row is dropped.
_NEVER_EXPIRES = frozenset(
    {
        ResultCode.PENDING_TRANSFER_NOT_FOUND,
        ResultCode.PENDING_TRANSFER_NOT_PENDING,
        ResultCode.PENDING_TRANSFER_ALREADY_POSTED,
        ResultCode.PENDING_TRANSFER_ALREADY_VOIDED,
        ResultCode.PENDING_TRANSFER_EXPIRED,
    }
)

Submit = Callable[[Sequence[TransferCommand]], Awaitable[list[TransferResult]]]


async def expire_pending(engine: AsyncEngine, now_us: int, submit: Submit, *, limit: int = EXPIRY_BATCH_MAX) -> int:
    """Void pending transfers whose timeout has passed by ``now_us``, each through ``submit``;
    their funds return to the source.

    Each expiry is an ``expire_pending`` transfer with a fresh id. (An id derived from the hold
    was tried: anyone could compute it and store a transfer under it first, and the hold would
    then never expire.) Two processes expiring the same hold store one expiry: the hold's
    accounts are locked and a hold is resolved at most once. A due row whose hold can never
    expire (already resolved, or no hold at all) is dropped, so that it cannot stand at the
    front of the sweep's earliest-first page forever. Returns how many expired.
    """
    async with read_transaction(engine) as conn:
        due = (
            (
                await conn.execute(
                    sa.select(pending_timeouts.c.transfer_id)
                    .where(pending_timeouts.c.expires_at_us <= now_us)
                    .order_by(pending_timeouts.c.expires_at_us)
                    .limit(min(limit, BATCH_SIZE_MAX))
                )
            )
            .scalars()
            .all()
        )
    if not due:
        return 0
    commands = [TransferCommand(uuid7(), TransferKind.EXPIRE_PENDING, pending_id=pending_id) for pending_id in due]
    results = await submit(commands)
    stuck = {pending_id: result.code for pending_id, result in zip(due, results) if result.code in _NEVER_EXPIRES}
    if stuck:
        log.warning(
            "dropping %d due holds that cannot expire: %s",
            len(stuck),
            ", ".join(f"{pending_id} ({code})" for pending_id, code in list(stuck.items())[:10]),
        )
        async with engine.begin() as conn:
            await conn.execute(pending_timeouts.delete().where(pending_timeouts.c.transfer_id.in_(list(stuck))))
    return sum(1 for result in results if result.ok)
