"""Indexes the operator console's pages need on a large ledger: ``window_positions`` by institution,
which ``WindowBook.unsettled_debit`` filters on (the institution page's cap gauge, the position API,
and every payment opening a position account); the primary key leads with the window id, so without
this index that lookup reads every window's positions.

Revision ID: 0009_console_indexes
Revises: 0008_settlement_batches
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0009_console_indexes"
down_revision = "0008_settlement_batches"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_window_positions_institution_id"), "window_positions", ["institution_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_window_positions_institution_id"), table_name="window_positions")
