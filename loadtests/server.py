"""A ledger server of the load tests' own: a fresh data directory and database, ``ledger init``,
``ledger serve`` with N workers, ready when /readyz says so, stopped with SIGTERM (it drains: every
acknowledged request is committed), and a PostgreSQL database dropped afterwards.

Every process is started as ``python -m service.cli …`` with this checkout first on PYTHONPATH, so
the server runs the code under test whatever copy is installed in the virtualenv.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
POSTGRES_ADMIN_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
READY_POLL_S = 0.2
DATA_DIR_MARKER = ".loadtest-data"  # only a directory with this file is ever deleted


def child_environment(**extra: str) -> dict[str, str]:
    environment = dict(os.environ, **extra)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    return environment


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclass
class FreshLedger:
    """A data directory and database made for one run."""

    data_dir: Path
    database_url: str
    postgres_database: str | None = None
    postgres_admin_url: str = POSTGRES_ADMIN_URL_DEFAULT

    @property
    def environment(self) -> dict[str, str]:
        return child_environment(LEDGER_DATA_DIR=str(self.data_dir), LEDGER_DATABASE_URL=self.database_url)

    @property
    def operator_key_path(self) -> Path:
        return self.data_dir / "operator.key"


def make_data_dir(path: Path) -> Path:
    """An empty data directory at ``path``; one left by an earlier run (marked) is replaced."""
    if path.exists():
        if not (path / DATA_DIR_MARKER).exists():
            raise SystemExit(f"{path} exists and is not a load test's data directory: choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / DATA_DIR_MARKER).write_text("made by python -m loadtests; deleted by the next run in this --out\n")
    return path


async def create_postgres_database(admin_url: str) -> str:
    name = f"loadtest_{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(3)}"
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name


async def drop_postgres_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def fresh_ledger(data_dir: Path, database: str, postgres_admin_url: str = POSTGRES_ADMIN_URL_DEFAULT) -> FreshLedger:
    make_data_dir(data_dir)
    if database == "sqlite":
        return FreshLedger(data_dir, f"sqlite+aiosqlite:///{data_dir / 'ledger.db'}")
    name = asyncio.run(create_postgres_database(postgres_admin_url))
    base = postgres_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return FreshLedger(data_dir, f"{base}/{name}", name, postgres_admin_url)


def drop(ledger: FreshLedger) -> None:
    if ledger.postgres_database is not None:
        asyncio.run(drop_postgres_database(ledger.postgres_admin_url, ledger.postgres_database))


def ledger_init(ledger: FreshLedger, log_path: Path) -> None:
    with log_path.open("a") as log:
        completed = subprocess.run(
            [sys.executable, "-m", "service.cli", "init"], env=ledger.environment, stdout=log, stderr=log, check=False
        )
    if completed.returncode != 0:
        raise SystemExit(f"`ledger init` failed (exit {completed.returncode}); see {log_path}")


class Server:
    """``ledger serve`` in its own process group, logging to a file."""

    def __init__(self, ledger: FreshLedger, workers: int, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        command = [sys.executable, "-m", "service.cli", "serve", "--host", HOST, "--port", str(self.port)]
        if workers > 1:
            command += ["--workers", str(workers)]
        self.log_path = log_path
        self._log = log_path.open("a")
        # A session of its own: a Ctrl-C in the terminal reaches the run command, which stops the server.
        self.process = subprocess.Popen(
            command, env=ledger.environment, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"`ledger serve` exited with {self.process.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(READY_POLL_S)
        self.stop()
        raise SystemExit(f"`ledger serve` was not ready within {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> int:
        """SIGTERM, then wait for the drain; SIGKILL only past the bound."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode

    @property
    def pids(self) -> list[int]:
        """The serving processes: the worker pool's children, or the one process."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError):
            found = [int(pid) for pid in children.read_text().split()]
            if found:
                return found
        return [self.process.pid]


@contextlib.contextmanager
def running_server(ledger: FreshLedger, workers: int, log_path: Path) -> Iterator[Server]:
    server = Server(ledger, workers, log_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
