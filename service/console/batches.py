"""THE PLACE FOR THE SETTLEMENT BATCH PAGES (not built yet: batches arrive with
``settlement.batches.SettlementDesk``, being written on main).

When they land, this module gets, on the ``routes`` table below (``setup_console`` mounts it):

- ``GET /console/settlement/batches/{id}``: ``templates/batch.html`` (its blocks are already
  there): per-currency gross, net and liquidity saved; each participant's net position as an SVG
  bar chart (the ``net_position_chart`` macro in ``templates/_charts.html``, which the window page
  already uses on the window's live positions); the instructions; the status history;
- ``GET/POST /console/settlement/batches/{id}/settle`` and ``/export``: a confirmation page, then
  the action; the POSTs go through ``operator_only(csrf=True)`` as the window close does;
- on the window page, the ``batch`` block of ``templates/window.html`` links a closed window to its
  batch.

Reads page through their indexes as the window pages do (``service.console.views``).
"""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
