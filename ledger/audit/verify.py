"""Verifying the audit chain: recompute every block's hash and signature from the stored rows,
check the chain against anchors recorded outside the ledger, and recompute every account's
balances, settings and open holds from what the chain sealed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.audit.seal import (
    block_hash,
    event_from_row,
    event_order,
    refusal_from_row,
    refusal_order,
    transfer_from_row,
)
from ledger.db import read_transaction
from ledger.model import AccountEvent, AccountEventKind, AccountSettings, Refusal, Transfer, TransferKind
from ledger.rules import TIMEOUT_S_MAX
from ledger.schema import (
    ACCOUNT_SETTING_COLUMNS,
    GENESIS_HASH,
    account_events,
    accounts,
    journal_blocks,
    journal_head,
    pending_timeouts,
    transfer_refusals,
    transfers,
)

# Blocks read per query while verifying, so a long chain is checked in bounded memory per page.
VERIFY_PAGE_BLOCKS_MAX = 500


@dataclass(frozen=True, slots=True)
class Anchor:
    """A block's sequence and hash, recorded somewhere the database's owner cannot rewrite (an
    operator's log, another system, paper). The signatures prove who sealed each block; only an
    anchor proves that blocks were not removed from the end, or the database restored from an
    older copy. ``ledger audit head`` prints one; ``ledger audit verify --anchor`` checks it."""

    sequence: int
    hash: bytes

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """``SEQUENCE:HASH`` as ``str(anchor)`` writes it (the hash in 64 hex digits)."""
        sequence, separator, digest = text.strip().partition(":")
        try:
            anchor = cls(int(sequence), bytes.fromhex(digest))
        except ValueError:
            anchor = None
        if not separator or anchor is None or anchor.sequence < 1 or len(anchor.hash) != 32:
            raise ValueError(f"an anchor is SEQUENCE:HASH with a 64-hex-digit hash, got {text!r}")
        return anchor

    def __str__(self) -> str:
        return f"{self.sequence}:{self.hash.hex()}"


@dataclass(slots=True)
class AuditReport:
    """What ``verify_audit`` found. ``ok`` only if the chain, every signature and every balance agree."""

    blocks_checked: int = 0
    transfers_checked: int = 0
    refusals_checked: int = 0
    events_checked: int = 0
    accounts_checked: int = 0
    first_bad_block: int | None = None
    first_bad_account: UUID | None = None
    last_hash: bytes = GENESIS_HASH
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_BALANCE_COLUMNS = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")


async def verify_audit(engine: AsyncEngine, verify_key: VerifyKey, anchors: Sequence[Anchor] = ()) -> AuditReport:
    """Recompute the chain, its signatures and every account's balances from the transfers, and
    check that the chain holds every anchor (a block recorded outside the database) unchanged.

    Reads in one snapshot (a repeatable-read transaction on PostgreSQL, one read transaction on
    SQLite) so that batches committed meanwhile cannot make sound books look broken.
    """
    report = AuditReport()
    totals: dict[UUID, list[int]] = {}
    replay = _Replay()
    async with read_transaction(engine, snapshot=True) as conn:
        head = (await conn.execute(sa.select(journal_head))).one()
        recorded: dict[int, set[bytes]] = {}  # every anchor counts, even two for one block
        for anchor in anchors:
            recorded.setdefault(anchor.sequence, set()).add(anchor.hash)
        await _verify_blocks(conn, verify_key, report, totals, recorded, replay)
        beyond = [anchor.sequence for anchor in anchors if anchor.sequence > report.blocks_checked]
        if beyond and report.first_bad_block is None:
            report.problems.append(
                f"the chain ends at block {report.blocks_checked}, but block {max(beyond)} was recorded "
                "outside the ledger: blocks were removed, or the database was restored from an older copy"
            )
        if report.ok and (
            report.blocks_checked != head.sequence or (report.blocks_checked and head.hash != report.last_hash)
        ):
            report.problems.append(
                f"journal head says block {head.sequence}, the chain ends at block {report.blocks_checked}"
            )
        if report.ok and head.last_transfer_seq != report.transfers_checked:
            report.problems.append(
                f"journal head says the last transfer is {head.last_transfer_seq}, "
                f"the chain's is {report.transfers_checked}"
            )
        if report.ok:
            # The blocks hold transfers 1..N, each range complete: any other row lies outside
            # every block (seq beyond N, or zero and below) and was never sealed.
            stored = (await conn.execute(sa.select(sa.func.count()).select_from(transfers))).scalar_one()
            if stored != report.transfers_checked:
                report.problems.append(f"{stored - report.transfers_checked} transfers lie outside every sealed block")
        if report.ok:
            await _verify_sealed_rows(conn, report, replay)
        if report.ok:
            await _verify_timeouts(conn, report, replay)
        if engine.dialect.name == "sqlite":
            await _verify_sqlite_id_text(conn, report)
        await _verify_balances(conn, report, totals, replay)
    return report


async def newest_anchor(engine: AsyncEngine) -> Anchor | None:
    """The newest block as an :class:`Anchor` (None before the first block)."""
    async with read_transaction(engine) as conn:
        head = (await conn.execute(sa.select(journal_head.c.sequence, journal_head.c.hash))).one()
    return Anchor(head.sequence, bytes(head.hash)) if head.sequence else None


@dataclass(slots=True)
class _Replay:
    """What walking the chain learns besides balances: each account's currency, and the holds
    with a timeout that are still open (the expiry sweep's due list must hold exactly these)."""

    currency_of: dict[UUID, str] = field(default_factory=dict)
    open_timeouts: dict[UUID, int] = field(default_factory=dict)
    newest_event: dict[UUID, AccountEvent] = field(default_factory=dict)
    event_problems: list[str] = field(default_factory=list)

    def add_events(self, events: list[AccountEvent]) -> None:
        """Each account's events must count 1, 2, 3… in chain order, and open with ``opened``."""
        for event in events:
            previous = self.newest_event.get(event.account_id)
            expected = 1 if previous is None else previous.version + 1
            if event.version != expected or (event.version == 1) != (event.event is AccountEventKind.OPENED):
                self.event_problems.append(
                    f"account {event.account_id}: event {event.version} ({event.event}) where {expected} was due"
                )
            self.newest_event[event.account_id] = event

    def add(self, transfer: Transfer) -> str | None:
        """Record the transfer; a problem if its accounts were seen in another currency."""
        for account_id in (transfer.debit_account_id, transfer.credit_account_id):
            seen = self.currency_of.setdefault(account_id, transfer.currency)
            if seen != transfer.currency:
                return f"transfer {transfer.id} moves {transfer.currency} on account {account_id}, which holds {seen}"
        if transfer.kind is TransferKind.PENDING and transfer.expires_at_us is not None:
            self.open_timeouts[transfer.id] = transfer.expires_at_us
        elif transfer.pending_id is not None:
            self.open_timeouts.pop(transfer.pending_id, None)
        return None


def _transfer_problem(transfer: Transfer) -> str | None:
    """Fields the ledger never writes. Checked apart from the hash because the canonical bytes
    spell an absent timeout as -1 and keep three bytes of the currency: only in the ledger's own
    domain are they one-to-one."""
    currency = transfer.currency
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()):
        return f"transfer {transfer.id} has currency {currency!r}"
    if transfer.amount_minor < 0 or transfer.released_minor < 0:
        return f"transfer {transfer.id} has a negative amount"
    times_out = transfer.kind is TransferKind.PENDING and transfer.timeout_s is not None
    if transfer.timeout_s is not None and not (times_out and 0 < transfer.timeout_s <= TIMEOUT_S_MAX):
        return f"transfer {transfer.id} has timeout_s {transfer.timeout_s}"
    timeout_s = transfer.timeout_s if times_out else None
    expected_expiry = None if timeout_s is None else transfer.created_at_us + timeout_s * 1_000_000
    if transfer.expires_at_us != expected_expiry:
        return f"transfer {transfer.id} expires at {transfer.expires_at_us}, its timeout says {expected_expiry}"
    return None


async def _verify_blocks(
    conn: AsyncConnection,
    verify_key: VerifyKey,
    report: AuditReport,
    totals: dict[UUID, list[int]],
    anchors: dict[int, set[bytes]],
    replay: _Replay,
) -> None:
    prev_hash = GENESIS_HASH
    expected_seq = 1
    last_sequence = 0
    while True:
        blocks = (
            await conn.execute(
                sa.select(journal_blocks)
                .where(journal_blocks.c.sequence > last_sequence)
                .order_by(journal_blocks.c.sequence)
                .limit(VERIFY_PAGE_BLOCKS_MAX)
            )
        ).all()
        if not blocks:
            return
        first = blocks[0].first_transfer_seq
        last = blocks[-1].first_transfer_seq + blocks[-1].transfer_count - 1
        rows = (
            await conn.execute(
                sa.select(transfers).where(transfers.c.seq.between(first, last)).order_by(transfers.c.seq)
            )
        ).all()
        stored = [transfer_from_row(row) for row in rows]
        by_seq = {transfer.seq: transfer for transfer in stored}
        sealed = await _SealedRows.load(conn, blocks[0].sequence, blocks[-1].sequence)
        for block in blocks:
            last_sequence = block.sequence
            batch = [
                by_seq[seq]
                for seq in range(block.first_transfer_seq, block.first_transfer_seq + block.transfer_count)
                if seq in by_seq
            ]
            refusals, events = sealed.of(block.sequence)
            problem = _block_problem(
                block, batch, refusals, events, prev_hash, expected_seq, report.blocks_checked + 1, verify_key
            )
            if problem is None and anchors.get(block.sequence, {block.hash}) != {block.hash}:
                problem = (
                    f"block {block.sequence}: its hash is not the one recorded outside the ledger "
                    "(the history up to it was rewritten and sealed again)"
                )
            for transfer in batch if problem is None else ():
                found = _transfer_problem(transfer) or replay.add(transfer)
                if found is not None:
                    problem = f"block {block.sequence}: {found}"
                    break
            if problem is not None:
                report.first_bad_block = block.sequence
                report.problems.append(problem)
                return
            for transfer in batch:
                _add_effect(totals, transfer)
            replay.add_events(events)
            report.blocks_checked += 1
            report.transfers_checked += len(batch)
            report.refusals_checked += len(refusals)
            report.events_checked += len(events)
            prev_hash = block.hash
            expected_seq += block.transfer_count
            report.last_hash = block.hash


@dataclass(slots=True)
class _SealedRows:
    """The refusals and account events of a page of blocks, by block, in sealing order."""

    refusals: dict[int, list[Refusal]]
    events: dict[int, list[AccountEvent]]

    @classmethod
    async def load(cls, conn: AsyncConnection, first_block: int, last_block: int) -> _SealedRows:
        refusals: dict[int, list[Refusal]] = {}
        events: dict[int, list[AccountEvent]] = {}
        for row in await conn.execute(
            sa.select(transfer_refusals).where(transfer_refusals.c.block_sequence.between(first_block, last_block))
        ):
            refusals.setdefault(row.block_sequence, []).append(refusal_from_row(row))
        for row in await conn.execute(
            sa.select(account_events).where(account_events.c.block_sequence.between(first_block, last_block))
        ):
            events.setdefault(row.block_sequence, []).append(event_from_row(row))
        for refusal_group in refusals.values():
            refusal_group.sort(key=refusal_order)
        for event_group in events.values():
            event_group.sort(key=event_order)
        return cls(refusals, events)

    def of(self, block_sequence: int) -> tuple[list[Refusal], list[AccountEvent]]:
        return self.refusals.get(block_sequence, []), self.events.get(block_sequence, [])


def _block_problem(
    block: sa.Row[Any],
    batch: list[Transfer],
    refusals: list[Refusal],
    events: list[AccountEvent],
    prev_hash: bytes,
    expected_seq: int,
    expected_sequence: int,
    verify_key: VerifyKey,
) -> str | None:
    if block.sequence != expected_sequence:
        return f"block {block.sequence}: expected block {expected_sequence} (a block is missing)"
    if block.prev_hash != prev_hash:
        return f"block {block.sequence}: does not chain onto the previous block's hash"
    if block.first_transfer_seq != expected_seq or len(batch) != block.transfer_count:
        return (
            f"block {block.sequence}: holds transfers {block.first_transfer_seq}.."
            f"{block.first_transfer_seq + block.transfer_count - 1}, found {len(batch)} of them "
            f"(expected to start at {expected_seq})"
        )
    if len(refusals) != block.refusal_count or len(events) != block.event_count:
        return (
            f"block {block.sequence}: seals {block.refusal_count} refusals and {block.event_count} account events, "
            f"found {len(refusals)} and {len(events)}"
        )
    digest = block_hash(
        prev_hash, block.sequence, block.first_transfer_seq, block.created_at_us, batch, refusals, events
    )
    if digest != block.hash:
        return (
            f"block {block.sequence}: its transfers, refusals and account events do not hash to the sealed hash "
            "(a stored row was changed)"
        )
    try:
        verify_key.verify(block.hash, block.signature)
    except BadSignatureError:
        return f"block {block.sequence}: the signature does not verify with the ledger's public key"
    return None


async def _verify_sealed_rows(conn: AsyncConnection, report: AuditReport, replay: _Replay) -> None:
    """Every refusal and account event lies in a sealed block; no id is both a transfer and a
    refusal; each account's events count up from its opening."""
    for table, checked, name in (
        (transfer_refusals, report.refusals_checked, "refusals"),
        (account_events, report.events_checked, "account events"),
    ):
        stored = (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
        if stored != checked:
            report.problems.append(f"{stored - checked} {name} lie outside every sealed block")
    both = (
        await conn.execute(
            sa.select(sa.func.count()).select_from(
                transfer_refusals.join(transfers, transfers.c.id == transfer_refusals.c.id)
            )
        )
    ).scalar_one()
    if both:
        report.problems.append(f"{both} ids are stored both as a transfer and as a refusal")
    report.problems.extend(replay.event_problems[:10])


async def _verify_timeouts(conn: AsyncConnection, report: AuditReport, replay: _Replay) -> None:
    """The expiry sweep's due list must be exactly the open holds with a timeout: a missing row
    means a hold that never expires, an extra one a sweep over something that is no open hold."""
    rows = {row.transfer_id: row.expires_at_us for row in await conn.execute(sa.select(pending_timeouts))}
    missing = [hold for hold in replay.open_timeouts if hold not in rows]
    wrong = [hold for hold, due in rows.items() if replay.open_timeouts.get(hold) != due]
    if missing:
        report.problems.append(
            f"{len(missing)} open holds with a timeout are missing from pending_timeouts "
            f"(they would never expire), e.g. {missing[0]}"
        )
    if wrong:
        report.problems.append(f"{len(wrong)} pending_timeouts rows match no open hold and its expiry, e.g. {wrong[0]}")


async def _verify_sqlite_id_text(conn: AsyncConnection, report: AuditReport) -> None:
    """SQLite keeps ids as text; the ledger writes 32 lower-case hex digits. Another spelling
    parses to the same UUID (so the hash holds) but escapes lookups and the unique index."""
    checks = [
        ("transfers", "id"),
        ("transfers", "debit_account_id"),
        ("transfers", "credit_account_id"),
        ("transfers", "pending_id"),
        ("accounts", "id"),
        ("pending_timeouts", "transfer_id"),
    ]
    for table, column in checks:
        bad = (
            await conn.exec_driver_sql(
                f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL AND "
                f"(length({column}) <> 32 OR {column} <> lower({column}) OR {column} GLOB '*[^0-9a-f]*')"
            )
        ).scalar_one()
        if bad:
            report.problems.append(f"{bad} {table}.{column} values are not ids as the ledger writes them")


def _add_effect(totals: dict[UUID, list[int]], transfer: Transfer) -> None:
    posted, pending = transfer.posted_delta, transfer.pending_delta
    debit = totals.setdefault(transfer.debit_account_id, [0, 0, 0, 0])
    credit = totals.setdefault(transfer.credit_account_id, [0, 0, 0, 0])
    debit[0] += posted
    debit[2] += pending
    credit[1] += posted
    credit[3] += pending


async def _verify_balances(
    conn: AsyncConnection, report: AuditReport, totals: dict[UUID, list[int]], replay: _Replay
) -> None:
    columns = [accounts.c.id] + [accounts.c[name] for name in (*ACCOUNT_SETTING_COLUMNS, *_BALANCE_COLUMNS)]
    result = await conn.stream(sa.select(*columns).order_by(accounts.c.id))
    seen: set[UUID] = set()
    async for row in result:
        seen.add(row.id)
        report.accounts_checked += 1
        settings_problem = _settings_problem(row, replay.newest_event.get(row.id))
        if settings_problem is not None and report.first_bad_account is None:
            report.first_bad_account = row.id
            report.problems.append(settings_problem)
        moved = replay.currency_of.get(row.id)
        if moved is not None and moved != row.currency and report.first_bad_account is None:
            report.first_bad_account = row.id
            report.problems.append(f"account {row.id}: holds {row.currency} but its transfers moved {moved}")
        expected = totals.get(row.id, [0, 0, 0, 0])
        stored = [row.debits_posted, row.credits_posted, row.debits_pending, row.credits_pending]
        if stored != expected and report.first_bad_account is None and report.first_bad_block is None:
            report.first_bad_account = row.id
            differing = ", ".join(
                f"{name} stored {have} but transfers give {want}"
                for name, have, want in zip(_BALANCE_COLUMNS, stored, expected)
                if have != want
            )
            report.problems.append(f"account {row.id}: {differing}")
    orphans = set(replay.newest_event) - seen
    if orphans:
        report.problems.append(f"{len(orphans)} accounts have sealed events but no row, e.g. {min(orphans)}")
    unknown = set(totals) - seen
    if unknown:
        report.problems.append(f"{len(unknown)} transfers name accounts that do not exist, e.g. {min(unknown)}")


def _settings_problem(row: sa.Row[Any], newest: AccountEvent | None) -> str | None:
    """An account row's settings must be those its newest sealed event says."""
    if newest is None:
        return f"account {row.id}: no sealed event opened it"
    stored = AccountSettings.from_row(row).as_row()
    sealed = newest.settings.as_row()
    differing = [
        f"{name} is {stored[name]!r}, sealed {sealed[name]!r}" for name in stored if stored[name] != sealed[name]
    ]
    if differing:
        return f"account {row.id}: " + "; ".join(differing) + f" (event {newest.version}): changed behind the ledger"
    return None
