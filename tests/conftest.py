"""Shared fixtures: every storage test runs on SQLite and on PostgreSQL.

Each test gets a database of its own, copied from a template that the migrations built once per
session: a file copy on SQLite, ``CREATE DATABASE … TEMPLATE`` on PostgreSQL. PostgreSQL comes from
``LEDGER_TEST_POSTGRES_URL``; when it is unreachable the PostgreSQL cases skip, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from nacl.signing import SigningKey

import service.console.tables  # noqa: F401  (the upper layers' tables join the MetaData the migration test compares)
import settlement.fx_tables
import settlement.tables  # noqa: F401
import wallets.schema  # noqa: F401
from ledger import Ledger
from ledger.db import create_engine, migrate
from ledger.schema import accounts, transfers

POSTGRES_URL = os.environ.get("LEDGER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
RUN_ID = uuid.uuid4().hex[:8]


def _dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    return sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


class PostgresDatabases:
    """Creates a migrated template once, then one database per test from it.

    ``CREATE DATABASE`` and ``DROP DATABASE`` cost about a tenth of a second each, most of it the
    server waiting on its disk, and used to be the larger part of every PostgreSQL test's time. So a
    background thread, with an event loop of its own, keeps ``READY_AHEAD`` fresh copies of the
    template made ahead while the tests run, and drops each used database after its test has ended.
    Isolation is unchanged: every test still gets a copy of the template nobody else has touched,
    and nothing is reused. Whatever is left is dropped at the end of the session.
    """

    READY_AHEAD = 2

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.template = f"ledger_tpl_{RUN_ID}"
        self.created: list[str] = []
        self._counter = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready: asyncio.Queue[str | BaseException] | None = None
        self._to_drop: asyncio.Queue[str] | None = None
        self._workers: list[asyncio.Task] = []
        self._creating: asyncio.Task | None = None

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(_dsn(self.admin_url), timeout=5)

    async def setup(self) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{self.template}"')
        finally:
            await conn.close()
        engine = create_engine(with_database(self.admin_url, self.template))
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    async def _create(self) -> str:
        self._counter += 1
        name = f"ledger_t_{RUN_ID}_{self._counter}"
        self.created.append(name)
        conn = await self._admin()
        try:
            # WAL_LOG, not FILE_COPY: FILE_COPY checkpoints the whole server twice, measured 0.34 s
            # against 0.07 s per copy of this template here (and slower still while other suites run).
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}" STRATEGY WAL_LOG')
        finally:
            await conn.close()
        return name

    async def drop(self, name: str) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    # The background thread's side.

    def start(self) -> None:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._ready = asyncio.Queue(maxsize=self.READY_AHEAD)
            self._to_drop = asyncio.Queue()
            self._workers = [loop.create_task(self._fill()), loop.create_task(self._drain())]
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="postgres-test-databases", daemon=True)
        self._thread.start()
        started.wait()

    async def _fill(self) -> None:
        while True:
            # Shielded: stopping the session must not cancel a CREATE DATABASE halfway.
            self._creating = asyncio.get_running_loop().create_task(self._create())
            try:
                item: str | BaseException = await asyncio.shield(self._creating)
            except (TimeoutError, OSError, asyncpg.PostgresError) as error:
                item = error  # the test that takes it fails with the server's error
            await self._ready.put(item)
            if isinstance(item, BaseException):
                await asyncio.sleep(0.5)

    async def _drain(self) -> None:
        while True:
            name = await self._to_drop.get()
            try:
                await self.drop(name)
                self.created.remove(name)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                pass  # still in ``created``: the session's end tries again
            finally:
                self._to_drop.task_done()

    async def _stop(self) -> None:
        await self._to_drop.join()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._creating is not None:
            await asyncio.gather(self._creating, return_exceptions=True)
        for name in [*self.created, self.template]:
            with contextlib.suppress(TimeoutError, OSError, asyncpg.PostgresError):
                await self.drop(name)

    # The tests' side.

    async def new_database(self) -> str:
        """A fresh copy of the template, made ahead by the background thread."""
        item = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._ready.get(), self._loop))
        if isinstance(item, BaseException):
            raise item
        return with_database(self.admin_url, item)

    def release(self, url: str) -> None:
        """Drops the test's database in the background, once its test is over."""
        self._loop.call_soon_threadsafe(self._to_drop.put_nowait, sa.engine.make_url(url).database)

    def teardown(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


@pytest.fixture(scope="session")
def postgres_databases() -> PostgresDatabases | None:
    databases = PostgresDatabases(POSTGRES_URL)
    try:
        asyncio.run(databases.setup())
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is required under CI=true: {error!r}")
        yield None
        return
    databases.start()
    yield databases
    databases.teardown()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "ledger.db"

    async def build() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await migrate(engine)
        finally:  # closing the last connection checkpoints the WAL into the file we copy
            await engine.dispose()

    asyncio.run(build())
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
async def database_url(backend, tmp_path, sqlite_template, postgres_databases) -> AsyncIterator[str]:
    """A fresh, migrated database of the test's backend, dropped afterwards."""
    if backend == "sqlite":
        path = tmp_path / "ledger.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    if postgres_databases is None:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL} (set LEDGER_TEST_POSTGRES_URL)")
    url = await postgres_databases.new_database()
    yield url
    postgres_databases.release(url)


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.generate()


class FakeClock:
    """A clock the test moves by hand, in microseconds since the epoch."""

    def __init__(self, start_us: int = 1_795_600_000_000_000) -> None:  # 2026-11-25, mid-afternoon in Shanghai
        self.now_us = start_us

    def __call__(self) -> int:
        return self.now_us

    def advance(self, *, seconds: float = 0, days: float = 0) -> None:
        self.now_us += int((seconds + days * 86_400) * 1_000_000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def ledger(database_url, signing_key, clock) -> AsyncIterator[Ledger]:
    """A ledger on a fresh database; after the test, the books must balance and the chain verify."""
    instance = Ledger(create_engine(database_url), signing_key, clock=clock)
    yield instance
    try:
        await assert_invariants(instance)
    finally:
        await instance.close()


async def assert_invariants(ledger: Ledger, *, verify_chain: bool = True) -> None:
    """The invariants every scenario must leave intact, checked from the stored rows."""
    async with ledger.engine.connect() as conn:
        # Summed in Python: SQLite's SUM() refuses to pass 2^63, which overflow tests approach.
        per_currency: dict[str, list[int]] = {}
        for currency, *balances in await conn.execute(
            sa.select(
                accounts.c.currency,
                accounts.c.debits_posted,
                accounts.c.credits_posted,
                accounts.c.debits_pending,
                accounts.c.credits_pending,
            )
        ):
            totals = per_currency.setdefault(currency, [0, 0, 0, 0])
            for index, value in enumerate(balances):
                totals[index] += value
        for currency, (debits_posted, credits_posted, debits_pending, credits_pending) in per_currency.items():
            assert debits_posted == credits_posted, (
                f"{currency}: posted debits {debits_posted} != credits {credits_posted}"
            )
            assert debits_pending == credits_pending, (
                f"{currency}: pending debits {debits_pending} != credits {credits_pending}"
            )
        broken = (
            (
                await conn.execute(
                    sa.select(accounts.c.id).where(
                        sa.or_(
                            sa.and_(
                                accounts.c.flags.op("&")(1) != 0,
                                accounts.c.debits_posted + accounts.c.debits_pending > accounts.c.credits_posted,
                            ),
                            sa.and_(
                                accounts.c.flags.op("&")(2) != 0,
                                accounts.c.credits_posted + accounts.c.credits_pending > accounts.c.debits_posted,
                            ),
                        )
                    )
                )
            )
            .scalars()
            .all()
        )
        assert not broken, f"accounts break their balance flags: {broken}"
        duplicate_ids = (
            (await conn.execute(sa.select(transfers.c.id).group_by(transfers.c.id).having(sa.func.count() > 1)))
            .scalars()
            .all()
        )
        assert not duplicate_ids, f"transfer ids stored more than once: {duplicate_ids}"
    if verify_chain:
        report = await ledger.verify_audit()
        assert report.ok, report.problems


class Overlap:
    """Holds each of the first ``parties`` calls of ``ledger.submit`` until all of them have
    arrived (or ``timeout_s`` passed), so that their database transactions really run at once
    (warm the pool first: a fresh connect would set one of them a connect behind).
    ``max_in_flight`` is what proves they overlapped: how many submits ran at the same time."""

    def __init__(self, ledger, monkeypatch, parties: int = 2, timeout_s: float = 5.0) -> None:
        self.parties, self.timeout_s = parties, timeout_s
        self.arrived = 0
        self.in_flight = self.max_in_flight = 0
        self.all_here = asyncio.Event()
        real_submit = ledger.submit

        async def overlapping_submit(commands):
            self.arrived += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.arrived >= self.parties:
                    self.all_here.set()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.all_here.wait(), self.timeout_s)
                return await real_submit(commands)
            finally:
                self.in_flight -= 1

        monkeypatch.setattr(ledger, "submit", overlapping_submit)
