"""Where console handlers find what the console's cleanup context made, and a request's session."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from service.console.audit_runs import AuditRuns
from service.console.auth import ConsoleAuth, ConsoleSession
from settlement.windows import WindowBook

CONSOLE_PATH_PREFIX = "/console"


@dataclass(frozen=True, slots=True)
class Console:
    auth: ConsoleAuth
    windows: WindowBook
    audit_runs: AuditRuns


CONSOLE_KEY = web.AppKey("console", Console)
# Set by ``operator_only`` before a console handler runs.
SESSION_KEY = web.RequestKey("console_session", ConsoleSession)
SESSION_TOKEN_KEY = web.RequestKey("console_session_token", str)
