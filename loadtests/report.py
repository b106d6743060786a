"""Figures from Locust's CSV reports: the summary's numbers and the chart.

Locust writes ``<prefix>_stats.csv`` (one row per request name and an ``Aggregated`` row) and
``<prefix>_stats_history.csv`` (the aggregated figures every second or so). The chart shows the
scenario's throughput against the baseline's, and the scenario's p50 and p99 latency, over time.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path

AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class Figures:
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "N/A") else 0.0
    except ValueError:
        return 0.0


FINAL_SUFFIX = "_final_stats.csv"


def stats_rows(prefix: Path) -> list[dict[str, str]]:
    """The final figures: ``<prefix>_final_stats.csv`` that the locustfile writes as Locust quits,
    else Locust's own ``<prefix>_stats.csv``. Locust rewrites the latter once a second from a
    greenlet that a busy two-core machine may start late and never runs again before a short run
    ends, leaving the figures of its start (zero requests) on disk."""
    path = prefix.parent / f"{prefix.name}{FINAL_SUFFIX}"
    if not path.exists():
        path = prefix.parent / f"{prefix.name}_stats.csv"
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def figures(prefix: Path) -> Figures:
    """The aggregated row of a Locust run."""
    row = next((row for row in stats_rows(prefix) if row["Name"] == AGGREGATED), None)
    if row is None:
        raise ValueError(f"{prefix}_stats.csv has no {AGGREGATED} row: did Locust run?")
    return Figures(
        requests=int(_number(row["Request Count"])),
        failures=int(_number(row["Failure Count"])),
        rps=_number(row["Requests/s"]),
        p50_ms=_number(row["50%"]),
        p95_ms=_number(row["95%"]),
        p99_ms=_number(row["99%"]),
    )


def per_endpoint(prefix: Path) -> list[dict[str, object]]:
    return [
        {
            "name": row["Name"],
            "requests": int(_number(row["Request Count"])),
            "failures": int(_number(row["Failure Count"])),
            "rps": round(_number(row["Requests/s"]), 1),
            "p50_ms": _number(row["50%"]),
            "p99_ms": _number(row["99%"]),
        }
        for row in stats_rows(prefix)
        if row["Name"] != AGGREGATED
    ]


def history(prefix: Path) -> list[tuple[float, float, float, float]]:
    """(seconds since start, requests/s, p50 ms, p99 ms) of the aggregated history. Throughput is
    the change of the total request count between rows: Locust's own "Requests/s" column is a
    sliding window that lags by seconds, which hides most of a short run."""
    path = prefix.parent / f"{prefix.name}_stats_history.csv"
    rows = []
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            if row.get("Name") == AGGREGATED:
                numbers = (row["Timestamp"], row["Total Request Count"], row["50%"], row["99%"])
                rows.append(tuple(_number(value) for value in numbers))
    points = []
    for (before_s, before_count, _, _), (seconds, count, p50, p99) in itertools.pairwise(rows):
        elapsed_s = seconds - before_s
        if elapsed_s > 0:
            points.append((seconds - rows[0][0], (count - before_count) / elapsed_s, p50, p99))
    return points


def chart(scenario_prefix: Path, baseline_prefix: Path | None, path: Path, title: str) -> None:
    """Throughput (scenario and baseline) and p50/p99 latency over time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    scenario = history(scenario_prefix)
    baseline = history(baseline_prefix) if baseline_prefix is not None else []
    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    if scenario:
        seconds = [point[0] for point in scenario]
        throughput.plot(seconds, [point[1] for point in scenario], label="scenario requests/s", color="tab:blue")
        latency.plot(seconds, [point[2] for point in scenario], label="p50 ms", color="tab:green")
        latency.plot(seconds, [point[3] for point in scenario], label="p99 ms", color="tab:red")
    if baseline:
        throughput.plot(
            [point[0] for point in baseline],
            [point[1] for point in baseline],
            label="baseline (GET /healthz) requests/s",
            color="tab:gray",
            linestyle="--",
        )
    throughput.set_ylabel("requests/s")
    throughput.set_title(title)
    throughput.legend(loc="lower right")
    throughput.grid(alpha=0.3)
    latency.set_ylabel("latency, ms")
    latency.set_xlabel("seconds since the first users started")
    latency.legend(loc="upper right")
    latency.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
