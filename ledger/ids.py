"""Time-sortable ids (UUIDv7, RFC 9562) and the ledger's clock.

Python 3.11 has no ``uuid.uuid7``; this one draws its random bits from ``os.urandom`` in blocks,
because one system call per id was a visible share of the hot path's time. A forked child starts
with an empty pool of its own (see ``_forget_random_pool``).
"""

from __future__ import annotations

import os
import threading
import time
from uuid import UUID

_RANDOM_BLOCK_IDS = 4096
_random_lock = threading.Lock()
_random_pool = b""
_random_offset = 0


def now_us() -> int:
    """The wall clock in integer microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1_000


def _random_bytes10() -> bytes:
    global _random_pool, _random_offset
    with _random_lock:
        if _random_offset + 10 > len(_random_pool):
            _random_pool = os.urandom(10 * _RANDOM_BLOCK_IDS)
            _random_offset = 0
        chunk = _random_pool[_random_offset : _random_offset + 10]
        _random_offset += 10
    return chunk


def _forget_random_pool() -> None:
    """A forked child must not reuse the parent's unread random bytes: both processes would then
    draw the same bits, and ids made in the same millisecond would be equal."""
    global _random_pool, _random_offset, _random_lock
    _random_lock = threading.Lock()  # the parent may have held it at the fork
    _random_pool = b""
    _random_offset = 0


os.register_at_fork(after_in_child=_forget_random_pool)


def uuid7() -> UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, then 74 random bits."""
    millis = time.time_ns() // 1_000_000
    random = int.from_bytes(_random_bytes10(), "big")
    value = (millis << 80) | (0x7 << 76) | ((random >> 62) & 0xFFF) << 64 | (0b10 << 62) | (random & ((1 << 62) - 1))
    return UUID(int=value)
