"""``ledger serve``: the drain on an in-process app (requests in flight finish and are stored, new
ones get 503 ``shutting_down``), and as real processes: ``init`` then ``serve`` on a fresh data
directory, SIGTERM under load exiting 0, and ``--workers 2`` on PostgreSQL answering from two PIDs.

Until the HTTP routes exist, load across processes is ``/healthz`` and ``/readyz``; money in flight
during a drain is tested in-process, through a test-only route that submits to the app's batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from uuid import UUID

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from rich.console import Console

from ledger import AccountSpec, TransferCommand
from ledger.db import create_engine
from ledger.ids import uuid7
from ledger.keys import read_signing_key
from ledger.schema import transfers
from service import cli, serve
from service.app import begin_drain, create_app, is_draining
from service.client import AuthenticationError, LedgerClient, NotFoundError
from service.config import Settings
from service.handlers import read_json, shielded
from service.keys import BATCHER_KEY, LEDGER_KEY
from service.openapi import RouteTable
from service.schemas import RequestModel, ResponseModel

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


# -- the drain, in process --------------------------------------------------------------------


class PaymentIn(RequestModel):
    id: UUID
    source: UUID
    target: UUID


class PaymentOut(ResponseModel):
    id: UUID
    code: str


drain_routes = RouteTable(tag="test")


@drain_routes.route(
    "POST", "/v1/test-payments", summary="Test only: a transfer", request=PaymentIn, responses={201: PaymentOut}
)
async def pay(request: web.Request) -> web.Response:
    body = await read_json(request, PaymentIn)
    command = TransferCommand.posted(body.id, body.source, body.target, 100, "CNY")
    result = await shielded(request.app[BATCHER_KEY].submit(command))
    return web.json_response(PaymentOut(id=body.id, code=result.code.value).model_dump(mode="json"), status=201)


class FakeCaller:
    key_id = "hk-alphapay"


async def trust_everyone(_request: web.Request, _body: bytes) -> FakeCaller:
    return FakeCaller()


class Gate:
    """Holds every ``ledger.submit`` until opened, so that requests are in flight when the drain starts."""

    def __init__(self, ledger) -> None:
        self.open = asyncio.Event()
        self.reached = asyncio.Event()
        real_submit = ledger.submit

        async def held_submit(commands):
            self.reached.set()
            await self.open.wait()
            return await real_submit(commands)

        ledger.submit = held_submit


@pytest.fixture
async def initialised(tmp_path, database_url) -> Settings:
    settings = Settings(data_dir=tmp_path / "ledger-data", database_url=database_url)
    assert await cli.prepare_ledger(settings, quiet()) == 0
    return settings


async def stored_ids(database_url: str) -> set[UUID]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return set((await conn.execute(sa.select(transfers.c.id))).scalars())
    finally:
        await engine.dispose()


async def test_a_drain_finishes_requests_in_flight_refuses_new_ones_and_loses_no_acknowledged_payment(initialised):
    app = create_app(initialised, authenticator=trust_everyone, route_tables=[drain_routes])
    runner, _site = await serve.start(app, "127.0.0.1", 0)
    url = serve.bound_url(runner, "127.0.0.1")
    ledger = app[LEDGER_KEY]
    source, target = uuid7(), uuid7()
    await ledger.create_accounts([AccountSpec(source, "CNY", "funding"), AccountSpec(target, "CNY", "wallet")])
    gate = Gate(ledger)
    async with aiohttp.ClientSession() as session:

        async def post(payment_id: UUID) -> tuple[int, dict]:
            body = {"id": str(payment_id), "source": str(source), "target": str(target)}
            async with session.post(f"{url}/v1/test-payments", json=body) as response:
                return response.status, await response.json(content_type=None)

        in_flight_ids = [uuid7() for _ in range(20)]
        in_flight = [asyncio.create_task(post(payment_id)) for payment_id in in_flight_ids]
        await asyncio.wait_for(gate.reached.wait(), 10)  # a batch is at the database, the rest queued

        begin_drain(app)  # what SIGTERM does first
        async with session.post(f"{url}/v1/test-payments", json={}) as refused:
            assert refused.status == 503 and refused.headers["Retry-After"]
            assert (await refused.json(content_type=None))["code"] == "shutting_down"
        async with session.get(f"{url}/readyz") as readiness:  # a load balancer stops sending
            assert readiness.status == 503
        async with session.get(f"{url}/healthz") as health:  # still alive while it drains
            assert health.status == 200

        drained = asyncio.create_task(serve.drain(runner))
        await asyncio.sleep(0.2)
        assert not drained.done(), "the drain must wait for the requests in flight"
        with pytest.raises(aiohttp.ClientConnectionError):  # the listener is closed
            await post(uuid7())
        gate.open.set()
        results = await asyncio.gather(*in_flight)
        await asyncio.wait_for(drained, 30)

    assert [status for status, _ in results] == [201] * len(in_flight_ids)
    assert all(body["code"] == "ok" for _, body in results)
    stored = await stored_ids(initialised.database_url)
    assert set(in_flight_ids) <= stored, "an acknowledged payment is missing"


async def test_the_app_drains_under_any_runner_through_its_on_shutdown_hook(initialised):
    app = create_app(initialised, authenticator=trust_everyone)
    runner, _site = await serve.start(app, "127.0.0.1", 0)
    assert not is_draining(app)
    await runner.cleanup()  # no begin_drain: aiohttp's own shutdown signal sets it
    assert is_draining(app)


# -- as processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """``python -m service.cli serve`` with its output in a file (a full pipe would block it)."""

    def __init__(self, settings: Settings, log_path: Path, *arguments: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            "LEDGER_DATA_DIR": str(settings.data_dir),
            "LEDGER_DATABASE_URL": settings.database_url,
            "PYTHONPATH": str(REPO_ROOT),
            "COLUMNS": "200",  # rich wraps at 80 columns when not on a terminal
        }
        self.log_path = log_path
        self.log = log_path.open("wb")
        command = [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port), *arguments]
        self.process = asyncio.subprocess.Process  # set by start()
        self._start = asyncio.create_subprocess_exec(
            *command, env=environment, cwd=REPO_ROOT, stdout=self.log, stderr=asyncio.subprocess.STDOUT
        )

    async def start(self) -> ServeProcess:
        self.process = await self._start
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.returncode is None, self.output()
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.url}/healthz") as health:
                    if health.status == 200:
                        async with session.get(f"{self.url}/readyz") as readiness:
                            assert readiness.status == 200, await readiness.text()
                            return
            await asyncio.sleep(0.2)
        raise AssertionError(f"not ready within {START_TIMEOUT_S} s: {self.output()}")

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        try:
            return await asyncio.wait_for(self.process.wait(), EXIT_TIMEOUT_S)
        finally:
            self.close()

    def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        self.log.close()


@pytest.fixture
async def spawn(tmp_path):
    started: list[ServeProcess] = []

    async def start(settings: Settings, *arguments: str) -> ServeProcess:
        process = await ServeProcess(settings, tmp_path / f"serve-{len(started)}.log", *arguments).start()
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            process.close()
        if process.process.returncode is None:
            await process.process.wait()


@pytest.mark.slow
async def test_init_then_serve_on_a_fresh_data_directory_needs_no_other_set_up(tmp_path, spawn):
    data_dir = tmp_path / "fresh"
    settings = Settings(data_dir=data_dir, database_url=f"sqlite+aiosqlite:///{data_dir / 'ledger.db'}")
    environment = {**os.environ, "LEDGER_DATA_DIR": str(settings.data_dir), "PYTHONPATH": str(REPO_ROOT)}
    environment.pop("LEDGER_DATABASE_URL", None)
    init = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "init", env=environment, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await init.communicate()
    assert init.returncode == 0, output
    assert (settings.data_dir / "operator.key").exists() and settings.signing_key_path.exists()

    server = await spawn(settings)
    async with aiohttp.ClientSession() as session:
        await server.wait_ready(session)
    # The operator's key from init signs /v1/ requests; a key id nobody registered does not.
    operator_key = read_signing_key(settings.data_dir / "operator.key")
    async with LedgerClient(server.url, key_id="operator", signing_key=operator_key, retries_max=0) as operator:
        with contextlib.suppress(NotFoundError):  # authenticated: 200 once the route exists, 404 before
            await operator.get("/v1/institutions/operator")
    async with LedgerClient(server.url, key_id="nobody", signing_key=operator_key, retries_max=0) as stranger:
        with pytest.raises(AuthenticationError) as refused:
            await stranger.get("/v1/institutions/operator")
    assert refused.value.code == "unknown_key"
    assert await server.stop() == 0, server.output()
    assert f"serving {server.url}" in server.output()


@pytest.mark.slow
async def test_sigterm_under_load_exits_0_and_every_answer_is_ok_or_a_refusal(initialised, spawn, backend):
    server = await spawn(initialised)
    statuses: list[int] = []
    stop_load = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        await server.wait_ready(session)

        async def probe() -> None:
            while not stop_load.is_set():
                try:
                    async with session.get(f"{server.url}/readyz") as response:
                        statuses.append(response.status)
                        if response.status != 200:
                            assert (await response.json(content_type=None))["code"] == "shutting_down"
                except aiohttp.ClientConnectionError:  # the listener closed: refused, as it should be
                    await asyncio.sleep(0.01)

        load = [asyncio.create_task(probe()) for _ in range(8)]
        await asyncio.sleep(0.5)
        answered_before_term = len(statuses)
        code = await server.stop(signal.SIGTERM)
        stop_load.set()
        await asyncio.gather(*load)

        with pytest.raises(aiohttp.ClientConnectionError):  # nothing listens any more
            await session.get(f"{server.url}/healthz")

    assert code == 0, server.output()
    assert answered_before_term > 0 and set(statuses) <= {200, 503}, statuses
    assert "drained, exiting" in server.output()


def connection_owner(pids: list[int], server_port: int, client_port: int) -> int | None:
    """Which process holds the server side of a TCP connection, read from /proc (Linux)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
        if local_port == server_port and remote_port == client_port:
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(descriptor) == f"socket:[{inode}]":
                    return pid
    return None


def process_alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


async def serving_pid(port: int, worker_pids: list[int]) -> int | None:
    """Open a connection, get an answer on it, and say which worker accepted it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        client_port = writer.get_extra_info("sockname")[1]
        return connection_owner(worker_pids, port, client_port)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads connection owners from /proc")
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_two_workers_on_postgresql_share_one_port_and_both_answer(initialised, spawn):
    server = await spawn(initialised, "--workers", "2")
    async with aiohttp.ClientSession() as session:
        await server.wait_ready(session)
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(worker_pids := [int(pid) for pid in re.findall(r"serving \S+ \(pid (\d+)\)", server.output())]) < 2:
            assert time.monotonic() < deadline, server.output()
            await asyncio.sleep(0.2)
    owners = {await serving_pid(server.port, worker_pids) for _ in range(40)}

    assert owners == set(worker_pids), f"connections went to {owners}, workers are {worker_pids}"
    assert server.process.pid not in owners  # the parent only supervises
    assert await server.stop(signal.SIGTERM) == 0, server.output()
    assert not any(process_alive(pid) for pid in worker_pids)
    assert server.output().count("drained, exiting") == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_worker_that_cannot_run_stops_the_pool_with_its_exit_code(initialised):
    taken = socket.socket()  # held without SO_REUSEPORT: no worker can bind the port
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    environment = {
        **os.environ,
        "LEDGER_DATA_DIR": str(initialised.data_dir),
        "LEDGER_DATABASE_URL": initialised.database_url,
        "PYTHONPATH": str(REPO_ROOT),
        "COLUMNS": "200",
    }
    try:
        arguments = ["serve", "--workers", "2", "--port", str(taken.getsockname()[1])]
        pool = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.cli",
            *arguments,
            env=environment,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(pool.communicate(), EXIT_TIMEOUT_S)
    finally:
        taken.close()
    assert pool.returncode == cli.EXIT_FAILED, output.decode()
    assert b"exited on its own" in output


def test_workers_on_sqlite_are_refused_with_a_clear_message_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["serve", "--workers", "2"]) == 2
    assert "--workers needs PostgreSQL" in capsys.readouterr().out


def test_serve_before_init_says_to_run_init_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["serve", "--port", "0"]) == 2
    assert "run `ledger init`" in capsys.readouterr().out


@pytest.mark.parametrize("arguments", [["--workers", "0"], ["--port", "70000"], ["--port", "x"]])
def test_serve_refuses_bad_numbers_with_exit_2(arguments):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", *arguments])
    assert exit_info.value.code == 2
