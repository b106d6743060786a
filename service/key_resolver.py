"""Institutions' active Ed25519 keys for request verification, from the wallets layer, cached briefly.

Every signed request needs its key id's active keys; reading them from the database each time
would put a query on every request's path. So they are cached for ``KEY_CACHE_TTL_S`` seconds.
What that costs: a key retired (or an institution's keys changed) through ANOTHER process keeps
verifying here for at most that long. Changes made through this process's own routes take effect
at once, since those routes call :meth:`InstitutionKeyResolver.forget`. Unknown key ids are not
cached: an institution registered by another process can sign at once, and junk key ids cannot
fill the cache (which is bounded anyway, by ``KEY_CACHE_ENTRIES_MAX``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

KEY_CACHE_TTL_S = 5.0
KEY_CACHE_ENTRIES_MAX = 10_000

ActiveKeys = Callable[[str], Awaitable[list[bytes]]]


class InstitutionKeyResolver:
    """``resolve_keys`` for ``service.auth.verify_aiohttp_request``: key id (the institution id) to
    its active keys. ``active_keys`` is bound when the app starts (``WalletBook.active_keys``)."""

    def __init__(self, *, ttl_s: float = KEY_CACHE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._active_keys: ActiveKeys | None = None
        self._cache: dict[str, tuple[float, list[VerifyKey]]] = {}

    def bind(self, active_keys: ActiveKeys | None) -> None:
        self._active_keys = active_keys
        self._cache.clear()

    def forget(self, key_id: str) -> None:
        """Drop the cached keys of ``key_id``: its keys just changed."""
        self._cache.pop(key_id, None)

    async def __call__(self, key_id: str) -> Sequence[VerifyKey]:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._active_keys is None:
            raise RuntimeError("the key resolver is not bound to a WalletBook (the app has not started)")
        verify_keys = [_verify_key(raw) for raw in await self._active_keys(key_id)]
        verify_keys = [key for key in verify_keys if key is not None]
        if verify_keys:
            if len(self._cache) >= KEY_CACHE_ENTRIES_MAX:
                self._cache.clear()  # crude but bounded; a refill costs one query per institution
            self._cache[key_id] = (now + self.ttl_s, verify_keys)
        return verify_keys


def _verify_key(raw: bytes) -> VerifyKey | None:
    # The wallets layer checks keys on the way in; one that is not 32 bytes of a valid point is
    # skipped here rather than failing every request of its institution.
    try:
        return VerifyKey(bytes(raw))
    except (CryptoError, ValueError, TypeError):
        return None
