"""The console's own rows: operator sessions, the login nonces already used, and audit
verification runs. All of them live in the database, not in a process, because several
``ledger serve --workers N`` processes share nothing else: a link redeemed on one worker must be
refused on another, and a session opened on one must be honoured by all."""

from __future__ import annotations

import sqlalchemy as sa

from ledger.schema import metadata
from wallets.schema import INSTITUTION_ID_LENGTH_MAX

# A session is found by the SHA-256 of its cookie's token, so a copy of this table lets no one in.
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("operator_id", sa.String(INSTITUTION_ID_LENGTH_MAX), nullable=False),
    # The synchronizer token every form of this session carries (CSRF).
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Column("expires_at_us", sa.BigInteger, nullable=False, index=True),
)

# A login statement's nonce, recorded when it is redeemed: the primary key refuses a second use,
# on any worker. Kept until the statement has expired (then its time refuses it anyway).
console_login_nonces = sa.Table(
    "console_login_nonces",
    metadata,
    sa.Column("nonce", sa.String(64), primary_key=True),
    sa.Column("operator_id", sa.String(INSTITUTION_ID_LENGTH_MAX), nullable=False),
    sa.Column("expires_at_us", sa.BigInteger, nullable=False, index=True),
    sa.Column("used_at_us", sa.BigInteger, nullable=False),
)

# "Verify now" from the console: a run starts in the background of the worker that took the
# request and records its result here, where the audit page of every worker finds it.
console_audit_runs = sa.Table(
    "console_audit_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("started_at_us", sa.BigInteger, nullable=False),
    sa.Column("finished_at_us", sa.BigInteger, nullable=True),
    sa.Column("ok", sa.Boolean, nullable=True),
    sa.Column("summary", sa.Text, nullable=True),
)
