"""The operator console: sessions, used login nonces, audit verification runs.

Revision ID: 0007_console
Revises: 0006_fx
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_console"
down_revision = "0006_fx"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("operator_id", sa.String(64), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_console_sessions")),
    )
    op.create_index(op.f("ix_console_sessions_expires_at_us"), "console_sessions", ["expires_at_us"])
    op.create_table(
        "console_login_nonces",
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("operator_id", sa.String(64), nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.Column("used_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_console_login_nonces")),
    )
    op.create_index(op.f("ix_console_login_nonces_expires_at_us"), "console_login_nonces", ["expires_at_us"])
    op.create_table(
        "console_audit_runs",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("started_at_us", sa.BigInteger, nullable=False),
        sa.Column("finished_at_us", sa.BigInteger, nullable=True),
        sa.Column("ok", sa.Boolean, nullable=True),
        sa.Column("summary", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_audit_runs")),
    )


def downgrade() -> None:
    op.drop_table("console_audit_runs")
    op.drop_index(op.f("ix_console_login_nonces_expires_at_us"), table_name="console_login_nonces")
    op.drop_table("console_login_nonces")
    op.drop_index(op.f("ix_console_sessions_expires_at_us"), table_name="console_sessions")
    op.drop_table("console_sessions")
