"""Settlement windows, their status history and the position accounts of each window.

Revision ID: 0005_settlement_windows
Revises: 0003_wallets
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_settlement_windows"
down_revision = "0003_wallets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settlement_windows",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("opened_at_us", sa.BigInteger, nullable=False),
        sa.Column("closed_at_us", sa.BigInteger, nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'closed', 'settling', 'settled', 'unwound', 'failed')",
            name=op.f("ck_settlement_windows_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_windows")),
    )
    op.create_index(
        "uq_settlement_windows_open",
        "settlement_windows",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_table(
        "settlement_window_events",
        sa.Column("window_id", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(
            ["window_id"], ["settlement_windows.id"], name=op.f("fk_settlement_window_events_window_id_settlement_windows")
        ),
        sa.PrimaryKeyConstraint("window_id", "position", name=op.f("pk_settlement_window_events")),
    )
    op.create_table(
        "window_positions",
        sa.Column("window_id", sa.Integer, nullable=False),
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("account_id", sa.Uuid, nullable=False),
        sa.ForeignKeyConstraint(
            ["window_id"], ["settlement_windows.id"], name=op.f("fk_window_positions_window_id_settlement_windows")
        ),
        sa.PrimaryKeyConstraint("window_id", "institution_id", "currency", name=op.f("pk_window_positions")),
        sa.UniqueConstraint("account_id", name=op.f("uq_window_positions_account_id")),
    )


def downgrade() -> None:
    op.drop_table("window_positions")
    op.drop_table("settlement_window_events")
    op.drop_index("uq_settlement_windows_open", table_name="settlement_windows")
    op.drop_table("settlement_windows")
