"""Alembic environment, async. Used two ways:

* from the ledger (``ledger init``, tests): a live connection is passed in
  ``config.attributes["connection"]`` and the migration runs on it;
* from the ``alembic`` command line: the URL comes from ``LEDGER_DATABASE_URL`` (or
  ``sqlalchemy.url``), and an engine with the ledger's SQLite settings is made for it.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

import service.console.tables  # noqa: F401  (their tables join the one MetaData)
import settlement.fx_tables
import settlement.tables  # noqa: F401
import wallets.schema  # noqa: F401
from ledger.db import create_engine
from ledger.schema import metadata

config = context.config
target_metadata = metadata


def _url() -> str:
    return (
        os.environ.get("LEDGER_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
        or "sqlite+aiosqlite:///ledger-data/ledger.db"
    )


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, dialect_opts={"paramstyle": "named"}
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)
