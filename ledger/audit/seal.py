"""Sealing the audit chain: every committed batch is a journal block, hashed onto the previous one
and signed with the ledger's Ed25519 key; and the mappers from stored rows back to what was sealed.

``block hash = SHA-256(previous hash || "SZHK-LEDGER-BLOCK-v1" || header || canonical transfers)``
where the header is the block's sequence, first transfer seq, transfer count and time, and each
transfer's canonical bytes are a fixed big-endian layout of every stored field (see
:func:`canonical_transfer_bytes`). A block that also seals refusals or account events appends
``"REFUSALS" || count || canonical refusals || "EVENTS" || count || canonical events`` (refusals
in id order, events in account id and version order); a block with neither hashes exactly as
before, so chains sealed before refusals and events existed still verify. The signature covers the
block hash.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from nacl.signing import SigningKey

from ledger.errors import ResultCode
from ledger.model import AccountEvent, AccountEventKind, AccountSettings, Refusal, Transfer, TransferKind
from ledger.schema import ACCOUNT_SETTING_COLUMNS, TRANSFER_COLUMNS

BLOCK_DOMAIN = b"SZHK-LEDGER-BLOCK-v1"
_HEADER = struct.Struct(">QQIq")
_TRANSFER = struct.Struct(">Q16sB16s16sqq3sB16sqqBq")
_NO_ID = bytes(16)


def canonical_transfer_bytes(transfer: Transfer) -> bytes:
    """Every stored field of a transfer, in a fixed layout that changes if any field changes."""
    user_data = b"" if transfer.user_data is None else transfer.user_data.encode()
    return (
        _TRANSFER.pack(
            transfer.seq,
            transfer.id.bytes,
            int(transfer.kind),
            transfer.debit_account_id.bytes,
            transfer.credit_account_id.bytes,
            transfer.amount_minor,
            transfer.released_minor,
            transfer.currency.encode("ascii"),
            transfer.pending_id is not None,
            _NO_ID if transfer.pending_id is None else transfer.pending_id.bytes,
            -1 if transfer.timeout_s is None else transfer.timeout_s,
            -1 if transfer.expires_at_us is None else transfer.expires_at_us,
            transfer.linked,
            transfer.created_at_us,
        )
        + struct.pack(">BH", transfer.user_data is not None, len(user_data))
        + user_data
    )


def canonical_fields(values: Sequence[object]) -> bytes:
    """Values in a fixed order, each tagged with its type, so that no two different sequences
    give the same bytes: None, int (8 bytes, signed), UUID (16), str (length-prefixed UTF-8)."""
    parts: list[bytes] = []
    for value in values:
        if value is None:
            parts.append(b"\x00")
        elif isinstance(value, UUID):
            parts.append(b"\x02" + value.bytes)
        elif isinstance(value, str):
            encoded = value.encode()
            parts.append(b"\x03" + struct.pack(">I", len(encoded)) + encoded)
        elif isinstance(value, int):  # bools and IntEnums too: their integer value
            parts.append(b"\x01" + struct.pack(">q", int(value)))
        else:
            raise TypeError(f"cannot seal a {type(value).__name__}")
    return b"".join(parts)


def canonical_refusal_bytes(refusal: Refusal) -> bytes:
    r = refusal
    return canonical_fields((
        r.id, r.code.value, int(r.kind), r.debit_account_id, r.credit_account_id, r.amount_minor, r.currency,
        r.pending_id, r.timeout_s, int(r.linked), r.user_data, r.created_at_us,
    ))  # fmt: skip


def canonical_event_bytes(event: AccountEvent) -> bytes:
    settings = event.settings.as_row()
    return canonical_fields((
        event.account_id, event.version, event.event.value, event.actor, event.at_us,
        *(settings[name] for name in ACCOUNT_SETTING_COLUMNS),
    ))  # fmt: skip


def refusal_order(refusal: Refusal) -> bytes:
    return refusal.id.bytes


def event_order(event: AccountEvent) -> tuple[bytes, int]:
    return event.account_id.bytes, event.version


def block_hash(
    prev_hash: bytes,
    sequence: int,
    first_transfer_seq: int,
    created_at_us: int,
    batch: list[Transfer],
    refusals: Sequence[Refusal] = (),
    events: Sequence[AccountEvent] = (),
) -> bytes:
    """The block's hash; ``refusals`` and ``events`` in their sealing order (see the module doc)."""
    digest = hashlib.sha256(prev_hash)
    digest.update(BLOCK_DOMAIN)
    digest.update(_HEADER.pack(sequence, first_transfer_seq, len(batch), created_at_us))
    digest.update(b"".join(map(canonical_transfer_bytes, batch)))
    if refusals or events:
        digest.update(b"REFUSALS" + struct.pack(">I", len(refusals)))
        digest.update(b"".join(map(canonical_refusal_bytes, refusals)))
        digest.update(b"EVENTS" + struct.pack(">I", len(events)))
        digest.update(b"".join(map(canonical_event_bytes, events)))
    return digest.digest()


@dataclass(frozen=True, slots=True)
class JournalBlock:
    sequence: int
    prev_hash: bytes
    hash: bytes
    signature: bytes
    first_transfer_seq: int
    transfer_count: int
    created_at_us: int
    refusal_count: int = 0
    event_count: int = 0


def seal_block(
    signing_key: SigningKey,
    prev_hash: bytes,
    sequence: int,
    first_transfer_seq: int,
    created_at_us: int,
    batch: list[Transfer],
    refusals: list[Refusal] | None = None,
    events: list[AccountEvent] | None = None,
) -> JournalBlock:
    """Hash and sign a block. ``refusals`` and ``events`` are sorted into their sealing order in
    place, and each is stamped with the block's sequence."""
    refusals = [] if refusals is None else refusals
    events = [] if events is None else events
    refusals.sort(key=refusal_order)
    events.sort(key=event_order)
    for refusal in refusals:
        refusal.block_sequence = sequence
    digest = block_hash(prev_hash, sequence, first_transfer_seq, created_at_us, batch, refusals, events)
    signature = signing_key.sign(digest).signature
    return JournalBlock(
        sequence,
        prev_hash,
        digest,
        signature,
        first_transfer_seq,
        len(batch),
        created_at_us,
        len(refusals),
        len(events),
    )


def block_from_row(row: sa.Row[Any]) -> JournalBlock:
    return JournalBlock(
        row.sequence, bytes(row.prev_hash), bytes(row.hash), bytes(row.signature), row.first_transfer_seq,
        row.transfer_count, row.created_at_us, row.refusal_count, row.event_count,
    )  # fmt: skip


def refusal_from_row(row: sa.Row[Any]) -> Refusal:
    return Refusal(
        row.id, ResultCode(row.code), TransferKind(row.kind), row.debit_account_id, row.credit_account_id,
        row.amount_minor, row.currency, row.pending_id, row.timeout_s, bool(row.linked), row.user_data,
        row.created_at_us, row.block_sequence,
    )  # fmt: skip


def event_from_row(row: sa.Row[Any]) -> AccountEvent:
    return AccountEvent(
        row.account_id, row.version, AccountEventKind(row.event), row.actor, row.at_us,
        AccountSettings.from_row(row), row.block_sequence,
    )  # fmt: skip


def transfer_from_record(record: Sequence[Any]) -> Transfer:
    """A transfer from its stored columns in ``TRANSFER_COLUMNS`` order: the one mapping of a
    transfer row, for the batch path's driver records (asyncpg records, SQLite tuples made alike)
    and for SQLAlchemy rows alike. Positional unpacking keeps the hot path free of per-field
    lookups."""
    (seq, id_, kind, debit_account_id, credit_account_id, amount_minor, released_minor, currency, pending_id,
     timeout_s, expires_at_us, linked, user_data, created_at_us) = record  # fmt: skip
    return Transfer(
        id_, TransferKind(kind), debit_account_id, credit_account_id, amount_minor, released_minor, currency,
        pending_id, timeout_s, expires_at_us, linked, user_data, created_at_us, seq,
    )  # fmt: skip


def transfer_from_row(row: sa.Row[Any]) -> Transfer:
    """A transfer from a SQLAlchemy row of ``sa.select(transfers)``, whose columns are the table's,
    in ``TRANSFER_COLUMNS`` order. Checked, so that a narrower or reordered select fails loudly
    instead of mapping the wrong column onto a field."""
    if row._fields != TRANSFER_COLUMNS:
        raise ValueError(f"a transfer row needs the columns {TRANSFER_COLUMNS}, got {row._fields}")
    return transfer_from_record(row)
