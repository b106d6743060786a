"""Settlement's own rows: windows, their status history, the position accounts of each window, and
the batches closing a window produces. Money and obligations are ledger state (transfers between
position accounts); these rows only name and order them."""

from __future__ import annotations

import sqlalchemy as sa

from ledger.schema import metadata
from wallets.schema import INSTITUTION_ID_LENGTH_MAX

WINDOW_STATUSES = ("open", "closed", "settling", "settled", "unwound", "failed")

settlement_windows = sa.Table(
    "settlement_windows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("opened_at_us", sa.BigInteger, nullable=False),
    sa.Column("closed_at_us", sa.BigInteger, nullable=True),
    sa.CheckConstraint("status IN ('open', 'closed', 'settling', 'settled', 'unwound', 'failed')", name="status_known"),
    # Exactly one open window: a second insert of an open one fails on this index.
    sa.Index(
        "uq_settlement_windows_open",
        "status",
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    ),
)

# Every change of a window's status: when and by whom.
settlement_window_events = sa.Table(
    "settlement_window_events",
    metadata,
    sa.Column("window_id", sa.Integer, sa.ForeignKey("settlement_windows.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("at_us", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(128), nullable=True),
)

# The ledger account holding one institution's position in one window and currency. A payment's
# obligation is a transfer from the payer's position to the acquirer's; the payer's position
# account carries the net debit cap as its overdraft cap.
window_positions = sa.Table(
    "window_positions",
    metadata,
    sa.Column("window_id", sa.Integer, sa.ForeignKey("settlement_windows.id"), primary_key=True),
    sa.Column("institution_id", sa.String(INSTITUTION_ID_LENGTH_MAX), primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("account_id", sa.Uuid, nullable=False, unique=True),
    # What an institution owes from unsettled windows (``WindowBook.unsettled_debit``) looks its
    # positions up by institution, across windows (migration 0009).
    sa.Index("ix_window_positions_institution_id", "institution_id"),
)

# Participants a batch left out when it settled (their liquidity could not fund their net debit).
settlement_exclusions = sa.Table(
    "settlement_exclusions",
    metadata,
    sa.Column("window_id", sa.Integer, sa.ForeignKey("settlement_windows.id"), primary_key=True),
    sa.Column("institution_id", sa.String(INSTITUTION_ID_LENGTH_MAX), primary_key=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("net_debit_minor", sa.BigInteger, nullable=False),
    sa.Column("liquidity_minor", sa.BigInteger, nullable=False),
    sa.Column("at_us", sa.BigInteger, nullable=False),
)

# Obligations an unwound batch could not settle, carried unchanged into a later window's batch (the
# window open when the batch was unwound). The payments stand; only their settlement moves on.
settlement_carried = sa.Table(
    "settlement_carried",
    metadata,
    sa.Column("from_window_id", sa.Integer, sa.ForeignKey("settlement_windows.id"), primary_key=True),
    sa.Column("debtor", sa.String(INSTITUTION_ID_LENGTH_MAX), primary_key=True),
    sa.Column("creditor", sa.String(INSTITUTION_ID_LENGTH_MAX), primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("to_window_id", sa.Integer, sa.ForeignKey("settlement_windows.id"), nullable=False, index=True),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
)

# The operator's explicit word that an institution's net debit cap may exceed its prefunded
# liquidity (by default the cap in force is the lower of the two).
settlement_cap_overrides = sa.Table(
    "settlement_cap_overrides",
    metadata,
    sa.Column("institution_id", sa.String(INSTITUTION_ID_LENGTH_MAX), primary_key=True),
    sa.Column("beyond_liquidity", sa.Boolean, nullable=False),
    sa.Column("set_at_us", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(128), nullable=True),
)

# The refusal a payment or refund id was first answered with, so that the same id and body get the
# same answer later (the ledger remembers refused transfers by their own ids, but a payment's
# refusal may come from a leg whose id depends on the window, or from a quote that has expired by
# the time of the retry). ``request_digest`` tells a retry from another request reusing the id.
settlement_refusals = sa.Table(
    "settlement_refusals",
    metadata,
    sa.Column("institution_id", sa.String(INSTITUTION_ID_LENGTH_MAX), primary_key=True),
    sa.Column("operation", sa.String(16), primary_key=True),
    sa.Column("request_id", sa.Uuid, primary_key=True),
    sa.Column("request_digest", sa.String(64), nullable=False),
    sa.Column("code", sa.String(64), nullable=False),
    sa.Column("at_us", sa.BigInteger, nullable=False),
)
