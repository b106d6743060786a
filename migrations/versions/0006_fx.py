"""The FX desk: the history of rates set by operators, and the quotes the ledger signed.

Revision ID: 0006_fx
Revises: 0005_settlement_windows
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_fx"
down_revision = "0005_settlement_windows"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fx_rates",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("source_currency", sa.String(3), nullable=False),
        sa.Column("target_currency", sa.String(3), nullable=False),
        sa.Column("mid_rate", sa.String(40), nullable=False),
        sa.Column("spread_bps", sa.Integer, nullable=False),
        sa.Column("set_at_us", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.CheckConstraint("spread_bps >= 0 AND spread_bps <= 10000", name=op.f("ck_fx_rates_spread_bps_range")),
        sa.CheckConstraint("source_currency <> target_currency", name=op.f("ck_fx_rates_currencies_differ")),
        sa.ForeignKeyConstraint(
            ["source_currency"], ["currencies.code"], name=op.f("fk_fx_rates_source_currency_currencies")
        ),
        sa.ForeignKeyConstraint(
            ["target_currency"], ["currencies.code"], name=op.f("fk_fx_rates_target_currency_currencies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fx_rates")),
    )
    op.create_index("ix_fx_rates_pair", "fx_rates", ["source_currency", "target_currency", "id"])
    op.create_table(
        "fx_quotes",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("source_currency", sa.String(3), nullable=False),
        sa.Column("target_currency", sa.String(3), nullable=False),
        sa.Column("rate", sa.String(40), nullable=False),
        sa.Column("source_minor", sa.BigInteger, nullable=False),
        sa.Column("target_minor", sa.BigInteger, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
        sa.CheckConstraint("source_minor > 0 AND target_minor > 0", name=op.f("ck_fx_quotes_amounts_positive")),
        sa.CheckConstraint("expires_at_us > created_at_us", name=op.f("ck_fx_quotes_expires_after_created")),
        sa.CheckConstraint("source_currency <> target_currency", name=op.f("ck_fx_quotes_currencies_differ")),
        sa.ForeignKeyConstraint(
            ["institution_id"], ["institutions.id"], name=op.f("fk_fx_quotes_institution_id_institutions")
        ),
        sa.ForeignKeyConstraint(
            ["source_currency"], ["currencies.code"], name=op.f("fk_fx_quotes_source_currency_currencies")
        ),
        sa.ForeignKeyConstraint(
            ["target_currency"], ["currencies.code"], name=op.f("fk_fx_quotes_target_currency_currencies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fx_quotes")),
    )


def downgrade() -> None:
    op.drop_table("fx_quotes")
    op.drop_index("ix_fx_rates_pair", table_name="fx_rates")
    op.drop_table("fx_rates")
