"""Prometheus metrics of one application, in a registry of its own.

Not the process-wide default registry: two apps in one process (tests, several workers' apps)
would otherwise share counters, and a second registration of a name fails. Request series are
labelled by route *template* (``/v1/wallets/{id}``), never by the raw path, so that the number of
series stays bounded whatever clients send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ledger.batcher import Batcher

log = logging.getLogger(__name__)

# The label of requests that matched no route: each unknown path must not become a series.
UNMATCHED_ROUTE = "unmatched"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# generate_latest writes the classic text format; said here rather than imported, since the
# constant's name moved between prometheus-client releases.
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)


class _BatcherCollector(Collector):
    """Reads the batcher's state at scrape time; nothing to keep in step on the hot path."""

    def __init__(self, batcher_of: Callable[[], Batcher | None]) -> None:
        self._batcher_of = batcher_of

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        batcher = self._batcher_of()
        if batcher is None:  # before startup or after cleanup
            return
        yield GaugeMetricFamily(
            "ledger_batcher_queue_depth", "Transfer commands waiting for a batch.", value=batcher.queued
        )
        yield GaugeMetricFamily("ledger_batcher_alive", "1 while the batcher takes work.", value=int(batcher.alive))
        yield CounterMetricFamily(
            "ledger_batcher_batches_committed", "Batches committed since start.", value=batcher.batches_committed
        )
        yield GaugeMetricFamily(
            "ledger_batcher_batch_size_max_seen",
            "Largest batch committed since start.",
            value=batcher.batch_sizes_max_seen,
        )


class ServiceMetrics:
    """The app's metrics. Routes call :meth:`record_refusal` for money refused on business
    grounds (``insufficient_funds``, ``limit_exceeded``…), including per item of a batch; the
    middleware counts every problem response separately in ``ledger_http_problems_total``."""

    def __init__(self, batcher_of: Callable[[], Batcher | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ledger_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "ledger_http_request_duration_seconds",
            "Time to answer, by route template.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.problems = Counter(
            "ledger_http_problems", "Problem responses, by stable code.", ("code",), registry=self.registry
        )
        self.refusals = Counter(
            "ledger_refusals",
            "Business refusals of money movements, by stable code.",
            ("code",),
            registry=self.registry,
        )
        self.batch_sizes = Histogram(
            "ledger_batcher_batch_size",
            "Commands per committed batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_BatcherCollector(batcher_of))

    def observe_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(duration_s)

    def record_problem(self, code: str) -> None:
        self.problems.labels(code).inc()

    def record_refusal(self, code: str) -> None:
        self.refusals.labels(code).inc()

    def observe_batch(self, size: int) -> None:
        """The batcher's ``on_batch`` hook: one observation per committed batch."""
        self.batch_sizes.observe(size)

    def exposition(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, and its content type."""
        return generate_latest(self.registry), EXPOSITION_CONTENT_TYPE


def route_template(request: web.Request) -> str:
    """``/v1/wallets/{id}`` for a request to ``/v1/wallets/0190…``; UNMATCHED_ROUTE for no route."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return UNMATCHED_ROUTE
    resource = match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE
