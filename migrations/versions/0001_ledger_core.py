"""Ledger core: currencies, accounts, transfers, pending timeouts and the audit journal.

Revision ID: 0001_ledger_core
Revises:
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_ledger_core"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    currencies = op.create_table(
        "currencies",
        sa.Column("code", sa.String(3), nullable=False),
        sa.Column("exponent", sa.SmallInteger, nullable=False),
        sa.CheckConstraint("exponent >= 0 AND exponent <= 6", name=op.f("ck_currencies_exponent_range")),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_currencies")),
    )
    op.bulk_insert(currencies, [
        {"code": "CNY", "exponent": 2},
        {"code": "HKD", "exponent": 2},
        {"code": "USD", "exponent": 2},
    ])
    op.create_table(
        "accounts",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("owner_ref", sa.String(128), nullable=True),
        sa.Column("flags", sa.SmallInteger, server_default="0", nullable=False),
        sa.Column("status", sa.SmallInteger, server_default="0", nullable=False),
        sa.Column("debits_posted", sa.BigInteger, server_default="0", nullable=False),
        sa.Column("credits_posted", sa.BigInteger, server_default="0", nullable=False),
        sa.Column("debits_pending", sa.BigInteger, server_default="0", nullable=False),
        sa.Column("credits_pending", sa.BigInteger, server_default="0", nullable=False),
        sa.Column("balance_cap_minor", sa.BigInteger, nullable=True),
        sa.Column("transfer_cap_minor", sa.BigInteger, nullable=True),
        sa.Column("daily_debit_cap_minor", sa.BigInteger, nullable=True),
        sa.Column("annual_debit_cap_minor", sa.BigInteger, nullable=True),
        sa.Column("debit_day", sa.Integer, server_default="0", nullable=False),
        sa.Column("debits_day_minor", sa.BigInteger, server_default="0", nullable=False),
        sa.Column("debit_year", sa.Integer, server_default="0", nullable=False),
        sa.Column("debits_year_minor", sa.BigInteger, server_default="0", nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint("(flags & 3) <> 3", name=op.f("ck_accounts_flags_exclusive")),
        sa.CheckConstraint("status IN (0, 1, 2)", name=op.f("ck_accounts_status_known")),
        sa.CheckConstraint(
            "debits_posted >= 0 AND credits_posted >= 0 AND debits_pending >= 0 AND credits_pending >= 0",
            name=op.f("ck_accounts_balances_non_negative"),
        ),
        sa.CheckConstraint(
            "(flags & 1) = 0 OR debits_posted + debits_pending <= credits_posted",
            name=op.f("ck_accounts_debits_within_credits"),
        ),
        sa.CheckConstraint(
            "(flags & 2) = 0 OR credits_posted + credits_pending <= debits_posted",
            name=op.f("ck_accounts_credits_within_debits"),
        ),
        sa.ForeignKeyConstraint(["currency"], ["currencies.code"], name=op.f("fk_accounts_currency_currencies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        postgresql_with={"fillfactor": 70},
    )
    op.create_table(
        "transfers",
        sa.Column("seq", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("debit_account_id", sa.Uuid, nullable=False),
        sa.Column("credit_account_id", sa.Uuid, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("released_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("pending_id", sa.Uuid, nullable=True),
        sa.Column("timeout_s", sa.Integer, nullable=True),
        sa.Column("expires_at_us", sa.BigInteger, nullable=True),
        sa.Column("linked", sa.Boolean, nullable=False),
        sa.Column("user_data", sa.String(1024), nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint("kind BETWEEN 1 AND 5", name=op.f("ck_transfers_kind_known")),
        sa.CheckConstraint("amount_minor >= 0 AND released_minor >= 0", name=op.f("ck_transfers_amounts_non_negative")),
        sa.CheckConstraint("debit_account_id <> credit_account_id", name=op.f("ck_transfers_accounts_differ")),
        sa.CheckConstraint(
            "(kind IN (3, 4, 5)) = (pending_id IS NOT NULL)", name=op.f("ck_transfers_pending_id_iff_resolution")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_transfers")),
        sa.UniqueConstraint("id", name=op.f("uq_transfers_id")),
    )
    op.create_index("ix_transfers_debit_account_id_seq", "transfers", ["debit_account_id", "seq"])
    op.create_index("ix_transfers_credit_account_id_seq", "transfers", ["credit_account_id", "seq"])
    op.create_index(
        "uq_transfers_pending_id", "transfers", ["pending_id"], unique=True,
        sqlite_where=sa.text("pending_id IS NOT NULL"), postgresql_where=sa.text("pending_id IS NOT NULL"),
    )
    op.create_table(
        "pending_timeouts",
        sa.Column("transfer_id", sa.Uuid, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("transfer_id", name=op.f("pk_pending_timeouts")),
    )
    op.create_index(op.f("ix_pending_timeouts_expires_at_us"), "pending_timeouts", ["expires_at_us"])
    op.create_table(
        "journal_blocks",
        sa.Column("sequence", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
        sa.Column("first_transfer_seq", sa.BigInteger, nullable=False),
        sa.Column("transfer_count", sa.Integer, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint("transfer_count > 0", name=op.f("ck_journal_blocks_not_empty")),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_journal_blocks")),
    )
    journal_head = op.create_table(
        "journal_head",
        sa.Column("id", sa.SmallInteger, autoincrement=False, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.Column("last_transfer_seq", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_journal_head_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_head")),
    )
    op.bulk_insert(journal_head, [{"id": 1, "sequence": 0, "hash": bytes(32), "last_transfer_seq": 0}])


def downgrade() -> None:
    op.drop_table("journal_head")
    op.drop_table("journal_blocks")
    op.drop_index(op.f("ix_pending_timeouts_expires_at_us"), table_name="pending_timeouts")
    op.drop_table("pending_timeouts")
    op.drop_index("uq_transfers_pending_id", table_name="transfers")
    op.drop_index("ix_transfers_credit_account_id_seq", table_name="transfers")
    op.drop_index("ix_transfers_debit_account_id_seq", table_name="transfers")
    op.drop_table("transfers")
    op.drop_table("accounts")
    op.drop_table("currencies")
