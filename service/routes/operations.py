"""Operations endpoints, unsigned: liveness, readiness and Prometheus metrics.

``/healthz`` says the process answers; ``/readyz`` says this instance can take traffic (its
database answers within a short timeout and its batcher is alive), so that a load balancer drains
an instance whose writer stopped or that is shutting down; ``/metrics`` is the app's own registry.
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa
from aiohttp import web

from ledger.db import read_transaction
from service.keys import BATCHER_KEY, LEDGER_KEY, METRICS_KEY
from service.openapi import RawResponse, RouteTable
from service.problems import ProblemError
from service.schemas import HealthStatus, ReadinessStatus

log = logging.getLogger(__name__)

routes = RouteTable(tag="operations")

# Long enough for a pool connect on a healthy network, short enough to answer a probe in time.
READINESS_DATABASE_TIMEOUT_S = 2.0


@routes.route("GET", "/healthz", summary="The process is up", responses={200: HealthStatus})
async def healthz(_request: web.Request) -> web.Response:
    return web.json_response(HealthStatus().model_dump(mode="json"))


@routes.route(
    "GET",
    "/readyz",
    summary="The database answers and the batcher takes work",
    responses={200: ReadinessStatus},
    problems=["unavailable"],
)
async def readyz(request: web.Request) -> web.Response:
    failures: list[str] = []
    database = await _database_check(request)
    if database != "ok":
        failures.append(f"database: {database}")
    batcher = request.app[BATCHER_KEY]
    if not batcher.alive:
        failures.append("batcher: " + ("closing" if batcher.closing else "not running"))
    if failures:
        raise ProblemError("unavailable", "not ready: " + "; ".join(failures), 503)
    return web.json_response(ReadinessStatus(checks={"database": "ok", "batcher": "ok"}).model_dump(mode="json"))


async def _database_check(request: web.Request) -> str:
    engine = request.app[LEDGER_KEY].engine
    try:
        async with asyncio.timeout(READINESS_DATABASE_TIMEOUT_S):
            # A read transaction: on SQLite a plain connection would BEGIN IMMEDIATE and queue
            # behind the batcher's write lock.
            async with read_transaction(engine) as conn:
                await conn.execute(sa.text("SELECT 1"))
    except TimeoutError:
        return f"no answer within {READINESS_DATABASE_TIMEOUT_S} s"
    except Exception as error:  # any failure to reach the database is "not ready", not a 500
        log.warning("readiness: database check failed: %r", error)
        return f"unreachable ({type(error).__name__})"
    return "ok"


@routes.route(
    "GET",
    "/metrics",
    summary="Prometheus metrics of this instance",
    responses={200: RawResponse("text/plain", "Prometheus text exposition format 0.0.4")},
)
async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})
