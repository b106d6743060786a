"""Request signatures for the /v1 API: RFC 9421 HTTP Message Signatures (Ed25519) and RFC 9530 Content-Digest.

What the library does, and why this module wraps it rather than using its verifier as is:

- ``http-message-signatures`` builds the RFC 9421 signature base (component resolution, the
  ``@signature-params`` serialisation), creates the Content-Digest field and runs Ed25519 (through
  ``cryptography``). ``sign_request`` always goes through the library's ``HTTPMessageSigner``.
  Verification has a fast path: a request that covers exactly the contract's components
  (``@method``, ``@path``, ``@query`` when there is a query, ``content-digest`` when there is a
  body, in that order, no parameters) with only ``created``, ``keyid`` and ``alg``, a plain request
  target and one Content-Digest line has its signature base built here (``fast_signature_base``:
  a few lines of text) and checked with PyNaCl (libsodium); anything else goes to the library's
  ``HTTPMessageVerifier``, which stays the reference implementation that
  ``tests/test_auth_signatures.py`` checks the fast path against on many generated requests.
  Structured fields are parsed once, with ``http-sf``, the library's own parser.
- Its verifier is synchronous and its key resolver returns ONE key per key id. Institution keys live
  in the database (an async lookup) and an institution may have several active keys while it rotates.
  So ``verify_request`` parses Signature-Input first to learn the ``keyid``, awaits ``resolve_keys``,
  then runs the library once per key and accepts if any key verifies.
- Its verifier reports every failure as one ``InvalidSignature``, and checks time against the real
  clock with a 5 s future skew. The API needs stable codes (expired, unknown key, digest mismatch,
  invalid) and a 300 s window either way with an injectable clock for tests. So the policy checks run
  here first, each with its code, and the library is left the cryptographic check only (its own time
  check is switched off in ``_CryptoOnlyVerifier``).

Order of checks in ``verify_request`` (first failure wins): signature headers present and parseable
(``signature_missing``) → signature parameters: alg, keyid, created/expires (``signature_invalid``,
``signature_expired``) → Content-Digest against the body (``content_digest_mismatch``) → covered
components (``signature_invalid``) → key lookup (``unknown_key``) → Ed25519 over the signature base
(``signature_invalid``). The cheap checks come before the key lookup so that junk costs no database query.

Key rotation: keys are found by key id (the institution id), not by fingerprint, so a signature by a
retired key of an institution that still has other active keys answers ``signature_invalid`` (it is
indistinguishable from a forgery); ``unknown_key`` means the key id has no active key at all.

Cost (measured with ``timeit``, 2 000 runs, on the development machine): verifying a signed POST
with a body and one active key took about 0.7 ms through the library (structured fields parsed
twice, the library's signature base, ``Ed25519PublicKey.from_public_bytes`` per request), of which
the Ed25519 check itself is about 0.16 ms; the fast path takes about 0.15 ms in all. The library
path parses a key once (``_public_key``, cached). The test ``test_verify_cost_is_measured``
repeats the measurement and prints it.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import http_sf
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import ContentDigest, HTTPMessageSigner, HTTPMessageVerifier, HTTPSignatureKeyResolver
from http_message_signatures.algorithms import ED25519
from http_message_signatures.exceptions import HTTPMessageSignaturesException
from http_message_signatures.structures import CaseInsensitiveDict, VerifyResult
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

logger = logging.getLogger(__name__)

SIGNATURE_LABEL = "sig1"
SIGNATURE_ALGORITHM = "ed25519"
SIGNATURE_AGE_MAX_S = 300
# Limits on what a client can make us parse: aiohttp already caps a header line at 8 KiB.
SIGNATURE_FIELD_CHARS_MAX = 8192
COVERED_COMPONENTS_MAX = 32
# Key ids are institution ids (slugs); anything else is refused before a database lookup.
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Origin-form URLs (``/v1/transfers``) are given this authority so that the library, which wants an
# absolute URL, can resolve @path and @query; a client that covers @authority must send it.
PLACEHOLDER_ORIGIN = "http://localhost"
_SIGNATURE_FIELDS = ("signature-input", "signature")
PUBLIC_KEYS_CACHED_MAX = 4096
_HOST_PATTERN = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")

ResolveKeys = Callable[[str], Awaitable[Sequence[VerifyKey]]]


class SignatureProblem(Exception):
    """A request failed authentication; ``code`` is one of the API's stable codes, ``status`` its HTTP status."""

    def __init__(self, code: str, detail: str, status: int = 401) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status


def _missing(detail: str) -> SignatureProblem:
    return SignatureProblem("signature_missing", detail, 401)


def _invalid(detail: str) -> SignatureProblem:
    return SignatureProblem("signature_invalid", detail, 401)


def _expired(detail: str) -> SignatureProblem:
    return SignatureProblem("signature_expired", detail, 401)


def _digest_mismatch(detail: str) -> SignatureProblem:
    return SignatureProblem("content_digest_mismatch", detail, 400)


@dataclass(frozen=True)
class VerifiedRequest:
    """Who signed a request, when, and what the signature covers (component identifiers, in order)."""

    key_id: str
    created: int
    covered_components: tuple[str, ...]


# --- a message shim: the library reads ``method``, ``url`` and ``headers.items()`` -----------------


@dataclass
class _RequestView:
    method: str
    url: str
    headers: Any


class _FieldLines:
    """Read-only header lines in wire order; repeated fields stay separate lines, as the library wants."""

    def __init__(self, lines: Iterable[tuple[str, str]]) -> None:
        self._lines = list(lines)

    def items(self) -> list[tuple[str, str]]:
        return self._lines

    def __iter__(self):
        return iter(dict.fromkeys(name for name, _ in self._lines))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(field.lower() == name.lower() for field, _ in self._lines)


def _absolute_url(url: str) -> str:
    return PLACEHOLDER_ORIGIN + url if url.startswith("/") else url


def _has_query(url: str) -> bool:
    return urllib.parse.urlsplit(url).query != ""


def _has_body(body: bytes | None) -> bool:
    # An empty body is no body: a server cannot tell b"" from no body, so neither side digests it.
    return body is not None and len(body) > 0


# --- signing ---------------------------------------------------------------------------------------


def content_digest(body: bytes) -> str:
    """The RFC 9530 Content-Digest field value of ``body``: ``sha-256=:<base64>:``."""
    return ContentDigest.create(bytes(body))


def covered_components_for(url: str, body: bytes | None) -> tuple[str, ...]:
    """The components this API requires a signature to cover for a request to ``url`` with ``body``."""
    components = ["@method", "@path"]
    if _has_query(url):
        components.append("@query")
    if _has_body(body):
        components.append("content-digest")
    return tuple(components)


def sign_request(
    method: str,
    url: str,
    body: bytes | None,
    *,
    key_id: str,
    signing_key: SigningKey,
    created: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers to add to a request so that it is signed as the API wants.

    ``url`` is the URL exactly as it will be sent (absolute, or a path with its encoded query).
    Returns ``Content-Digest`` (when there is a body), ``Signature-Input`` and ``Signature``.
    """
    message_headers = CaseInsensitiveDict(
        (name, value)
        for name, value in (headers or {}).items()
        if name.lower() not in {"content-digest", *_SIGNATURE_FIELDS}
    )
    message = _RequestView(method.upper(), _absolute_url(url), message_headers)
    signer = HTTPMessageSigner(signature_algorithm=ED25519)
    created_at = datetime.datetime.fromtimestamp(int(time.time()) if created is None else created, datetime.UTC)
    components = [name for name in covered_components_for(url, body) if name != "content-digest"]
    # Given the body, the library writes Content-Digest and appends "content-digest" to the covered list.
    prepared = signer.prepare(
        message,
        key_id=key_id,
        created=created_at,
        label=SIGNATURE_LABEL,
        covered_component_ids=components,
        body=bytes(body) if _has_body(body) else None,
    )
    signer.apply(message, prepared, signing_key.sign(prepared.signature_base).signature)
    names = ["Content-Digest"] if _has_body(body) else []
    return {name: message_headers[name] for name in [*names, "Signature-Input", "Signature"]}


# --- verification: the library-level step -----------------------------------------------------------


class _CryptoOnlyVerifier(HTTPMessageVerifier):
    """The library's verifier without its clock check: ``verify_request`` applies the API's window itself."""

    def validate_created_and_expires(self, sig_input, max_age=None) -> None:
        return None


def verify_signature(
    method: str, url: str, header_lines: Iterable[tuple[str, str]], *, label: str, verify_keys: Sequence[VerifyKey]
) -> VerifyResult:
    """Check the Ed25519 signature ``label`` of a request with the library, against any of ``verify_keys``.

    The low-level step: no time window, no required components, no body digest. It raises
    ``HTTPMessageSignaturesException`` when no key verifies; ``verify_request`` is the API's policy.
    """
    lines = list(header_lines)
    signature_fields = {
        field: _parse_dictionary(_combined(lines, field), field) for field in ("Signature-Input", "Signature")
    }
    return _verify_with_library(method, url, _only_label(lines, signature_fields, label), verify_keys)


def _verify_with_library(
    method: str, url: str, label_lines: list[tuple[str, str]], verify_keys: Sequence[VerifyKey]
) -> VerifyResult:
    message = _RequestView(method, _absolute_url(url), _FieldLines(label_lines))
    failure = HTTPMessageSignaturesException("no verification key")
    for verify_key in verify_keys:
        resolver = _AnyKeyIdResolver(_public_key(bytes(verify_key)))
        try:
            return _CryptoOnlyVerifier(signature_algorithm=ED25519, key_resolver=resolver).verify(
                message, max_age=None
            )[0]
        except HTTPMessageSignaturesException as error:
            failure = error
    raise failure


@functools.lru_cache(maxsize=PUBLIC_KEYS_CACHED_MAX)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    """The library's key object for a raw Ed25519 key, parsed once per key rather than per request."""
    return Ed25519PublicKey.from_public_bytes(raw)


class _AnyKeyIdResolver(HTTPSignatureKeyResolver):
    """Answers the one key being tried, whatever key id the signature names: the caller looked the keys up by it."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self._public_key = public_key

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey:
        return self._public_key


def _only_label(
    lines: list[tuple[str, str]], signature_fields: dict[str, dict[str, Any]], label: str
) -> list[tuple[str, str]]:
    """The header lines with Signature-Input and Signature (already parsed) reduced to one label.

    Other labels (a proxy's signature, say) are not ours to check, and the library refuses to choose
    among several signatures by label alone since labels are not signed.
    """
    kept = [(name, value) for name, value in lines if name.lower() not in _SIGNATURE_FIELDS]
    for field, members in signature_fields.items():
        if label in members:
            kept.append((field, http_sf.ser({label: members[label]})))
    return kept


def _combined(lines: Iterable[tuple[str, str]], field: str) -> str | None:
    values = [value for name, value in lines if name.lower() == field.lower()]
    return ", ".join(values) if values else None


def _parse_dictionary(value: str | None, field: str) -> dict[str, Any]:
    if value is None:
        raise _missing(f"the request has no {field} header")
    if len(value) > SIGNATURE_FIELD_CHARS_MAX:
        raise _missing(f"{field} is longer than {SIGNATURE_FIELD_CHARS_MAX} characters")

    def refuse_duplicate(key: str, context: str) -> None:
        if context == "dictionary":
            raise ValueError(f"duplicate member {key}")

    try:
        parsed = http_sf.parse(value.encode("ascii"), tltype="dictionary", on_duplicate_key=refuse_duplicate)
    except (ValueError, TypeError, UnicodeError) as error:
        raise _missing(f"{field} is not a structured-field dictionary ({error})") from error
    if not isinstance(parsed, dict):
        raise _missing(f"{field} is not a structured-field dictionary")
    return parsed


# --- verification: the API's policy ----------------------------------------------------------------


@dataclass(frozen=True)
class _SignatureClaim:
    """What a request's Signature-Input says, checked against the API's rules but not yet cryptographically."""

    key_id: str
    created: int
    covered_components: tuple[str, ...]
    label_lines: list[tuple[str, str]]
    # The contract's signature base built directly (None: an unusual request, left to the library).
    signature_base: bytes | None = None
    signature: bytes = b""


async def verify_request(
    method: str,
    url: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes | None,
    *,
    resolve_keys: ResolveKeys,
    now: int | None = None,
    max_age_s: int = SIGNATURE_AGE_MAX_S,
) -> VerifiedRequest:
    """Authenticate a request signed as the API says, or raise ``SignatureProblem`` with its stable code.

    ``url`` is the request target as sent (a path with its raw query, or an absolute URL); ``headers``
    a mapping (a multidict keeps repeated lines) or ``(name, value)`` pairs. ``resolve_keys(key_id)``
    answers the key id's active keys (several during a rotation; empty when the key id is unknown);
    its own errors (a database outage) propagate, they are not the client's fault. For any request
    content this raises nothing but ``SignatureProblem``: a hostile request must never become a 500.
    """
    lines = _header_lines(headers)
    claim = _guarded(_check_claim, method, url, lines, body, now, max_age_s)
    verify_keys = list(await resolve_keys(claim.key_id))
    if not verify_keys:
        raise SignatureProblem("unknown_key", f'no active key is registered as keyid "{claim.key_id}"', 401)
    _guarded(_check_cryptography, claim, method, url, verify_keys)
    return VerifiedRequest(claim.key_id, claim.created, claim.covered_components)


async def verify_aiohttp_request(
    request: web.Request, body: bytes, *, resolve_keys: ResolveKeys, now: int | None = None
) -> VerifiedRequest:
    """``verify_request`` for an aiohttp request whose body the caller has already read (and size-limited)."""
    # raw_path is the target exactly as sent (path and raw query); aiohttp's decoded path would not match.
    # The Host header gives @authority to clients that cover it; a malformed one is not used (the
    # library would refuse the whole URL, and the API does not require @authority).
    origin = f"{request.scheme}://{request.host}" if _HOST_PATTERN.fullmatch(request.host or "") else ""
    return await verify_request(
        request.method, origin + request.raw_path, request.headers.items(), body, resolve_keys=resolve_keys, now=now
    )


def _guarded(check: Callable[..., Any], *args: Any) -> Any:
    try:
        return check(*args)
    except SignatureProblem:
        raise
    except Exception as error:
        # A parser or library corner we did not foresee: the client sent something we cannot verify,
        # which is a 401, never a 500. Logged so that the corner gets its own check and message.
        logger.warning("signature check failed unexpectedly: %r", error)
        raise _invalid("the signature could not be verified") from error


def _header_lines(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    try:
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    except (TypeError, ValueError) as error:
        raise _missing("the request headers cannot be read") from error
    lines = []
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
            raise _missing("the request headers are not text")
        lines.append(pair)
    return lines


def _check_claim(
    method: str, url: str, lines: list[tuple[str, str]], body: bytes | None, now: int | None, max_age_s: int
) -> _SignatureClaim:
    signature_inputs = _parse_dictionary(_combined(lines, "Signature-Input"), "Signature-Input")
    signatures = _parse_dictionary(_combined(lines, "Signature"), "Signature")
    if SIGNATURE_LABEL not in signature_inputs or SIGNATURE_LABEL not in signatures:
        raise _missing(f'Signature-Input and Signature must both carry the label "{SIGNATURE_LABEL}"')
    components, params = _signature_input_member(signature_inputs[SIGNATURE_LABEL])
    _check_signature_member(signatures[SIGNATURE_LABEL])
    key_id = _check_params(params)
    created = _check_time(params, int(time.time()) if now is None else now, max_age_s)
    _check_content_digest(lines, body)
    _check_coverage(components, url, body)
    covered_components = tuple(_component_text(name, flags) for name, flags in components)
    signature_fields = {"Signature-Input": signature_inputs, "Signature": signatures}
    label_lines = _only_label(lines, signature_fields, SIGNATURE_LABEL)
    return _SignatureClaim(
        key_id, created, covered_components, label_lines,
        fast_signature_base(method, url, components, params, lines), signatures[SIGNATURE_LABEL][0],
    )  # fmt: skip


def _signature_input_member(member: Any) -> tuple[list[tuple[str, dict]], dict]:
    inner, params = member
    if not isinstance(inner, list):
        raise _invalid(f'Signature-Input "{SIGNATURE_LABEL}" must be a list of covered components')
    if len(inner) > COVERED_COMPONENTS_MAX:
        raise _invalid(f"a signature may cover at most {COVERED_COMPONENTS_MAX} components")
    if not all(isinstance(name, str) for name, _ in inner):
        raise _invalid("covered components must be quoted strings")
    return inner, params


def _check_signature_member(member: Any) -> None:
    value, _ = member
    if not isinstance(value, bytes):
        raise _invalid(f'Signature "{SIGNATURE_LABEL}" must be a byte sequence (:base64:)')


def _check_params(params: dict) -> str:
    alg = params.get("alg", SIGNATURE_ALGORITHM)
    # alg may be left out (RFC 9421 §2.3): every registered key is Ed25519, so the key decides.
    if alg != SIGNATURE_ALGORITHM:
        raise _invalid(f'alg must be "{SIGNATURE_ALGORITHM}"')
    key_id = params.get("keyid")
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        raise _invalid("keyid must name a registered key (an institution id)")
    return key_id


def _check_time(params: dict, now: int, max_age_s: int) -> int:
    created = params.get("created")
    if created is None:
        raise _expired("the signature has no created time")
    if type(created) is not int:
        raise _invalid("created must be an integer (unix seconds)")
    if abs(now - created) > max_age_s:
        raise _expired(f"created must be within {max_age_s} seconds of the server clock ({now})")
    expires = params.get("expires")
    if expires is not None and type(expires) is not int:
        raise _invalid("expires must be an integer (unix seconds)")
    if expires is not None and expires < now:
        raise _expired("the signature's expires time has passed")
    return created


def _check_content_digest(lines: list[tuple[str, str]], body: bytes | None) -> None:
    """The body must match its Content-Digest, which is required when there is a body (RFC 9530)."""
    field = _combined(lines, "Content-Digest")
    if field is None:
        if _has_body(body):
            raise _digest_mismatch("a request with a body must carry Content-Digest: sha-256=:<base64>:")
        return
    try:
        members = http_sf.parse(field.encode("ascii"), tltype="dictionary")
    except (ValueError, TypeError, UnicodeError) as error:
        raise _digest_mismatch("Content-Digest is not a structured-field dictionary") from error
    digests = {name: member[0] for name, member in members.items() if name in ("sha-256", "sha-512")}
    if not isinstance(digests.get("sha-256"), bytes):
        raise _digest_mismatch("Content-Digest must carry a sha-256 byte sequence")
    content = bytes(body or b"")
    for name, digest in digests.items():
        # A sha-512 member is checked too: any member that lies about the body is a mismatch.
        expected = hashlib.sha256(content) if name == "sha-256" else hashlib.sha512(content)
        if not isinstance(digest, bytes) or not hmac.compare_digest(digest, expected.digest()):
            raise _digest_mismatch(f"Content-Digest {name} does not match the body")


def _check_coverage(components: list[tuple[str, dict]], url: str, body: bytes | None) -> None:
    covered = {name for name, flags in components if not flags}
    # content-digest;sf covers the same field; ;key would cover one member only.
    covered |= {name for name, flags in components if name == "content-digest" and set(flags) <= {"sf"}}
    for required in covered_components_for(url, body):
        if required not in covered:
            raise _invalid(f'the signature must cover "{required}"')


def _component_text(name: str, flags: dict) -> str:
    return name if not flags else http_sf.ser((name, flags))


def _check_cryptography(claim: _SignatureClaim, method: str, url: str, verify_keys: list[VerifyKey]) -> None:
    if claim.signature_base is not None:
        for verify_key in verify_keys:
            try:
                verify_key.verify(claim.signature_base, claim.signature)
                return
            except (BadSignatureError, ValueError, TypeError):
                continue
        raise _invalid("the signature does not verify with the key id's registered keys")
    try:
        _verify_with_library(method, url, claim.label_lines, verify_keys)
    except HTTPMessageSignaturesException as error:
        raise _invalid("the signature does not verify with the key id's registered keys") from error


# --- the fast path: the contract's signature base, built directly ---------------------------------
#
# Nearly every request covers exactly what the API requires, in the order ``sign_request`` writes:
# ("@method" "@path" ["@query"] ["content-digest"]), with created, keyid and alg. For those the
# RFC 9421 signature base is a few lines of text, built here and checked with PyNaCl (libsodium);
# anything else (other components, parameters, orders, characters, repeated fields, another URL
# form) returns None and goes to the library, which stays the reference implementation:
# tests/test_auth_signatures.py checks that both build the same base for many generated requests.

_FAST_COMPONENT_LISTS = frozenset(
    {
        ("@method", "@path"),
        ("@method", "@path", "@query"),
        ("@method", "@path", "content-digest"),
        ("@method", "@path", "@query", "content-digest"),
    }
)
_FAST_PARAMS = frozenset({"created", "keyid", "alg"})
_FAST_METHOD = re.compile(r"[A-Z]{1,16}")
# A request target: origin form, or absolute with a plain host; path and query in RFC 3986's grammar
# (what the library's URL parser accepts: unreserved, sub-delims, ":@/" and %-escapes; "?" in a query).
_PCHARS = r"[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2}"
_FAST_TARGET = re.compile(
    rf"(?:https?://(?P<host>[A-Za-z0-9.-]{{1,253}}(?::[0-9]{{1,5}})?))?(?P<path>/(?:{_PCHARS})*)"
    rf"(?:\?(?P<query>(?:{_PCHARS}|\?)*))?"
)
_FAST_FIELD_VALUE = re.compile(r"[!-~](?:[ -~]*[!-~])?")


def fast_signature_base(
    method: str, url: str, components: list[tuple[str, dict]], params: dict, lines: list[tuple[str, str]]
) -> bytes | None:
    """The RFC 9421 signature base of a request that covers the contract's components, or None."""
    names = tuple(name for name, _ in components)
    if names not in _FAST_COMPONENT_LISTS or any(flags for _, flags in components):
        return None
    if not set(params) <= _FAST_PARAMS or type(params.get("created")) is not int:
        return None
    if not isinstance(params.get("keyid"), str) or not KEY_ID_PATTERN.fullmatch(params["keyid"]):
        return None
    if "alg" in params and params["alg"] != SIGNATURE_ALGORITHM:
        return None
    target = _FAST_TARGET.fullmatch(url)
    if target is None or not _FAST_METHOD.fullmatch(method):
        return None
    base = [f'"@method": {method}', f'"@path": {target["path"]}']
    if "@query" in names:
        if target["query"] is None:
            return None
        base.append(f'"@query": ?{target["query"]}')
    if "content-digest" in names:
        values = [value for name, value in lines if name.lower() == "content-digest"]
        if len(values) != 1 or not _FAST_FIELD_VALUE.fullmatch(values[0]):
            return None
        base.append(f'"content-digest": {values[0]}')
    covered = " ".join(f'"{name}"' for name in names)
    rendered = "".join(
        f";{name}={value}" if type(value) is int else f';{name}="{value}"' for name, value in params.items()
    )
    base.append(f'"@signature-params": ({covered}){rendered}')
    return "\n".join(base).encode("ascii")
