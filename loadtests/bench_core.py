"""Benchmark of the hot transfer path: group commit against one transaction per transfer.

    python -m loadtests.bench_core [--backends sqlite,postgresql] [--scenarios uniform,hot]
                                   [--transfers 60000] [--baseline-transfers 3000]
                                   [--concurrency 200] [--processes 1] [--accounts 10000] [--repeat 3]
                                   [--json PATH]

For each backend and scenario it runs, in the same process and the same run:
- ``batched``: ``--concurrency`` caller tasks hand single transfers to one Batcher;
- ``baseline``: the same callers, each transfer its own ``Ledger.submit`` (one transaction).
With ``--processes N`` the batched runs are split over N writer processes against one database,
each with a Ledger, a Batcher and ``--concurrency`` callers of its own (the service scaled out).
``uniform`` moves money between random pairs of ``--accounts`` funded wallets; ``hot`` pays one
merchant account from random wallets. Each run starts from a fresh database. Every case runs
``--repeat`` times and reports its median run (by throughput) with the others beside it, because
one run on a shared 2-core machine can be 10-15% off the next. It prints a table and with
``--json`` writes ``{"results": [...], "ratios": [...], "settings": {...}}``. Latency is per
transfer, from the caller's submit to its result. PostgreSQL comes from LEDGER_BENCH_POSTGRES_URL.
This measures; it asserts nothing (speed is judged on ratios, not in timed tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import asyncpg
import sqlalchemy as sa
from nacl.signing import SigningKey
from rich.console import Console
from rich.table import Table

from ledger import AccountFlags, AccountSpec, Batcher, Ledger, TransferCommand
from ledger.db import create_engine, migrate
from ledger.ids import uuid7

POSTGRES_URL = os.environ.get("LEDGER_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
FUNDING_MINOR = 10**12  # every wallet starts rich enough never to run dry during a run
SETUP_BATCH = 2_000
PROCESS_START_TIMEOUT_S = 60
PROCESS_RUN_TIMEOUT_S = 600


@dataclass
class RunResult:
    backend: str
    scenario: str
    mode: str
    transfers: int
    concurrency: int
    seconds: float
    transfers_per_second: float
    p50_ms: float
    p99_ms: float
    failed: int
    batches: int
    processes: int = 1
    # Every repeat's throughput, in run order; the other figures are the median run's.
    runs_transfers_per_second: list[float] = field(default_factory=list)


class BenchDatabase:
    """A fresh database per run: a temp file for SQLite, a new database for PostgreSQL."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._pg_name: str | None = None

    async def __aenter__(self) -> str:
        if self.backend == "sqlite":
            self._tmp = tempfile.TemporaryDirectory(prefix="ledger-bench-")
            return f"sqlite+aiosqlite:///{self._tmp.name}/bench.db"
        self._pg_name = f"ledger_bench_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(_dsn(POSTGRES_URL))
        try:
            await conn.execute(f'CREATE DATABASE "{self._pg_name}"')
        finally:
            await conn.close()
        return sa.engine.make_url(POSTGRES_URL).set(database=self._pg_name).render_as_string(hide_password=False)

    async def __aexit__(self, *exc_info) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
        if self._pg_name is not None:
            conn = await asyncpg.connect(_dsn(POSTGRES_URL))
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)')
            finally:
                await conn.close()


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _prepare(ledger: Ledger, accounts: int) -> tuple[list[uuid.UUID], uuid.UUID]:
    """Open and fund the wallets and one merchant account; none of this is timed."""
    funding = uuid7()
    merchant = uuid7()
    wallets = [uuid7() for _ in range(accounts)]
    specs = [AccountSpec(funding, "CNY", "funding"), AccountSpec(merchant, "CNY", "merchant")]
    specs += [AccountSpec(w, "CNY", "wallet", flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS) for w in wallets]
    for start in range(0, len(specs), SETUP_BATCH):
        await ledger.create_accounts(specs[start : start + SETUP_BATCH])
    deposits = [TransferCommand.posted(uuid7(), funding, w, FUNDING_MINOR, "CNY") for w in wallets]
    for start in range(0, len(deposits), SETUP_BATCH):
        results = await ledger.submit(deposits[start : start + SETUP_BATCH])
        if not all(result.ok for result in results):
            raise RuntimeError(f"funding failed: {results[0].code}")
    return wallets, merchant


def _commands(
    scenario: str, count: int, wallets: list[uuid.UUID], merchant: uuid.UUID, seed: int = 7
) -> list[TransferCommand]:
    rng = random.Random(seed)
    commands = []
    for _ in range(count):
        payer = rng.choice(wallets)
        if scenario == "hot":
            payee = merchant
        else:
            payee = rng.choice(wallets)
            while payee == payer:
                payee = rng.choice(wallets)
        commands.append(TransferCommand.posted(uuid7(), payer, payee, rng.randint(1, 100_000), "CNY"))
    return commands


async def _drive(commands: list[TransferCommand], concurrency: int, submit_one) -> tuple[float, list[float], int]:
    """``concurrency`` callers take commands off one list until it is empty; returns wall time,
    per-transfer latencies and the number of non-ok results."""
    latencies: list[float] = []
    failed = 0
    position = 0

    async def caller() -> None:
        nonlocal position, failed
        while position < len(commands):
            command = commands[position]
            position += 1
            started = time.perf_counter()
            result = await submit_one(command)
            latencies.append(time.perf_counter() - started)
            if not result.ok:
                failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, failed


async def run_one(backend: str, scenario: str, mode: str, args: argparse.Namespace) -> RunResult:
    processes = args.processes if mode == "batched" else 1
    async with BenchDatabase(backend) as url:
        concurrency = args.concurrency if mode == "batched" else args.baseline_concurrency
        engine = create_engine(url, **_engine_options(backend, concurrency))
        await migrate(engine)
        ledger = Ledger(engine, SigningKey.generate())
        try:
            wallets, merchant = await _prepare(ledger, args.accounts)
            count = args.transfers if mode == "batched" else args.baseline_transfers
            batches_before = ledger.stats.batches
            if processes > 1:
                seconds, latencies, failed, batches = await _drive_processes(
                    backend, url, bytes(ledger.signing_key), scenario, count, wallets, merchant, args
                )
            else:
                commands = _commands(scenario, count, wallets, merchant)
                if mode == "batched":
                    batcher = _batcher(ledger, args)
                    batcher.start()
                    try:
                        seconds, latencies, failed = await _drive(commands, concurrency, batcher.submit)
                    finally:
                        await batcher.close()
                else:

                    async def submit_alone(command: TransferCommand):
                        return (await ledger.submit([command]))[0]

                    seconds, latencies, failed = await _drive(commands, concurrency, submit_alone)
                batches = ledger.stats.batches - batches_before
            if args.verify:
                report = await ledger.verify_audit()
                if not report.ok:
                    raise RuntimeError(f"audit failed after the run: {report.problems}")
        finally:
            await ledger.close()
    latencies.sort()
    return RunResult(
        backend=backend,
        scenario=scenario,
        mode=mode,
        transfers=count,
        concurrency=concurrency,
        seconds=round(seconds, 3),
        transfers_per_second=round(count / seconds, 1),
        p50_ms=round(_percentile(latencies, 50) * 1000, 3),
        p99_ms=round(_percentile(latencies, 99) * 1000, 3),
        failed=failed,
        batches=batches,
        processes=processes,
    )


def _engine_options(backend: str, concurrency: int) -> dict:
    return {"pool_size": concurrency + 2, "max_overflow": 0} if backend == "postgresql" else {}


def _batcher(ledger: Ledger, args: argparse.Namespace) -> Batcher:
    return Batcher(
        ledger,
        batch_size_max=args.batch_size_max,
        batch_wait_ms=args.batch_wait_ms,
        queue_depth_max=max(50_000, args.concurrency * 2),
        expiry_interval_s=None,
    )


async def _drive_processes(
    backend: str,
    url: str,
    key: bytes,
    scenario: str,
    count: int,
    wallets: list[uuid.UUID],
    merchant: uuid.UUID,
    args: argparse.Namespace,
) -> tuple[float, list[float], int, int]:
    """The batched run split over ``--processes`` writer processes against one database, each a
    Ledger and Batcher of its own with ``--concurrency`` callers, as the service scales out. The
    clock runs from the moment all are ready until the last one is done."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited loop or pool
    ready, start, done = context.Queue(), context.Event(), context.Queue()
    shares = [count // args.processes + (index < count % args.processes) for index in range(args.processes)]
    workers = [
        context.Process(
            target=_process_main,
            daemon=True,
            args=(backend, url, key, scenario, share, wallets, merchant, 7 + index, args, ready, start, done),
        )
        for index, share in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    loop = asyncio.get_running_loop()
    try:
        for _ in workers:
            await loop.run_in_executor(None, ready.get, True, PROCESS_START_TIMEOUT_S)
        started = time.perf_counter()
        start.set()
        reports = [await loop.run_in_executor(None, done.get, True, PROCESS_RUN_TIMEOUT_S) for _ in workers]
        seconds = time.perf_counter() - started
    finally:
        for worker in workers:
            worker.join(timeout=PROCESS_START_TIMEOUT_S)
            if worker.is_alive():
                worker.kill()
    errors = [report["error"] for report in reports if "error" in report]
    if errors:
        raise RuntimeError(f"a writer process failed: {errors[0]}")
    latencies = [latency for report in reports for latency in report["latencies"]]
    return (
        seconds,
        latencies,
        sum(report["failed"] for report in reports),
        sum(report["batches"] for report in reports),
    )


def _process_main(
    backend: str,
    url: str,
    key: bytes,
    scenario: str,
    count: int,
    wallets: list[uuid.UUID],
    merchant: uuid.UUID,
    seed: int,
    args: argparse.Namespace,
    ready,
    start,
    done,
) -> None:
    async def run() -> dict:
        ledger = Ledger(create_engine(url, **_engine_options(backend, args.concurrency)), SigningKey(key))
        try:
            commands = _commands(scenario, count, wallets, merchant, seed)
            batcher = _batcher(ledger, args)
            batcher.start()
            try:
                ready.put(True)
                await asyncio.get_running_loop().run_in_executor(None, start.wait)
                _, latencies, failed = await _drive(commands, args.concurrency, batcher.submit)
            finally:
                await batcher.close()
            return {"latencies": latencies, "failed": failed, "batches": ledger.stats.batches}
        finally:
            await ledger.close()

    try:
        done.put(asyncio.run(run()))
    except Exception as error:  # the parent must hear of it rather than wait for its timeout
        ready.put(False)
        done.put({"error": repr(error)})


def _percentile(sorted_values: list[float], percent: float) -> float:
    if not sorted_values:
        return 0.0
    # Nearest rank: the smallest value with at least ``percent`` of the values at or below it.
    index = min(len(sorted_values) - 1, max(0, math.ceil(percent / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def _ratios(results: list[RunResult]) -> list[dict]:
    by_key = {(r.backend, r.scenario, r.mode): r for r in results}
    ratios = []
    for backend in sorted({r.backend for r in results}):
        uniform = by_key.get((backend, "uniform", "batched"))
        hot = by_key.get((backend, "hot", "batched"))
        if uniform and hot:
            ratios.append(
                {
                    "backend": backend,
                    "name": "hot_over_uniform",
                    "value": round(hot.transfers_per_second / uniform.transfers_per_second, 3),
                }
            )
        for scenario in ("uniform", "hot"):
            batched = by_key.get((backend, scenario, "batched"))
            baseline = by_key.get((backend, scenario, "baseline"))
            if batched and baseline:
                ratios.append(
                    {
                        "backend": backend,
                        "scenario": scenario,
                        "name": "batched_over_baseline",
                        "value": round(batched.transfers_per_second / baseline.transfers_per_second, 2),
                    }
                )
    return ratios


def _print(results: list[RunResult], ratios: list[dict]) -> None:
    console = Console(width=150)
    table = Table(title="Ledger hot path: transfers per second, median run (higher is better)")
    for column in (
        "backend",
        "scenario",
        "mode",
        "transfers",
        "processes",
        "callers",
        "transfers/s",
        "runs (min-max)",
        "p50 ms",
        "p99 ms",
        "batches",
        "failed",
    ):
        table.add_column(column, justify="left" if column in ("backend", "scenario", "mode") else "right")
    for r in results:
        spread = f"{min(r.runs_transfers_per_second):,.0f}-{max(r.runs_transfers_per_second):,.0f}"
        table.add_row(
            r.backend,
            r.scenario,
            r.mode,
            str(r.transfers),
            str(r.processes),
            str(r.concurrency),
            f"{r.transfers_per_second:,.0f}",
            spread,
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.batches),
            str(r.failed),
        )
    console.print(table)
    for ratio in ratios:
        where = f"{ratio['backend']} {ratio.get('scenario', '')}".strip()
        console.print(f"{where}: {ratio['name']} = {ratio['value']}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_core", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma list of sqlite, postgresql")
    parser.add_argument("--scenarios", default="uniform,hot", help="comma list of uniform, hot")
    parser.add_argument("--modes", default="batched,baseline", help="comma list of batched, baseline")
    parser.add_argument("--transfers", type=int, default=60_000, help="transfers per batched run")
    parser.add_argument("--baseline-transfers", type=int, default=3_000, help="transfers per baseline run")
    parser.add_argument("--concurrency", type=int, default=200, help="concurrent callers in batched runs")
    parser.add_argument(
        "--baseline-concurrency",
        type=int,
        default=50,
        help="concurrent callers (and pooled connections) in baseline runs",
    )
    parser.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help="writer processes sharing the batched runs (each with --concurrency callers)",
    )
    parser.add_argument("--accounts", type=int, default=10_000, help="funded wallets")
    parser.add_argument("--batch-size-max", type=int, default=1_000)
    parser.add_argument("--batch-wait-ms", type=float, default=1.0)
    parser.add_argument(
        "--repeat", type=_positive_int, default=3, help="runs per case; the median run is reported (default 3)"
    )
    parser.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip the audit verification after each run"
    )
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace) -> list[RunResult]:
    cases = [
        (backend, scenario, mode)
        for backend in args.backends.split(",")
        for scenario in args.scenarios.split(",")
        for mode in args.modes.split(",")
    ]
    runs: dict[tuple[str, str, str], list[RunResult]] = {case: [] for case in cases}
    # Round-robin over the cases, so that a slow minute of the machine lands on every case once
    # rather than on all the repeats of one.
    for repeat in range(1, args.repeat + 1):
        for case in cases:
            result = await run_one(*case, args)
            print(
                f"  [{repeat}/{args.repeat}] {case[0]:10} {case[1]:8} {case[2]:8} "
                f"{result.transfers_per_second:>10,.0f}/s p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms",
                file=sys.stderr,
            )
            runs[case].append(result)
    return [_median_run(runs[case]) for case in cases]


def _median_run(runs: list[RunResult]) -> RunResult:
    """The run with the median throughput (the lower middle one for an even count), carrying
    every run's throughput."""
    middle = sorted(runs, key=lambda run: run.transfers_per_second)[(len(runs) - 1) // 2]
    return replace(middle, runs_transfers_per_second=[run.transfers_per_second for run in runs])


def write_json(args: argparse.Namespace, results: list[RunResult], ratios: list[dict]) -> None:
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    document = {
        "results": [asdict(result) for result in results],
        "ratios": ratios,
        "settings": settings,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(main_async(args))
    ratios = _ratios(results)
    _print(results, ratios)
    if args.json:
        write_json(args, results, ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
