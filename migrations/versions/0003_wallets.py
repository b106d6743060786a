"""Wallets: institutions, their keys and system accounts, and wallets.

Revision ID: 0003_wallets
Revises: 0002_refusals_account_events
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_wallets"
down_revision = "0002_refusals_account_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "institutions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("net_debit_cap_minor", sa.BigInteger, nullable=True),
        sa.Column("net_debit_cap_currency", sa.String(3), nullable=True),
        sa.CheckConstraint(
            "kind IN ('hk_payment_institution', 'sz_acquirer', 'settlement_bank', 'operator')",
            name=op.f("ck_institutions_kind_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_institutions")),
    )
    op.create_table(
        "institution_keys",
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("added_at_us", sa.BigInteger, nullable=False),
        sa.Column("retired_at_us", sa.BigInteger, nullable=True),
        sa.ForeignKeyConstraint(
            ["institution_id"], ["institutions.id"], name=op.f("fk_institution_keys_institution_id_institutions")
        ),
        sa.PrimaryKeyConstraint("institution_id", "public_key", name=op.f("pk_institution_keys")),
    )
    op.create_table(
        "institution_accounts",
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("account_id", sa.Uuid, nullable=False),
        sa.ForeignKeyConstraint(
            ["institution_id"], ["institutions.id"], name=op.f("fk_institution_accounts_institution_id_institutions")
        ),
        sa.PrimaryKeyConstraint("institution_id", "currency", "role", name=op.f("pk_institution_accounts")),
        sa.UniqueConstraint("account_id", name=op.f("uq_institution_accounts_account_id")),
    )
    op.create_table(
        "wallets",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("owner_kind", sa.String(16), nullable=False),
        sa.Column("owner_ref", sa.String(128), nullable=False),
        sa.Column("identity_hash", sa.String(128), nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("merchant_name", sa.String(128), nullable=True),
        sa.Column("merchant_city", sa.String(64), nullable=True),
        sa.Column("merchant_category_code", sa.String(4), nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint("owner_kind IN ('person', 'merchant')", name=op.f("ck_wallets_owner_kind_known")),
        sa.ForeignKeyConstraint(["institution_id"], ["institutions.id"], name=op.f("fk_wallets_institution_id_institutions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallets")),
    )
    op.create_index("ix_wallets_institution_id_id", "wallets", ["institution_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_wallets_institution_id_id", table_name="wallets")
    op.drop_table("wallets")
    op.drop_table("institution_accounts")
    op.drop_table("institution_keys")
    op.drop_table("institutions")
