"""Settlement batches: the participants a settlement left out, the obligations it carried into a
later window, the operator's overrides of the liquidity bound on net debit caps, and the refusals
payments and refunds were first answered with.

Revision ID: 0008_settlement_batches
Revises: 0007_console
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_settlement_batches"
down_revision = "0007_console"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settlement_exclusions",
        sa.Column("window_id", sa.Integer, nullable=False),
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("net_debit_minor", sa.BigInteger, nullable=False),
        sa.Column("liquidity_minor", sa.BigInteger, nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(
            ["window_id"], ["settlement_windows.id"], name=op.f("fk_settlement_exclusions_window_id_settlement_windows")
        ),
        sa.PrimaryKeyConstraint("window_id", "institution_id", name=op.f("pk_settlement_exclusions")),
    )
    op.create_table(
        "settlement_carried",
        sa.Column("from_window_id", sa.Integer, nullable=False),
        sa.Column("debtor", sa.String(64), nullable=False),
        sa.Column("creditor", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("to_window_id", sa.Integer, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_settlement_carried_amount_positive")),
        sa.ForeignKeyConstraint(
            ["from_window_id"],
            ["settlement_windows.id"],
            name=op.f("fk_settlement_carried_from_window_id_settlement_windows"),
        ),
        sa.ForeignKeyConstraint(
            ["to_window_id"], ["settlement_windows.id"], name=op.f("fk_settlement_carried_to_window_id_settlement_windows")
        ),
        sa.PrimaryKeyConstraint("from_window_id", "debtor", "creditor", "currency", name=op.f("pk_settlement_carried")),
    )
    op.create_index(op.f("ix_settlement_carried_to_window_id"), "settlement_carried", ["to_window_id"])
    op.create_table(
        "settlement_cap_overrides",
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("beyond_liquidity", sa.Boolean, nullable=False),
        sa.Column("set_at_us", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("institution_id", name=op.f("pk_settlement_cap_overrides")),
    )
    op.create_table(
        "settlement_refusals",
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("request_id", sa.Uuid, nullable=False),
        sa.Column("request_digest", sa.String(64), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("institution_id", "operation", "request_id", name=op.f("pk_settlement_refusals")),
    )


def downgrade() -> None:
    op.drop_table("settlement_refusals")
    op.drop_table("settlement_cap_overrides")
    op.drop_index(op.f("ix_settlement_carried_to_window_id"), table_name="settlement_carried")
    op.drop_table("settlement_carried")
    op.drop_table("settlement_exclusions")
