"""Alembic migrations are the only way the schema is made: on SQLite and PostgreSQL they must build
exactly the tables of ``ledger.schema``, and upgrade -> downgrade -> upgrade must work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import POSTGRES_URL
from nacl.signing import SigningKey
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import AccountFlags, AccountSpec, Ledger, TransferCommand
from ledger.db import alembic_config, create_engine, downgrade, migrate
from ledger.ids import uuid7
from ledger.schema import GENESIS_HASH, accounts, currencies, journal_head, metadata

LEDGER_TABLES = set(metadata.tables)


@pytest.fixture
async def empty_engine(backend, database_url, tmp_path) -> AsyncIterator[AsyncEngine]:
    """An engine on a database with none of the ledger's tables: a new SQLite file, or the test's
    PostgreSQL database taken down to the base revision."""
    if backend == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    else:
        engine = create_engine(database_url)
        await downgrade(engine, "base")
    try:
        yield engine
    finally:
        await engine.dispose()


def _schema_differences(sync_conn) -> list:
    context = MigrationContext.configure(sync_conn, opts={"compare_type": True, "compare_server_default": True})
    return compare_metadata(context, metadata)


def _table_names(sync_conn) -> set[str]:
    return set(sa.inspect(sync_conn).get_table_names())


def _current_revision(sync_conn) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


def _head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_the_fresh_database_has_none_of_the_ledger_tables(empty_engine):
    async with empty_engine.connect() as conn:
        assert not (await conn.run_sync(_table_names)) & LEDGER_TABLES
        assert await conn.run_sync(_current_revision) is None


async def test_migrations_build_exactly_the_tables_of_the_schema_module(empty_engine):
    await migrate(empty_engine)
    async with empty_engine.connect() as conn:
        assert await conn.run_sync(_schema_differences) == []
        assert await conn.run_sync(_table_names) >= LEDGER_TABLES
        assert await conn.run_sync(_current_revision) == _head_revision()


def _check_constraint_names(sync_conn) -> dict[str, set[str]]:
    inspector = sa.inspect(sync_conn)
    return {table: {check["name"] for check in inspector.get_check_constraints(table)} for table in LEDGER_TABLES}


async def test_migrations_build_the_check_constraints_of_the_schema_module_with_their_names(empty_engine):
    # Alembic's comparison does not look at CHECK constraints, so compare their names here.
    await migrate(empty_engine)
    expected = {
        table: {
            constraint.name
            for constraint in metadata.tables[table].constraints
            if isinstance(constraint, sa.CheckConstraint)
        }
        for table in LEDGER_TABLES
    }
    async with empty_engine.connect() as conn:
        assert await conn.run_sync(_check_constraint_names) == expected
    # thirteen in the ledger, two in the wallets, one in settlement windows, five in the FX desk (0006_fx),
    # one in settlement batches (0008)
    assert sum(map(len, expected.values())) == 22


async def test_schema_comparison_would_notice_a_missing_column(empty_engine):
    """The comparison above is not vacuous: a column the migrations lack shows up as a difference."""
    await migrate(empty_engine)
    async with empty_engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE accounts DROP COLUMN owner_ref"))
    async with empty_engine.connect() as conn:
        differences = await conn.run_sync(_schema_differences)
    assert [(d[0], d[3].name) for d in differences] == [("add_column", "owner_ref")]


async def test_upgrade_downgrade_upgrade_leaves_a_working_seeded_ledger(empty_engine, clock):
    await migrate(empty_engine)
    await downgrade(empty_engine, "base")
    async with empty_engine.connect() as conn:
        assert not (await conn.run_sync(_table_names)) & LEDGER_TABLES
        assert await conn.run_sync(_current_revision) is None
    await migrate(empty_engine)
    async with empty_engine.connect() as conn:
        assert await conn.run_sync(_schema_differences) == []
        seeded = dict((await conn.execute(sa.select(currencies.c.code, currencies.c.exponent))).all())
        head = (await conn.execute(sa.select(journal_head))).one()
    assert seeded == {"CNY": 2, "HKD": 2, "USD": 2}
    assert (head.id, head.sequence, bytes(head.hash), head.last_transfer_seq) == (1, 0, GENESIS_HASH, 0)

    ledger = Ledger(empty_engine, SigningKey.generate(), clock=clock)
    source, wallet = uuid7(), uuid7()
    await ledger.create_accounts(
        [
            AccountSpec(source, "CNY", "funding"),
            AccountSpec(wallet, "CNY", "wallet", flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
        ]
    )
    [result] = await ledger.submit([TransferCommand.posted(uuid7(), source, wallet, 100, "CNY")])
    assert result.ok
    report = await ledger.verify_audit()
    assert report.ok and (report.blocks_checked, report.events_checked, report.transfers_checked) == (2, 2, 1)


async def test_upgrading_an_up_to_date_database_changes_nothing(empty_engine):
    await migrate(empty_engine)
    await migrate(empty_engine)
    async with empty_engine.connect() as conn:
        assert await conn.run_sync(_schema_differences) == []
        assert (await conn.execute(sa.select(sa.func.count()).select_from(journal_head))).scalar_one() == 1
        assert (await conn.execute(sa.select(sa.func.count()).select_from(currencies))).scalar_one() == 3


async def test_the_migrated_database_itself_refuses_a_wallet_balance_below_zero(database_url):
    """Behind the rule engine, the CHECK constraints guard the balance flags on both databases."""
    engine = create_engine(database_url)
    try:
        wallet = uuid7()
        async with engine.begin() as conn:
            await conn.execute(
                accounts.insert().values(
                    id=wallet,
                    currency="CNY",
                    kind="wallet",
                    flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                    created_at_us=0,
                )
            )
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(accounts.update().where(accounts.c.id == wallet).values(debits_posted=1))
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(accounts.update().where(accounts.c.id == wallet).values(flags=3))
        with pytest.raises(IntegrityError):  # foreign key to currencies
            async with engine.begin() as conn:
                await conn.execute(accounts.insert().values(id=uuid7(), currency="XYZ", kind="wallet", created_at_us=0))
    finally:
        await engine.dispose()


async def test_sqlite_runs_in_wal_mode_with_full_sync_and_foreign_keys(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'pragmas.db'}")
    try:
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys")
            }
    finally:
        await engine.dispose()
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1}


@pytest.mark.parametrize("backend", ["postgresql"])  # table storage options exist on PostgreSQL only
async def test_postgresql_storage_options_of_the_schema_module_are_those_the_migration_set(backend, empty_engine):
    # Alembic's comparison does not look at table storage options (WITH (fillfactor=...)).
    await migrate(empty_engine)
    expected = {
        table.name: {key: str(value) for key, value in (table.dialect_options["postgresql"]["with"] or {}).items()}
        for table in metadata.tables.values()
    }
    async with empty_engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.text("SELECT relname, reloptions FROM pg_class WHERE relkind = 'r' AND relname = ANY(:names)"),
                {"names": sorted(LEDGER_TABLES)},
            )
        ).all()
    actual = {name: dict(option.split("=", 1) for option in (options or [])) for name, options in rows}
    assert actual == expected


async def test_two_processes_migrating_an_empty_database_at_once_both_succeed(
    empty_engine, backend, database_url, tmp_path
):
    """Two `ledger init`s starting together: the second waits for the first and finds the schema
    current (on PostgreSQL the first's half-made tables used to fail it with a duplicate key)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}" if backend == "sqlite" else database_url
    engines = [create_engine(url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
        async with empty_engine.connect() as conn:
            assert await conn.run_sync(_current_revision) == _head_revision()
            assert await conn.run_sync(_schema_differences) == []
    finally:
        for engine in engines:
            await engine.dispose()


def _definitions(sync_conn) -> dict:
    """Every table's CHECK constraints (name and normalised SQL) and indexes (name, columns,
    uniqueness and predicate), as the database reports them: what compare_metadata does not look
    at (it matches CHECK constraints by name only and ignores index predicates)."""
    inspector = sa.inspect(sync_conn)

    def predicate(index) -> str:
        options = index.get("dialect_options") or {}
        where = options.get("postgresql_where", options.get("sqlite_where"))
        return " ".join(str(getattr(where, "text", where)).split()) if where is not None else ""

    return {
        table: (
            sorted(
                (check["name"], " ".join(check["sqltext"].split())) for check in inspector.get_check_constraints(table)
            ),
            sorted(
                (index["name"], tuple(index["column_names"]), bool(index["unique"]), predicate(index))
                for index in inspector.get_indexes(table)
            ),
        )
        for table in inspector.get_table_names()
        if table != "alembic_version"
    }


async def test_migrations_build_the_same_check_expressions_and_index_predicates_as_the_schema_module(
    empty_engine, backend, tmp_path
):
    admin = None
    if backend == "sqlite":
        reference_url = f"sqlite+aiosqlite:///{tmp_path / 'create_all.db'}"
    else:
        reference_name = f"ledger_create_all_{uuid7().hex[:10]}"
        admin = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://", 1))
        await admin.execute(f'CREATE DATABASE "{reference_name}"')
        reference_url = (
            sa.engine.make_url(POSTGRES_URL).set(database=reference_name).render_as_string(hide_password=False)
        )
    reference = create_engine(reference_url)
    try:
        await migrate(empty_engine)
        async with reference.begin() as conn:
            await conn.run_sync(metadata.create_all)
        async with empty_engine.connect() as conn:
            migrated = await conn.run_sync(_definitions)
        async with reference.connect() as conn:
            modelled = await conn.run_sync(_definitions)
    finally:
        await reference.dispose()
        if admin is not None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{reference_name}" WITH (FORCE)')
            await admin.close()
    assert migrated == modelled
    # The comparison sees what it should: the partial unique index keeps its predicate.
    assert any(
        name == "uq_transfers_pending_id" and "pending_id IS NOT NULL" in where
        for name, _, _, where in migrated["transfers"][1]
    )
