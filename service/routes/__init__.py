"""Route modules, one per resource, each with its own ``RouteTable``. ``create_app`` mounts every
table listed in ``ROUTE_TABLES``; a new resource module adds its table here."""

from __future__ import annotations

from service.openapi import RouteTable
from service.routes import audit, caller, fx, institutions, operations, payments, settlement, transfers, wallets

ROUTE_TABLES: tuple[RouteTable, ...] = (
    operations.routes,
    institutions.routes,
    wallets.routes,
    transfers.routes,
    fx.routes,
    payments.routes,
    settlement.routes,
    audit.routes,
    caller.routes,
)
