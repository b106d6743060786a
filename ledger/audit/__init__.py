"""The audit chain: every committed batch is a journal block, hashed onto the previous one and
signed with the ledger's Ed25519 key (``seal``), and a verifier that recomputes it all from the
stored rows (``verify``). The names below are the package's public ones."""

from ledger.audit.seal import (
    BLOCK_DOMAIN,
    JournalBlock,
    block_from_row,
    block_hash,
    canonical_event_bytes,
    canonical_fields,
    canonical_refusal_bytes,
    canonical_transfer_bytes,
    event_from_row,
    event_order,
    refusal_from_row,
    refusal_order,
    seal_block,
    transfer_from_record,
    transfer_from_row,
)
from ledger.audit.verify import VERIFY_PAGE_BLOCKS_MAX, Anchor, AuditReport, newest_anchor, verify_audit

__all__ = [
    "BLOCK_DOMAIN",
    "VERIFY_PAGE_BLOCKS_MAX",
    "Anchor",
    "AuditReport",
    "JournalBlock",
    "block_from_row",
    "block_hash",
    "canonical_event_bytes",
    "canonical_fields",
    "canonical_refusal_bytes",
    "canonical_transfer_bytes",
    "event_from_row",
    "event_order",
    "newest_anchor",
    "refusal_from_row",
    "refusal_order",
    "seal_block",
    "transfer_from_record",
    "transfer_from_row",
    "verify_audit",
]
