"""Engines for the two supported databases, and the migration runner.

SQLite (aiosqlite) is the embedded default: WAL so readers never block the writer,
``synchronous=FULL`` so a committed batch survives power loss, foreign keys on, and every write
transaction opened with ``BEGIN IMMEDIATE`` so it holds the write lock from its first statement
(the SQLite form of "lock the touched accounts"). PostgreSQL (asyncpg) is production.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

# A read-only transaction on SQLite opts out of BEGIN IMMEDIATE with this execution option.
READ_ONLY = {"ledger_read_only": True}
SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_WAL_SWITCH_ATTEMPTS = 20
POSTGRES_POOL_SIZE = 10
POSTGRES_POOL_OVERFLOW_MAX = 20
# A pooled PostgreSQL connection idle this long is pinged before use.
PING_IDLE_AFTER_S = 1.0


def create_engine(url: str, **engine_options: Any) -> AsyncEngine:
    """An async engine for ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URLs (plain
    ``sqlite://``, ``postgresql://`` and ``postgres://`` get the async driver)."""
    url = async_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, **engine_options)
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql"):
        engine_options.setdefault("pool_size", POSTGRES_POOL_SIZE)
        engine_options.setdefault("max_overflow", POSTGRES_POOL_OVERFLOW_MAX)
        # No ping before every checkout: that was a round trip per batch (5% of the hot path).
        # Only a connection that sat idle in the pool for PING_IDLE_AFTER_S is pinged (after a
        # restart or failover those are the dead ones), and a connection that dies in use
        # renews the whole pool: the batch path then retries the batch on a fresh one
        # (ledger.store.ConnectionLost), and SQLAlchemy does the same for Core statements.
        engine_options.setdefault("pool_pre_ping", False)
        engine = create_async_engine(url, **engine_options)
        _ping_idle_connections(engine)
        return engine
    raise ValueError(f"unsupported database URL {url!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://")


def async_url(url: str) -> str:
    """The URL with the driver the ledger uses: an operator's plain ``postgresql://…`` would
    otherwise ask SQLAlchemy for psycopg, which is not installed."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def _ping_idle_connections(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkin")
    def on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["ledger_idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        # ``info`` lives as long as the DBAPI connection: a new connection has no idle mark.
        idle_since = record.info.get("ledger_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_AFTER_S:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            # The pool drops this connection and checks out a new one in its place.
            raise DisconnectionError(f"an idle pooled connection was dead: {error!r}") from error


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """WAL mode is kept in the file, but the switch takes a lock that SQLite does not wait for
    with busy_timeout: two processes opening a new file at once saw "database is locked" about
    one time in ten. The switch is retried briefly (once a file is in WAL it is a no-op)."""
    for attempt in range(1, SQLITE_WAL_SWITCH_ATTEMPTS + 1):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == SQLITE_WAL_SWITCH_ATTEMPTS:
                raise
            time.sleep(0.01 * attempt)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Hand transaction control to the "begin" hook below instead of the driver's own BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("ledger_read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


@asynccontextmanager
async def read_transaction(engine: AsyncEngine, *, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction: a deferred BEGIN on SQLite (a WAL snapshot, no write lock), and
    on PostgreSQL REPEATABLE READ when the caller needs several statements to see one snapshot."""
    async with engine.connect() as conn:
        options: dict[str, object] = dict(READ_ONLY)
        if snapshot and engine.dialect.name == "postgresql":
            options["isolation_level"] = "REPEATABLE READ"
        conn = await conn.execution_options(**options)
        await conn.begin()
        try:
            yield conn
        finally:
            await conn.rollback()


def alembic_config() -> Config:
    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


# The advisory lock that makes concurrent migrations on PostgreSQL take turns (any constant will
# do; this is "ledger" in ASCII).
MIGRATION_LOCK_KEY = 0x6C6564676572


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; migrations are the only way the schema is made. Two
    processes starting at once take turns (on PostgreSQL an advisory lock held to the end of the
    transaction; SQLite's BEGIN IMMEDIATE already serialises them): the second finds the schema
    current instead of failing on the first's half-made tables."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        await conn.run_sync(_alembic, "upgrade", revision)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_alembic, "downgrade", revision)


def _alembic(sync_conn: Connection, action: str, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = sync_conn
    getattr(command, action)(config, revision)
