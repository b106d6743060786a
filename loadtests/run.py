"""``python -m loadtests run``: one command from an empty directory to verified figures.

    python -m loadtests run --scenario hot-transfer --users 50 --spawn-rate 10 --duration 60s \\
        --database postgresql --workers 2 --out load-out

1. a fresh data directory (``DIR/ledger-data``) and database (PostgreSQL: a new, uniquely named
   database on ``LEDGER_LOADTEST_POSTGRES_URL``, dropped at the end), ``ledger init``;
2. ``ledger serve --workers N`` on a free loopback port, ready when /readyz answers 200;
3. seeding through the API (``loadtests.seed``): institutions, wallet batches, funding batches;
4. the baseline: the same Locust set-up (users, spawn rate) against ``GET /healthz``;
5. the scenario, Locust headless with its progress table on the terminal (``--locust-workers N``:
   a Locust master and N workers on this machine);
6. merchant-load: the operator closes the open window, so that every payment of the run is in a
   closed window, and reads every batch (``GET /v1/settlement/batches/{id}``);
7. the server is stopped (it drains), then ``loadtests.verify`` checks the ledger against the
   users' request logs, the books, the batches and ``ledger audit verify``;
8. ``DIR/summary.json``, ``DIR/chart.png``, Locust's CSV and HTML reports; the figures printed.

Exit code: 0 when verified, 1 when a check failed, 2 for bad flags or a scenario this server cannot
run (merchant-load without the settlement API), 3 when the run itself broke (a server or Locust that
did not start). ``--target URL`` uses a server someone else started: pass its ``--data-dir`` (the
operator's key, the ledger's signing key) and ``--database-url`` for the verification.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from ledger.db import create_engine
from ledger.keys import read_signing_key
from loadtests import report, server
from loadtests.seed import OPERATOR_ID, SeedPlan, SeedResult, seed
from loadtests.verify import Verification, verify_run
from service.client import LedgerClient
from service.config import Settings

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SCENARIOS = {
    "hot-transfer": ["HotTransferUser"],
    "operator": ["HotTransferUser", "OperatorUser"],
    "merchant-load": ["MerchantLoadUser", "OperatorUser"],
}
OPERATOR_USERS = {"merchant-load": 1}  # the operator scenario takes its operators by weight
PAYMENT_SCENARIOS = frozenset({"merchant-load"})
SCENARIO_ROUTES = {"merchant-load": "/v1/payments"}
LOCUST_STOP_TIMEOUT_S = 10
LOCUST_EXTRA_S = 120  # how long past --duration a Locust run may take before it is stopped
EXIT_VERIFY_FAILED, EXIT_USAGE, EXIT_BROKEN = 1, 2, 3


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests run", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--users", type=int, default=20, help="concurrent Locust users (default 20)")
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second (default 10)")
    parser.add_argument("--duration", default="60s", help="Locust --run-time of the scenario (default 60s)")
    parser.add_argument("--baseline-duration", help="of the baseline run (default: --duration; 0 skips it)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--workers", type=int, default=1, help="ledger serve worker processes (PostgreSQL for >1)")
    parser.add_argument("--locust-workers", type=int, default=0, help="Locust workers under a master (0: one process)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the reports (created)")
    parser.add_argument("--target", help="the URL of a server someone else started (no init, no serve)")
    parser.add_argument("--data-dir", type=Path, help="with --target: its data directory (operator.key)")
    parser.add_argument("--database-url", help="with --target: its database, for the verification")
    parser.add_argument("--wallets", type=int, default=2_000, help="seeded personal wallets (default 2,000)")
    parser.add_argument("--institutions", type=int, default=2, help="seeded HK institutions (default 2)")
    parser.add_argument("--merchants", type=int, help="seeded merchants (default 1; merchant-load 200)")
    parser.add_argument("--funding", default="1000.00", help="per wallet (default 1000.00)")
    parser.add_argument("--hot-share", type=float, default=0.3, help="transfers into the hot merchant (0.3)")
    parser.add_argument("--refusal-share", type=float, default=0.02, help="requests meant to be refused (0.02)")
    parser.add_argument("--refund-share", type=float, default=0.05, help="merchant-load: payments refunded (0.05)")
    parser.add_argument("--seed-only", action="store_true", help="seed, report the time, stop (no Locust)")
    args = parser.parse_args(argv)
    if args.database == "sqlite" and args.workers > 1 and not args.target:
        parser.error("--workers > 1 needs --database postgresql (SQLite has one writer at a time)")
    if args.target and not args.data_dir:
        parser.error("--target needs --data-dir (its operator.key and ledger-signing.key)")
    if min(args.users, args.wallets, args.institutions, args.workers) < 1 or args.spawn_rate <= 0:
        parser.error("--users, --wallets, --institutions, --workers and --spawn-rate must be positive")
    if args.merchants is None:
        args.merchants = 200 if args.scenario == "merchant-load" else 1
    return args


def duration_s(text: str) -> float:
    """Locust's run-time syntax (``90``, ``60s``, ``2m``, ``1h30m``) in seconds."""
    if text.isdigit():
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if parts is None or not any(parts.groups()):
        raise ValueError(f"not a duration: {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in parts.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.target:
        data_dir = args.data_dir.resolve()
        url = args.database_url or Settings.from_env({"LEDGER_DATA_DIR": str(data_dir)}).database_url
        ledger = server.FreshLedger(data_dir, url)
        return _run_against(args, out, ledger, args.target.rstrip("/"), None)
    admin_url = os.environ.get("LEDGER_LOADTEST_POSTGRES_URL", server.POSTGRES_ADMIN_URL_DEFAULT)
    try:
        ledger = server.fresh_ledger(out / "ledger-data", args.database, admin_url)
    except OSError as error:
        print(f"cannot make a fresh {args.database} database: {error}", file=sys.stderr)
        return EXIT_BROKEN
    try:
        server.ledger_init(ledger, out / "server.log")
        print(f"ledger initialised: {ledger.database_url}")
        with server.running_server(ledger, args.workers, out / "server.log") as serving:
            print(f"ledger serve: {serving.url}, {args.workers} worker(s), pids {serving.pids}")
            return _run_against(args, out, ledger, serving.url, serving)
    finally:
        server.drop(ledger)


def _run_against(
    args: argparse.Namespace, out: Path, ledger: server.FreshLedger, url: str, serving: server.Server | None
) -> int:
    needed = SCENARIO_ROUTES.get(args.scenario)
    if needed is not None and needed not in _server_paths(url):
        print(
            f"{args.scenario} needs the settlement API ({needed}), which this server does not have "
            f"(its /openapi.json lists no {needed}); run hot-transfer or operator instead",
            file=sys.stderr,
        )
        return EXIT_USAGE
    plan = SeedPlan(args.scenario, args.wallets, args.institutions, args.merchants, args.funding)
    operator_key = read_signing_key(ledger.operator_key_path)
    seeded = asyncio.run(seed(url, operator_key, plan))
    seed_path = out / "seed.json"
    seeded.write(seed_path)
    if args.seed_only:
        _write_json(out / "seed-timing.json", {"wallets": args.wallets, "seconds": seeded.seconds})
        return 0
    log_dir = out / "requests"
    log_dir.mkdir(exist_ok=True)
    for old in log_dir.glob("requests-*.csv"):
        old.unlink()
    environment = server.child_environment(
        LOADTEST_SEED_FILE=str(seed_path),
        LOADTEST_LOG_DIR=str(log_dir),
        LOADTEST_HOT_SHARE=str(args.hot_share),
        LOADTEST_REFUSAL_SHARE=str(args.refusal_share),
        LOADTEST_REFUND_SHARE=str(args.refund_share),
        LOADTEST_WINDOW_CLOSE_AFTER_S=str(duration_s(args.duration) / 2),
    )
    baseline_duration = args.baseline_duration or args.duration
    baseline = None
    if duration_s(baseline_duration) > 0:
        print(f"baseline: {args.users} users on GET /healthz for {baseline_duration}")
        _locust(args, url, ["BaselineUser"], baseline_duration, out / "baseline", environment)
        baseline = report.figures(out / "baseline")
    print(f"scenario {args.scenario}: {args.users} users for {args.duration}")
    # Only for the scenario: a fixed count of a class the baseline does not run upsets its stats.
    environment["LOADTEST_OPERATOR_USERS"] = str(OPERATOR_USERS.get(args.scenario, 0))
    _locust(args, url, SCENARIOS[args.scenario], args.duration, out / "locust", environment)
    batches = None
    if args.scenario in PAYMENT_SCENARIOS:
        batches = asyncio.run(settlement_batches(url, operator_key))
        print(f"closed the open window; {len(batches)} settlement batches read")
    if serving is not None:
        code = serving.stop()  # drains: every acknowledged request is committed before we look
        print(f"ledger serve stopped (exit {code})")
    verification = asyncio.run(_verify(ledger, log_dir, seeded, batches))
    return _finish(args, out, baseline, verification)


def _server_paths(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as response:
        return set(json.load(response)["paths"])


def _locust(
    args: argparse.Namespace, url: str, classes: list[str], run_time: str, prefix: Path, environment: dict[str, str]
) -> None:
    common = ["-f", str(LOCUSTFILE), "--loglevel", "WARNING"]
    command = [
        sys.executable, "-m", "locust", *common, "--headless", "--host", url,
        "--users", str(args.users), "--spawn-rate", str(args.spawn_rate), "--run-time", run_time,
        "--stop-timeout", str(LOCUST_STOP_TIMEOUT_S), "--csv", str(prefix), "--html", f"{prefix}.html",
        "--exit-code-on-error", "0",
    ]  # fmt: skip
    workers: list[subprocess.Popen[bytes]] = []
    if args.locust_workers > 0:
        port = server.free_port()
        command += ["--master", "--master-bind-host", server.HOST, "--master-bind-port", str(port)]
        command += ["--expect-workers", str(args.locust_workers)]
    command += classes
    bound_s = duration_s(run_time) + LOCUST_STOP_TIMEOUT_S + LOCUST_EXTRA_S
    master = subprocess.Popen(command, env=environment)
    try:
        for _ in range(args.locust_workers):
            worker = [sys.executable, "-m", "locust", *common, "--worker", "--master-host", server.HOST]
            workers.append(subprocess.Popen([*worker, "--master-port", str(port)], env=environment))
        code = master.wait(timeout=bound_s)
    finally:
        for process in [master, *workers]:
            if process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
            if process.poll() is None:
                process.kill()
                process.wait()
    if code not in (0, 1) or not (prefix.parent / f"{prefix.name}_stats.csv").exists():
        raise SystemExit(f"Locust failed (exit {code}): no {prefix.name}_stats.csv")


async def settlement_batches(url: str, operator_key: SigningKey) -> dict[int, list[dict[str, Any]]]:
    """Close the open window (so that every payment of the run is in a closed window's batch), then
    read every closed window's batch as the operator: window id -> its ``bilateral`` obligations."""
    async with LedgerClient(url, key_id=OPERATOR_ID, signing_key=operator_key, timeout_s=60.0) as operator:
        windows = await _all_windows(operator)
        for window in windows:
            if window["status"] == "open":
                await operator.post(f"/v1/settlement/windows/{window['id']}/close")
        batches = {}
        for window in windows:
            batch = (await operator.get(f"/v1/settlement/batches/{window['id']}")).data
            batches[int(window["id"])] = batch["bilateral"]
        return batches


async def _all_windows(operator: LedgerClient) -> list[dict[str, Any]]:
    windows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 500} | ({"cursor": cursor} if cursor else {})
        page = (await operator.get("/v1/settlement/windows", params)).data
        windows += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return windows


async def _verify(
    ledger: server.FreshLedger, log_dir: Path, seeded: SeedResult, batches: dict[int, list[dict[str, Any]]] | None
) -> Verification:
    engine = create_engine(ledger.database_url)
    try:
        return await verify_run(
            engine, log_dir, seeded.institutions, data_dir=ledger.data_dir, database_url=ledger.database_url,
            batches=batches, acquirers=[seeded.acquirer],
        )  # fmt: skip
    finally:
        await engine.dispose()


def _finish(args: argparse.Namespace, out: Path, baseline: report.Figures | None, verification: Verification) -> int:
    figures = report.figures(out / "locust")
    summary = {
        "scenario": args.scenario,
        "database": args.database if not args.target else "target",
        "workers": args.workers,
        "users": args.users,
        "duration": args.duration,
        "locust_workers": args.locust_workers,
        "requests": figures.requests,
        "failures_unexpected": figures.failures,
        "rps": round(figures.rps, 1),
        "p50_ms": figures.p50_ms,
        "p95_ms": figures.p95_ms,
        "p99_ms": figures.p99_ms,
        "baseline_rps": round(baseline.rps, 1) if baseline else None,
        "rps_over_baseline": round(figures.rps / baseline.rps, 3) if baseline and baseline.rps else None,
        "baseline": asdict(baseline) if baseline else None,
        "verified": verification.ok,
        "verification": verification.as_json(),
        "endpoints": report.per_endpoint(out / "locust"),
    }
    _write_json(out / "summary.json", summary)
    title = f"{args.scenario}: {args.users} users, {args.database}, {args.workers} server worker(s)"
    report.chart(out / "locust", out / "baseline" if baseline else None, out / "chart.png", title)
    _print_summary(summary, verification, out)
    return 0 if verification.ok else EXIT_VERIFY_FAILED


def _print_summary(summary: dict, verification: Verification, out: Path) -> None:
    baseline = summary["baseline_rps"]
    ratio = f" = {summary['rps_over_baseline']:.2f} x baseline {baseline:,.0f}/s" if baseline else ""
    print(
        f"\n{summary['scenario']}: {summary['requests']:,} requests, {summary['rps']:,.0f}/s{ratio}; "
        f"p50 {summary['p50_ms']:.0f} ms, p95 {summary['p95_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms; "
        f"unexpected failures {summary['failures_unexpected']}"
    )
    for name, check in verification.checks.items():
        print(f"  {'ok  ' if check.ok else 'FAIL'} {name}: {check.detail}")
        for problem in check.problems[:5]:
            print(f"       {problem}")
    verdict = "VERIFIED" if verification.ok else "NOT VERIFIED"
    print(f"{verdict}; reports in {out} (summary.json, chart.png, locust.html, locust_stats.csv)")


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
