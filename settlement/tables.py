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
)
