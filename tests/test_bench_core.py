"""The benchmark itself runs and writes the documented JSON (a tiny run: this checks its shape and
that nothing failed, never its speed)."""

from __future__ import annotations

import json

import pytest
from conftest import POSTGRES_URL

from loadtests import bench_core

REQUIRED = {"backend", "scenario", "mode", "transfers_per_second", "p50_ms", "p99_ms"}


@pytest.mark.slow  # a benchmark: every case three times, about 10 s on both databases
async def test_a_tiny_benchmark_runs_every_case_verifies_the_chain_and_writes_the_documented_json(
    backend, database_url, tmp_path, monkeypatch
):
    # database_url applies the suite's PostgreSQL policy (skip locally, fail under CI) before the
    # benchmark makes databases of its own on the same server.
    monkeypatch.setattr(bench_core, "POSTGRES_URL", POSTGRES_URL)
    out = tmp_path / "bench.json"
    args = bench_core.parse_args(
        [
            "--backends",
            backend,
            "--transfers",
            "120",
            "--baseline-transfers",
            "12",
            "--accounts",
            "30",
            "--concurrency",
            "12",
            "--baseline-concurrency",
            "3",
            "--repeat",
            "3",
            "--json",
            str(out),
        ]
    )

    results = await bench_core.main_async(args)
    bench_core.write_json(args, results, bench_core._ratios(results))

    document = json.loads(out.read_text())
    cases = {(r["backend"], r["scenario"], r["mode"]) for r in document["results"]}
    assert cases == {(backend, scenario, mode) for scenario in ("uniform", "hot") for mode in ("batched", "baseline")}
    for result in document["results"]:
        assert REQUIRED <= result.keys()
        assert result["failed"] == 0 and result["transfers_per_second"] > 0
        assert 0 < result["p50_ms"] <= result["p99_ms"]
        runs = sorted(result["runs_transfers_per_second"])
        assert len(runs) == 3 and result["transfers_per_second"] == runs[1]
    names = {(ratio["name"], ratio.get("scenario")) for ratio in document["ratios"]}
    assert names == {("hot_over_uniform", None), ("batched_over_baseline", "uniform"), ("batched_over_baseline", "hot")}


def test_the_reported_run_is_the_median_by_throughput_and_carries_every_run():
    runs = [
        bench_core.RunResult("sqlite", "hot", "batched", 10, 1, 1.0, tps, 1.0, 2.0, 0, 1)
        for tps in (300.0, 100.0, 200.0, 400.0)
    ]
    median = bench_core._median_run(runs)
    assert median.transfers_per_second == 200.0  # the lower middle of an even count
    assert median.runs_transfers_per_second == [300.0, 100.0, 200.0, 400.0]


def test_repeat_must_be_positive():
    with pytest.raises(SystemExit):
        bench_core.parse_args(["--repeat", "0"])


@pytest.mark.slow  # spawns two writer processes per case
async def test_a_batched_run_can_be_split_over_two_writer_processes_and_every_transfer_succeeds(
    backend, database_url, tmp_path, monkeypatch
):
    monkeypatch.setattr(bench_core, "POSTGRES_URL", POSTGRES_URL)
    args = bench_core.parse_args(
        [
            "--backends",
            backend,
            "--modes",
            "batched",
            "--transfers",
            "101",
            "--accounts",
            "30",
            "--concurrency",
            "8",
            "--processes",
            "2",
            "--repeat",
            "1",
        ]
    )

    results = await bench_core.main_async(args)

    # Each case ran in two processes against one database and the chain verified afterwards.
    assert {(r.scenario, r.processes, r.failed, r.transfers) for r in results} == {
        ("uniform", 2, 0, 101),
        ("hot", 2, 0, 101),
    }
    for result in results:
        assert result.batches >= 2  # at least one batch per process


@pytest.mark.parametrize(
    "count, percent, rank", [(1, 50, 1), (5, 50, 3), (1001, 50, 501), (100, 99, 99), (200, 99, 198)]
)
def test_percentiles_are_nearest_rank(count, percent, rank):
    assert bench_core._percentile([float(n) for n in range(1, count + 1)], percent) == rank
