"""Transfer ids scoped to the institution that chose them, and what a transfer's ``user_data``
says about who made it.

``scoped_id(institution, id)`` is the ledger's id for an institution's transfer id: two
institutions using the same id get two ledger ids (no collision, and nothing one does can reveal
the other's transfer), while the same institution's retry of an id maps to the same ledger id, so
the ledger's idempotency (replays, remembered refusals) holds over HTTP. It keeps the client's
first 48 bits (a UUIDv7's millisecond timestamp) so ledger ids stay roughly time-ordered in the
indexes, and fills the rest from SHA-256 (a UUIDv8).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

USER_DATA_METADATA_LENGTH_MAX = 512  # characters of metadata JSON; the ledger's user_data holds 1,024


def scoped_id(institution_id: str, client_id: UUID, purpose: str = "") -> UUID:
    digest = hashlib.sha256(f"{institution_id}\x00{purpose}\x00".encode() + client_id.bytes).digest()
    raw = bytearray(client_id.bytes[:6] + digest[:10])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return UUID(bytes=bytes(raw))


@dataclass(frozen=True, slots=True)
class Origin:
    """Who made a transfer and under which of their ids: kept in the transfer's user_data."""

    institution_id: str
    client_id: UUID
    operation: str  # transfer, deposit, withdrawal, post, void
    metadata: dict[str, Any] | None = None

    def encode(self) -> str:
        """Canonical JSON (sorted keys, no spaces): a retry must produce the very same text."""
        body: dict[str, Any] = {"by": self.institution_id, "id": str(self.client_id), "op": self.operation}
        if self.metadata is not None:
            body["meta"] = self.metadata
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def decode(cls, user_data: str | None) -> Origin | None:
        if not user_data:
            return None
        try:
            body = json.loads(user_data)
            return cls(body["by"], UUID(body["id"]), body["op"], body.get("meta"))
        except (ValueError, KeyError, TypeError):
            return None


def metadata_problem(metadata: dict[str, Any] | None) -> str | None:
    if metadata is None:
        return None
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if len(text) > USER_DATA_METADATA_LENGTH_MAX:
        return f"metadata is at most {USER_DATA_METADATA_LENGTH_MAX} characters of JSON"
    if "\x00" in text:
        return "metadata may not contain NUL"
    return None
