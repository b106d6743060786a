"""The ledger's tables, as SQLAlchemy Core. Alembic migrations create them; a test proves the two
agree on SQLite and PostgreSQL.

Why no foreign keys from ``transfers`` to ``accounts``: every transfer is checked against its
accounts while they are locked in the same transaction, and ``audit verify`` re-checks it. On
PostgreSQL a foreign key adds a key-share lock query per inserted row, which is exactly the per-row
work the hot path exists to avoid.
"""

from __future__ import annotations

import sqlalchemy as sa

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

currencies = sa.Table(
    "currencies",
    metadata,
    sa.Column("code", sa.String(3), primary_key=True),
    sa.Column("exponent", sa.SmallInteger, nullable=False),
    sa.CheckConstraint("exponent >= 0 AND exponent <= 6", name="exponent_range"),
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("currency", sa.String(3), sa.ForeignKey("currencies.code"), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("owner_ref", sa.String(128), nullable=True),
    sa.Column("flags", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("status", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("debits_posted", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("credits_posted", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("debits_pending", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("credits_pending", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("balance_cap_minor", sa.BigInteger, nullable=True),
    sa.Column("transfer_cap_minor", sa.BigInteger, nullable=True),
    sa.Column("daily_debit_cap_minor", sa.BigInteger, nullable=True),
    sa.Column("annual_debit_cap_minor", sa.BigInteger, nullable=True),
    # The overdraft cap: debits (posted and pending) less posted credits may not pass it. A net
    # debit cap is this cap on an institution's position account.
    sa.Column("debit_balance_cap_minor", sa.BigInteger, nullable=True),
    # An opaque label for the limit profile an upper layer applied (an e-CNY category, an SVF
    # profile); the core stores and seals it, and never reads it.
    sa.Column("profile", sa.String(32), nullable=True),
    # Running debit totals for the daily and annual caps: the Asia/Shanghai day (proleptic
    # ordinal) and year they count, and the total so far. A debit on a later day starts afresh.
    sa.Column("debit_day", sa.Integer, nullable=False, server_default="0"),
    sa.Column("debits_day_minor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("debit_year", sa.Integer, nullable=False, server_default="0"),
    sa.Column("debits_year_minor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.CheckConstraint("(flags & 3) <> 3", name="flags_exclusive"),
    sa.CheckConstraint("status IN (0, 1, 2)", name="status_known"),
    sa.CheckConstraint(
        "debits_posted >= 0 AND credits_posted >= 0 AND debits_pending >= 0 AND credits_pending >= 0",
        name="balances_non_negative",
    ),
    # The database's own guard for the two balance rules, behind the engine's check.
    sa.CheckConstraint(
        "(flags & 1) = 0 OR debits_posted + debits_pending <= credits_posted", name="debits_within_credits"
    ),
    sa.CheckConstraint(
        "(flags & 2) = 0 OR credits_posted + credits_pending <= debits_posted", name="credits_within_debits"
    ),
    # Every batch rewrites the rows it touches; free space in each page lets PostgreSQL keep the
    # new version on the same page (a HOT update) without touching the primary-key index.
    postgresql_with={"fillfactor": 70},
)

transfers = sa.Table(
    "transfers",
    metadata,
    # The global order, assigned under the journal head lock: contiguous, one per transfer.
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("id", sa.Uuid, nullable=False, unique=True),
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
    sa.CheckConstraint("kind BETWEEN 1 AND 5", name="kind_known"),
    sa.CheckConstraint("amount_minor >= 0 AND released_minor >= 0", name="amounts_non_negative"),
    sa.CheckConstraint("debit_account_id <> credit_account_id", name="accounts_differ"),
    sa.CheckConstraint("(kind IN (3, 4, 5)) = (pending_id IS NOT NULL)", name="pending_id_iff_resolution"),
    # Statements read an account's transfers newest first from these two.
    sa.Index("ix_transfers_debit_account_id_seq", "debit_account_id", "seq"),
    sa.Index("ix_transfers_credit_account_id_seq", "credit_account_id", "seq"),
    # A pending transfer is resolved (posted, voided or expired) at most once: the database
    # refuses a second resolution even if two ledger processes race for it.
    sa.Index(
        "uq_transfers_pending_id",
        "pending_id",
        unique=True,
        sqlite_where=sa.text("pending_id IS NOT NULL"),
        postgresql_where=sa.text("pending_id IS NOT NULL"),
    ),
)

# Commands refused for a business reason, remembered under their id so that a late retry of the
# same id is answered with the same refusal and can never turn into a payment. They move nothing,
# appear in no balance or statement, and are sealed in the audit chain with the batch that refused
# them (``block_sequence``). The command's fields are kept as sent (posts and voids may leave the
# accounts out), to tell a retry from another command reusing the id.
transfer_refusals = sa.Table(
    "transfer_refusals",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
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
    sa.Column("block_sequence", sa.BigInteger, nullable=False, index=True),
)

# Every opening of an account and every change of its status, flags, limits or profile, with the
# full state after it, sealed in the audit chain like transfers. ``audit verify`` checks each
# account row against its newest event, so a cap raised behind the ledger's back is found.
account_events = sa.Table(
    "account_events",
    metadata,
    sa.Column("account_id", sa.Uuid, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
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
    sa.Column("block_sequence", sa.BigInteger, nullable=False, index=True),
    sa.CheckConstraint("version >= 1", name="version_positive"),
)

# Pending transfers that have a timeout and are not resolved yet: the expiry sweep's work list.
# Rows leave when the transfer is posted, voided or expired, so it stays as small as the holds.
pending_timeouts = sa.Table(
    "pending_timeouts",
    metadata,
    sa.Column("transfer_id", sa.Uuid, primary_key=True),
    sa.Column("expires_at_us", sa.BigInteger, nullable=False, index=True),
)

# One block per committed batch: hash = SHA-256(previous hash || header || canonical transfers).
journal_blocks = sa.Table(
    "journal_blocks",
    metadata,
    sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sa.Column("signature", sa.LargeBinary(64), nullable=False),
    sa.Column("first_transfer_seq", sa.BigInteger, nullable=False),
    sa.Column("transfer_count", sa.Integer, nullable=False),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Column("refusal_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("event_count", sa.Integer, nullable=False, server_default="0"),
    sa.CheckConstraint(
        "transfer_count >= 0 AND refusal_count >= 0 AND event_count >= 0 "
        "AND transfer_count + refusal_count + event_count > 0",
        name="not_empty",
    ),
)

# The single row every batch locks last: the chain's tip and the last transfer seq. It is the
# point where batches from several processes take their turn to append.
journal_head = sa.Table(
    "journal_head",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sa.Column("last_transfer_seq", sa.BigInteger, nullable=False),
    sa.CheckConstraint("id = 1", name="single_row"),
)

GENESIS_HASH = bytes(32)

# The one list of each row's columns, in the order the batch path reads and writes them: the
# stores build their SQL from these, and the in-memory types take their fields in this order (a
# test holds ``AccountState``, ``Transfer`` and ``Refusal`` to them).
ACCOUNT_STATE_COLUMNS = (
    "id", "currency", "flags", "status", "debits_posted", "credits_posted", "debits_pending", "credits_pending",
    "balance_cap_minor", "transfer_cap_minor", "daily_debit_cap_minor", "annual_debit_cap_minor",
    "debit_balance_cap_minor", "debit_day", "debits_day_minor", "debit_year", "debits_year_minor",
)  # fmt: skip
# What a batch writes back to each account it touched, after its id.
ACCOUNT_BALANCE_COLUMNS = (
    "debits_posted", "credits_posted", "debits_pending", "credits_pending",
    "debit_day", "debits_day_minor", "debit_year", "debits_year_minor",
)  # fmt: skip
TRANSFER_COLUMNS = (
    "seq", "id", "kind", "debit_account_id", "credit_account_id", "amount_minor", "released_minor", "currency",
    "pending_id", "timeout_s", "expires_at_us", "linked", "user_data", "created_at_us",
)  # fmt: skip
REFUSAL_COLUMNS = (
    "id", "code", "kind", "debit_account_id", "credit_account_id", "amount_minor", "currency", "pending_id",
    "timeout_s", "linked", "user_data", "created_at_us", "block_sequence",
)  # fmt: skip
# An account's settings as its events seal them (everything but balances and counters).
ACCOUNT_SETTING_COLUMNS = (
    "currency", "kind", "owner_ref", "profile", "flags", "status", "balance_cap_minor", "transfer_cap_minor",
    "daily_debit_cap_minor", "annual_debit_cap_minor", "debit_balance_cap_minor",
)  # fmt: skip
ACCOUNT_EVENT_COLUMNS = ("account_id", "version", "event", "actor", "at_us", *ACCOUNT_SETTING_COLUMNS, "block_sequence")
