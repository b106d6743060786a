"""The login statement an operator signs to open a console session (pure: no I/O, no clock).

A statement is one line of text, ``szhk-console-login-v1:<operator id>:<expires, unix s>:<nonce>``,
signed with an Ed25519 key the operator has registered. ``ledger console-login`` signs one with
``<data dir>/operator.key`` and prints it as a link (statement ``.`` base64url signature); the
sign-in page shows one as a challenge, to be signed with ``ledger console-sign`` where the key is.

Any worker process can check a statement with nothing but the database: the signature against the
operator's active keys, the expiry against its clock, and the nonce against the used ones.

The fixed prefix keeps these signatures apart from the operator's RFC 9421 request signatures
(whose signature base starts with ``"@method"``), and ``console-sign`` signs nothing that does not
parse as a statement, so the tool cannot be used to make a request signature.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

STATEMENT_DOMAIN = "szhk-console-login-v1"
# A login link or challenge is good for at most this long (the issue: 5 minutes).
LOGIN_TTL_S = 300
# A statement may expire at most this much later than now + LOGIN_TTL_S (clocks differ a little).
CLOCK_SKEW_S_MAX = 30
NONCE_BYTES = 16
SIGNATURE_BYTES = 64
TOKEN_LENGTH_MAX = 512
_STATEMENT = re.compile(
    rf"^{re.escape(STATEMENT_DOMAIN)}:(?P<operator>[a-z0-9](?:[a-z0-9-]{{0,62}}[a-z0-9])?)"
    r":(?P<expires>[0-9]{1,12}):(?P<nonce>[0-9a-f]{32})$"
)


class MalformedToken(ValueError):
    """The text is no login statement, or no statement with a signature of the right shape."""


@dataclass(frozen=True, slots=True)
class LoginStatement:
    operator_id: str
    expires_at_s: int
    nonce: str

    @classmethod
    def new(cls, operator_id: str, now_s: int, ttl_s: int = LOGIN_TTL_S) -> LoginStatement:
        return cls(operator_id, now_s + ttl_s, secrets.token_hex(NONCE_BYTES))

    @classmethod
    def parse(cls, text: str) -> LoginStatement:
        match = _STATEMENT.match(text.strip())
        if match is None:
            raise MalformedToken(f"not a console login statement ({STATEMENT_DOMAIN}:OPERATOR:EXPIRES:NONCE)")
        return cls(match["operator"], int(match["expires"]), match["nonce"])

    def text(self) -> str:
        return f"{STATEMENT_DOMAIN}:{self.operator_id}:{self.expires_at_s}:{self.nonce}"

    def sign(self, key: SigningKey) -> bytes:
        return key.sign(self.text().encode("ascii")).signature

    def signed_by(self, signature: bytes, public_keys: list[bytes]) -> bool:
        """Whether ``signature`` over this statement verifies under any of ``public_keys``."""
        for public_key in public_keys:
            try:
                VerifyKey(public_key).verify(self.text().encode("ascii"), signature)
                return True
            except (BadSignatureError, ValueError):
                continue
        return False


def signature_text(signature: bytes) -> str:
    return base64.urlsafe_b64encode(signature).decode("ascii").rstrip("=")


def parse_signature(text: str) -> bytes:
    """A base64 (standard or URL-safe, padded or not) Ed25519 signature of 64 bytes."""
    cleaned = "".join(text.split()).replace("+", "-").replace("/", "_").rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raise MalformedToken("the signature is not base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise MalformedToken(f"an Ed25519 signature is {SIGNATURE_BYTES} bytes, not {len(raw)}")
    return raw


def login_token(statement: LoginStatement, key: SigningKey) -> str:
    """What a login link carries: the statement, a dot, the signature in base64url."""
    return f"{statement.text()}.{signature_text(statement.sign(key))}"


def parse_login_token(token: str) -> tuple[LoginStatement, bytes]:
    if len(token) > TOKEN_LENGTH_MAX:
        raise MalformedToken("the login token is too long")
    statement_text, dot, signature = token.strip().rpartition(".")
    if not dot:
        raise MalformedToken("a login token is STATEMENT.SIGNATURE")
    return LoginStatement.parse(statement_text), parse_signature(signature)
