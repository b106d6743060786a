"""Remembered refusals of payments and refunds: the same id and body get the first answer.

A payment's or refund's success is read back from its ledger legs. A refusal is recorded here, under
the institution, the operation and the request id, with a digest of the request: a retry of the
same request is answered the same refusal (replayed), another request under that id is a conflict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ledger import Ledger
from ledger.db import read_transaction
from settlement.tables import settlement_refusals

CONFLICT = "exists_with_different_fields"


class Outcome(Protocol):
    @property
    def code(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def replayed(self) -> bool: ...


OutcomeT = TypeVar("OutcomeT", bound=Outcome)


@dataclass(frozen=True, slots=True)
class Remembered:
    code: str
    same_request: bool


def request_digest(*fields: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, fields)).encode()).hexdigest()


class RefusalMemory:
    def __init__(self, ledger: Ledger, operation: str, clock: Callable[[], int]) -> None:
        self.ledger = ledger
        self.operation = operation
        self.clock = clock

    async def recall(self, institution_id: str, request_id: UUID, digest: str) -> Remembered | None:
        async with read_transaction(self.ledger.engine) as conn:
            row = (
                await conn.execute(
                    sa.select(settlement_refusals.c.code, settlement_refusals.c.request_digest)
                    .where(settlement_refusals.c.institution_id == institution_id)
                    .where(settlement_refusals.c.operation == self.operation)
                    .where(settlement_refusals.c.request_id == request_id)
                )
            ).first()
        return None if row is None else Remembered(row.code, row.request_digest == digest)

    async def once(
        self,
        institution_id: str,
        request_id: UUID,
        digest: str,
        attempt: Callable[[], Awaitable[OutcomeT]],
        replay: Callable[[str], OutcomeT],
    ) -> OutcomeT:
        """The refusal this request id was first answered (``replay(code)``; another request under
        the id: ``replay("exists_with_different_fields")``), or ``attempt()``'s outcome, whose
        refusal is remembered for next time."""
        remembered = await self.recall(institution_id, request_id, digest)
        if remembered is not None:
            return replay(remembered.code if remembered.same_request else CONFLICT)
        outcome = await attempt()
        if not outcome.ok and not outcome.replayed and outcome.code != CONFLICT:
            await self.remember(institution_id, request_id, digest, outcome.code)
        return outcome

    async def remember(self, institution_id: str, request_id: UUID, digest: str, code: str) -> None:
        """Record the refusal; a concurrent retry of the same request may have recorded it first."""
        try:
            async with self.ledger.engine.begin() as conn:
                await conn.execute(
                    settlement_refusals.insert().values(
                        institution_id=institution_id, operation=self.operation, request_id=request_id,
                        request_digest=digest, code=code, at_us=self.clock(),
                    )
                )  # fmt: skip
        except IntegrityError:
            pass


__all__ = ["RefusalMemory", "Remembered", "request_digest"]
