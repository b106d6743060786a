"""Operator sessions: a signed login statement is redeemed once for a short session; every console
page and action looks its session up, and every POST must carry the session's CSRF token.

Sessions are rows in the database, found by the SHA-256 of the cookie's random token, rather than
signed stateless cookies: every ``ledger serve`` worker shares the database and nothing else, a
session can be ended for good (sign out, or deleting its row), expiry is the server's, and no
secret has to be derived for it (the ledger's signing key signs the audit chain and nothing else;
a cookie MAC under a key derived from it would tie the sessions to a key that must never rotate
casually). A stolen copy of the table holds hashes, which open nothing. The cost is one primary
key lookup per console request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db import read_transaction
from service.console.tables import console_login_nonces, console_sessions
from service.console.tokens import CLOCK_SKEW_S_MAX, LOGIN_TTL_S, LoginStatement
from wallets.errors import NotFound
from wallets.model import InstitutionKind
from wallets.service import WalletBook

SESSION_TTL_S = 30 * 60
COOKIE_NAME = "szhk_console"
SESSION_TOKEN_BYTES = 32
CSRF_FIELD = "csrf_token"
_US = 1_000_000
NONCE_KEEP_MARGIN_US = 60 * _US


class LoginRefused(Exception):
    """A login statement that opens no session; the message says why, for the operator."""


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    operator_id: str
    csrf_token: str
    expires_at_us: int


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_matches(session: ConsoleSession, offered: object) -> bool:
    """The synchronizer-token check, in constant time."""
    return isinstance(offered, str) and hmac.compare_digest(offered.encode(), session.csrf_token.encode())


class ConsoleAuth:
    def __init__(self, engine: AsyncEngine, wallets: WalletBook, clock: Callable[[], int]) -> None:
        self.engine = engine
        self.wallets = wallets
        self.clock = clock

    async def redeem(self, statement: LoginStatement, signature: bytes) -> tuple[str, ConsoleSession]:
        """Open a session for a statement signed by an operator's active key, once per nonce.
        Answers the cookie's token (never stored) and the session."""
        now_us = self.clock()
        now_s = now_us // _US
        if statement.expires_at_s <= now_s:
            raise LoginRefused("this login link or challenge has expired: make a new one")
        if statement.expires_at_s > now_s + LOGIN_TTL_S + CLOCK_SKEW_S_MAX:
            raise LoginRefused(f"a login statement may live at most {LOGIN_TTL_S // 60} minutes")
        try:
            institution = await self.wallets.get_institution(statement.operator_id)
        except NotFound:
            raise LoginRefused("only operators may sign in to the console") from None
        if institution.kind is not InstitutionKind.OPERATOR:
            raise LoginRefused("only operators may sign in to the console")
        # The signature before the nonce: nobody without the key can use up an operator's nonce.
        if not statement.signed_by(signature, institution.active_keys):
            raise LoginRefused("the signature does not verify under the operator's registered keys")
        token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
        session = ConsoleSession(
            institution.id, secrets.token_urlsafe(SESSION_TOKEN_BYTES), now_us + SESSION_TTL_S * _US
        )
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    console_login_nonces.insert().values(
                        nonce=statement.nonce,
                        operator_id=institution.id,
                        expires_at_us=statement.expires_at_s * _US,
                        used_at_us=now_us,
                    )
                )
                await conn.execute(
                    console_sessions.insert().values(
                        token_hash=token_hash(token),
                        operator_id=session.operator_id,
                        csrf_token=session.csrf_token,
                        created_at_us=now_us,
                        expires_at_us=session.expires_at_us,
                    )
                )
        except IntegrityError:  # the nonce's primary key: redeemed before, on this worker or another
            raise LoginRefused("this login link was used already: make a new one") from None
        await self.purge(now_us)
        return token, session

    async def find(self, token: str | None) -> ConsoleSession | None:
        """The live session of a cookie's token, or None (absent, unknown, forged or expired)."""
        if not token or len(token) > 128:
            return None
        async with read_transaction(self.engine) as conn:
            row = (
                await conn.execute(
                    sa.select(console_sessions)
                    .where(console_sessions.c.token_hash == token_hash(token))
                    .where(console_sessions.c.expires_at_us > self.clock())
                )
            ).first()
        return None if row is None else ConsoleSession(row.operator_id, row.csrf_token, row.expires_at_us)

    async def end(self, token: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(console_sessions.delete().where(console_sessions.c.token_hash == token_hash(token)))

    async def purge(self, now_us: int) -> None:
        """Forget expired sessions, and nonces whose statements have expired (their time refuses
        them now, with a margin for a redeem that checked the time just before). Both deletes use
        the ``expires_at_us`` indexes."""
        async with self.engine.begin() as conn:
            await conn.execute(console_sessions.delete().where(console_sessions.c.expires_at_us <= now_us))
            await conn.execute(
                console_login_nonces.delete().where(
                    console_login_nonces.c.expires_at_us <= now_us - NONCE_KEEP_MARGIN_US
                )
            )
