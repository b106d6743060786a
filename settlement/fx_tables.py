"""The FX desk's rows: every rate an operator set (the current rate of a pair is its newest), and
every quote the ledger signed. A quote's signature covers ``settlement.fx.canonical_quote_json`` of
its fields and is checked again whenever the row is read."""

from __future__ import annotations

import sqlalchemy as sa

from ledger.schema import metadata
from wallets.schema import INSTITUTION_ID_LENGTH_MAX

# Rates as text: a Decimal's exact digits, never a float. A mid rate has at most 28 places and is
# at most 1,000,000 (settlement.fx), so 40 characters hold any of them with room to spare.
RATE_TEXT_LENGTH_MAX = 40
ACTOR_LENGTH_MAX = 128
ED25519_SIGNATURE_BYTES = 64

# Append-only: a new rate is a new row; the newest row of a pair (highest id) is its current rate.
fx_rates = sa.Table(
    "fx_rates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source_currency", sa.String(3), sa.ForeignKey("currencies.code"), nullable=False),
    sa.Column("target_currency", sa.String(3), sa.ForeignKey("currencies.code"), nullable=False),
    sa.Column("mid_rate", sa.String(RATE_TEXT_LENGTH_MAX), nullable=False),
    sa.Column("spread_bps", sa.Integer, nullable=False),
    sa.Column("set_at_us", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(ACTOR_LENGTH_MAX), nullable=False),
    sa.CheckConstraint("spread_bps >= 0 AND spread_bps <= 10000", name="spread_bps_range"),
    sa.CheckConstraint("source_currency <> target_currency", name="currencies_differ"),
    sa.Index("ix_fx_rates_pair", "source_currency", "target_currency", "id"),
)

fx_quotes = sa.Table(
    "fx_quotes",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("institution_id", sa.String(INSTITUTION_ID_LENGTH_MAX), sa.ForeignKey("institutions.id"), nullable=False),
    sa.Column("source_currency", sa.String(3), sa.ForeignKey("currencies.code"), nullable=False),
    sa.Column("target_currency", sa.String(3), sa.ForeignKey("currencies.code"), nullable=False),
    sa.Column("rate", sa.String(RATE_TEXT_LENGTH_MAX), nullable=False),
    sa.Column("source_minor", sa.BigInteger, nullable=False),
    sa.Column("target_minor", sa.BigInteger, nullable=False),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Column("expires_at_us", sa.BigInteger, nullable=False),
    sa.Column("signature", sa.LargeBinary(ED25519_SIGNATURE_BYTES), nullable=False),
    sa.CheckConstraint("source_minor > 0 AND target_minor > 0", name="amounts_positive"),
    sa.CheckConstraint("expires_at_us > created_at_us", name="expires_after_created"),
    sa.CheckConstraint("source_currency <> target_currency", name="currencies_differ"),
)
