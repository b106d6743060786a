"""``python -m loadtests capacity``: the server's own capacity, measured with wrk (C), not Locust.

    python -m loadtests capacity --database postgresql --out capacity-out [--duration 10] [--connections 64]

Locust is Python and, on two cores, can be the ceiling itself; wrk is not. For one and two server
workers (two on PostgreSQL only), on a fresh ledger seeded as ``run`` seeds it, wrk replays
pre-signed requests (``capacity.lua``: each request once, fresh transfer ids, signed moments before
the run) against three endpoints:

- ``trivial``: ``GET /healthz`` (no signature, no database);
- ``signature_only``: ``GET /v1/whoami``, signed (RFC 9421 verification, a cached key lookup, a
  pydantic answer; no ledger work);
- ``transfer``: ``POST /v1/transfers``, signed with a Content-Digest, committed by the batcher.

Writes ``DIR/capacity.json``: a list of ``{endpoint, workers, rps, p50_ms, p99_ms, requests,
non_2xx, socket_errors}``. With ``--profile`` (py-spy, ``pip install py-spy``), the transfer run on
one worker is also sampled: ``DIR/profile-transfer.svg`` (a flame graph) and
``DIR/profile-transfer.json`` (where the samples fall: signature, JSON, pydantic, the batcher, the
database driver, aiohttp…). Needs the Debian package ``wrk`` (``apt install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from ledger.ids import uuid7
from ledger.keys import read_signing_key
from loadtests import server
from loadtests.seed import SeedPlan, SeedResult, key_from_text, seed
from service.auth import sign_request
from service.client import encode_json_body

LUA_SCRIPT = Path(__file__).resolve().parent / "capacity.lua"
ENDPOINTS = ("trivial", "signature_only", "transfer")
WRK_TIMEOUT_EXTRA_S = 60
SIGNED_POOL_SIGNATURE_ONLY = 5_000  # whoami carries no id: a pool replayed round-robin is the same load
TRANSFER_RATE_MAX = 6_000  # transfers/s to prepare for; a run that sends more wraps (flagged)
AMOUNT = "0.01"
PROFILE_RATE_HZ = 200
# Where a sampled stack's time goes, by the first matching frame from the top (the innermost).
PROFILE_BUCKETS = (
    ("signature (RFC 9421, Ed25519, digest)", ("http_message_signatures", "service/auth.py", "nacl", "http_sf")),
    ("database driver (asyncpg, aiosqlite)", ("asyncpg", "aiosqlite", "sqlite3")),
    ("SQLAlchemy", ("sqlalchemy",)),
    ("ledger core (batcher, rules, store, audit)", ("ledger/",)),
    ("wallets layer", ("wallets/",)),
    ("pydantic", ("pydantic",)),
    ("JSON", ("json/",)),
    ("service (routes, middlewares, metrics)", ("service/", "prometheus_client")),
    ("aiohttp (HTTP parsing, responses)", ("aiohttp", "yarl", "multidict")),
    ("asyncio event loop", ("asyncio", "uvloop", "selectors")),
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: leave the cores to the server)")
    parser.add_argument("--workers", default="1,2", help="server worker counts to measure (default 1,2)")
    parser.add_argument("--wallets", type=int, default=10_000, help="seeded wallets (default 10,000)")
    parser.add_argument("--profile", action="store_true", help="py-spy the transfer run on one worker")
    args = parser.parse_args(argv)
    args.worker_counts = [int(count) for count in args.workers.split(",")]
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("capacity needs wrk: apt install wrk (Debian)", file=sys.stderr)
        return 2
    if args.profile and shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
        print("--profile needs py-spy: pip install py-spy", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for workers in args.worker_counts:
        if workers > 1 and args.database == "sqlite":
            print(f"skipping {workers} workers: SQLite serves one worker (one writer at a time)")
            continue
        results += _measure(args, out, workers)
        (out / "capacity.json").write_text(json.dumps(results, indent=2) + "\n")
    _print_table(results)
    return 0


def _measure(args: argparse.Namespace, out: Path, workers: int) -> list[dict]:
    admin_url = server.POSTGRES_ADMIN_URL_DEFAULT
    ledger = server.fresh_ledger(out / f"ledger-data-{workers}", args.database, admin_url)
    results = []
    try:
        server.ledger_init(ledger, out / "server.log")
        with server.running_server(ledger, workers, out / "server.log") as serving:
            plan = SeedPlan("hot-transfer", args.wallets, institutions=1, merchants=1)
            seeded = asyncio.run(seed(serving.url, read_signing_key(ledger.operator_key_path), plan))
            for endpoint in ENDPOINTS:
                requests_file = out / f"requests-{endpoint}.tsv"
                prepared = _prepare(endpoint, seeded, args, requests_file)
                profile = args.profile and endpoint == "transfer" and workers == 1
                spy = _start_profile(serving.pids[0], out, args.duration) if profile else None
                measured = _wrk(serving.url, requests_file, args)
                if spy is not None:
                    _finish_profile(spy, out)
                wrapped = endpoint == "transfer" and measured["requests"] > prepared
                row = {"endpoint": endpoint, "workers": workers, "database": args.database} | _figures(measured)
                row["wrapped"] = wrapped
                note = " (WRAPPED: replays)" if wrapped else ""
                print(
                    f"{endpoint} on {workers} worker(s): {row['rps']:,.0f}/s, p50 {row['p50_ms']} ms, "
                    f"p99 {row['p99_ms']} ms, non-2xx {row['non_2xx']}{note}"
                )
                results.append(row)
                requests_file.unlink()
    finally:
        server.drop(ledger)
    return results


def _prepare(endpoint: str, seeded: SeedResult, args: argparse.Namespace, path: Path) -> int:
    """Write the requests wrk replays, signed now (valid for 300 s): one per line."""
    lines = []
    if endpoint == "trivial":
        lines.append("GET\t/healthz\t\t")
    else:
        institution_id = next(iter(seeded.wallets))
        key = key_from_text(seeded.institutions[institution_id])
        wallets = seeded.wallets[institution_id]
        count = SIGNED_POOL_SIGNATURE_ONLY if endpoint == "signature_only" else TRANSFER_RATE_MAX * args.duration
        for _ in range(count):
            if endpoint == "signature_only":
                method, path_text, body = "GET", "/v1/whoami", None
            else:
                source, target = random.sample(wallets, 2)
                payload = {
                    "id": str(uuid7()),
                    "source_wallet_id": source,
                    "target_wallet_id": target,
                    "amount": AMOUNT,
                    "currency": seeded.currency,
                }
                method, path_text, body = "POST", "/v1/transfers", encode_json_body(payload)
            headers = {"Content-Type": "application/json"} if body else {}
            headers |= sign_request(method, path_text, body, key_id=institution_id, signing_key=key)
            header_text = "\x1f".join(f"{name}: {value}" for name, value in headers.items())
            lines.append(f"{method}\t{path_text}\t{header_text}\t{body.decode() if body else ''}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def _wrk(url: str, requests_file: Path, args: argparse.Namespace) -> dict:
    command = [
        "wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s", "--latency",
        "-s", str(LUA_SCRIPT), url, "--", str(requests_file), str(args.threads),
    ]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + WRK_TIMEOUT_EXTRA_S, check=False
    )
    found = re.search(r"CAPACITY_JSON (\{.*\})", completed.stdout)
    if completed.returncode != 0 or found is None:
        raise SystemExit(
            f"wrk failed (exit {completed.returncode}): {completed.stdout[-2000:]} {completed.stderr[-2000:]}"
        )
    return json.loads(found.group(1))


def _figures(measured: dict) -> dict:
    seconds = measured["duration_us"] / 1e6
    return {
        "rps": round(measured["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": round(measured["p50_us"] / 1000, 2),
        "p99_ms": round(measured["p99_us"] / 1000, 2),
        "requests": measured["requests"],
        "non_2xx": measured["non_2xx"],
        "socket_errors": measured["socket_errors"],
    }


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else "py-spy"


def _start_profile(pid: int, out: Path, duration_s: int) -> list[subprocess.Popen]:
    common = [
        "--pid",
        str(pid),
        "--duration",
        str(max(1, duration_s - 1)),
        "--rate",
        str(PROFILE_RATE_HZ),
        "--nonblocking",
    ]
    outputs = (["-o", str(out / "profile-transfer.svg")], ["--format", "raw", "-o", str(out / "profile-transfer.txt")])
    return [
        subprocess.Popen([_py_spy(), "record", *common, *output], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for output in outputs
    ]


def _finish_profile(spies: list[subprocess.Popen], out: Path) -> None:
    for spy in spies:
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
    collapsed = out / "profile-transfer.txt"
    if collapsed.exists():
        summary = summarise_profile(collapsed.read_text())
        (out / "profile-transfer.json").write_text(json.dumps(summary, indent=2) + "\n")


def summarise_profile(collapsed: str) -> dict:
    """Shares of samples by bucket (the innermost frame that names one) and the top own-time frames."""
    buckets: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        buckets[_bucket(frames)] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "buckets": {name: round(100 * count / total, 1) for name, count in buckets.most_common()},
        "top_own_frames": [
            {"frame": frame, "percent": round(100 * count / total, 1)} for frame, count in own.most_common(25)
        ],
    }


def _bucket(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, markers in PROFILE_BUCKETS:
            if any(marker in frame for marker in markers):
                return name
    return "other"


def _print_table(results: list[dict]) -> None:
    print(f"\n{'endpoint':<16}{'workers':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for row in results:
        print(
            f"{row['endpoint']:<16}{row['workers']:>8}{row['rps']:>10,.0f}{row['p50_ms']:>9}{row['p99_ms']:>9}"
            f"{row['non_2xx']:>9}"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
