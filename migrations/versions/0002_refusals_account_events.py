"""Remembered refusals, sealed account events, the overdraft cap and the profile label.

Revision ID: 0002_refusals_account_events
Revises: 0001_ledger_core
Create Date: 2026-11-29

Accounts opened before this revision have no sealed opening event; ``audit verify`` reports them.
No database with such accounts is in use: the ledger had no users before this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_refusals_account_events"
down_revision = "0001_ledger_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("debit_balance_cap_minor", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("profile", sa.String(32), nullable=True))
    with op.batch_alter_table("journal_blocks") as batch:
        batch.add_column(sa.Column("refusal_count", sa.Integer, server_default="0", nullable=False))
        batch.add_column(sa.Column("event_count", sa.Integer, server_default="0", nullable=False))
        batch.drop_constraint(op.f("ck_journal_blocks_not_empty"), type_="check")
        batch.create_check_constraint(
            op.f("ck_journal_blocks_not_empty"),
            "transfer_count >= 0 AND refusal_count >= 0 AND event_count >= 0 "
            "AND transfer_count + refusal_count + event_count > 0",
        )
    op.create_table(
        "transfer_refusals",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("code", sa.String(40), nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("debit_account_id", sa.Uuid, nullable=True),
        sa.Column("credit_account_id", sa.Uuid, nullable=True),
        sa.Column("amount_minor", sa.BigInteger, nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("pending_id", sa.Uuid, nullable=True),
        sa.Column("timeout_s", sa.Integer, nullable=True),
        sa.Column("linked", sa.Boolean, nullable=False),
        sa.Column("user_data", sa.String(1024), nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("block_sequence", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfer_refusals")),
    )
    op.create_index(op.f("ix_transfer_refusals_block_sequence"), "transfer_refusals", ["block_sequence"])
    op.create_table(
        "account_events",
        sa.Column("account_id", sa.Uuid, nullable=False),
        sa.Column("version", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("owner_ref", sa.String(128), nullable=True),
        sa.Column("profile", sa.String(32), nullable=True),
        sa.Column("flags", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("balance_cap_minor", sa.BigInteger, nullable=True),
        sa.Column("transfer_cap_minor", sa.BigInteger, nullable=True),
        sa.Column("daily_debit_cap_minor", sa.BigInteger, nullable=True),
        sa.Column("annual_debit_cap_minor", sa.BigInteger, nullable=True),
        sa.Column("debit_balance_cap_minor", sa.BigInteger, nullable=True),
        sa.Column("block_sequence", sa.BigInteger, nullable=False),
        sa.CheckConstraint("version >= 1", name=op.f("ck_account_events_version_positive")),
        sa.PrimaryKeyConstraint("account_id", "version", name=op.f("pk_account_events")),
    )
    op.create_index(op.f("ix_account_events_block_sequence"), "account_events", ["block_sequence"])


def downgrade() -> None:
    op.drop_index(op.f("ix_account_events_block_sequence"), table_name="account_events")
    op.drop_table("account_events")
    op.drop_index(op.f("ix_transfer_refusals_block_sequence"), table_name="transfer_refusals")
    op.drop_table("transfer_refusals")
    with op.batch_alter_table("journal_blocks") as batch:
        batch.drop_constraint(op.f("ck_journal_blocks_not_empty"), type_="check")
        batch.create_check_constraint(op.f("ck_journal_blocks_not_empty"), "transfer_count > 0")
        batch.drop_column("event_count")
        batch.drop_column("refusal_count")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("profile")
        batch.drop_column("debit_balance_cap_minor")
