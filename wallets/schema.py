"""The wallets layer's tables, on the ledger's one MetaData so that one Alembic history and one
comparison test cover both. Balances, status, limits and the limit profile of a wallet live on its
ledger account (sealed in the audit chain); these rows hold only what the ledger has no word for."""

from __future__ import annotations

import sqlalchemy as sa

from ledger.schema import metadata

INSTITUTION_ID_LENGTH_MAX = 64

institutions = sa.Table(
    "institutions",
    metadata,
    sa.Column("id", sa.String(INSTITUTION_ID_LENGTH_MAX), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    # The cap on its net debit position in settlement, as registered (settlement enforces it).
    sa.Column("net_debit_cap_minor", sa.BigInteger, nullable=True),
    sa.Column("net_debit_cap_currency", sa.String(3), nullable=True),
    sa.CheckConstraint(
        "kind IN ('hk_payment_institution', 'sz_acquirer', 'settlement_bank', 'operator')", name="kind_known"
    ),
)

# Ed25519 public keys; a key is active until retired. Rotation adds a key, then retires the old.
institution_keys = sa.Table(
    "institution_keys",
    metadata,
    sa.Column(
        "institution_id", sa.String(INSTITUTION_ID_LENGTH_MAX), sa.ForeignKey("institutions.id"), primary_key=True
    ),
    sa.Column("public_key", sa.LargeBinary(32), primary_key=True),
    sa.Column("added_at_us", sa.BigInteger, nullable=False),
    sa.Column("retired_at_us", sa.BigInteger, nullable=True),
)

# Each institution's system accounts, one per currency and role (funding, settlement, fees).
institution_accounts = sa.Table(
    "institution_accounts",
    metadata,
    sa.Column(
        "institution_id", sa.String(INSTITUTION_ID_LENGTH_MAX), sa.ForeignKey("institutions.id"), primary_key=True
    ),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("role", sa.String(16), primary_key=True),
    sa.Column("account_id", sa.Uuid, nullable=False, unique=True),
)

wallets = sa.Table(
    "wallets",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),  # the ledger account's id
    sa.Column("institution_id", sa.String(INSTITUTION_ID_LENGTH_MAX), sa.ForeignKey("institutions.id"), nullable=False),
    sa.Column("owner_kind", sa.String(16), nullable=False),
    sa.Column("owner_ref", sa.String(128), nullable=False),
    # A salted hash of the owner's identity, supplied by the institution; never the identity.
    sa.Column("identity_hash", sa.String(128), nullable=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("merchant_name", sa.String(128), nullable=True),
    sa.Column("merchant_city", sa.String(64), nullable=True),
    sa.Column("merchant_category_code", sa.String(4), nullable=True),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.CheckConstraint("owner_kind IN ('person', 'merchant')", name="owner_kind_known"),
    sa.Index("ix_wallets_institution_id_id", "institution_id", "id"),
)
