"""Ids: UUIDv7 layout and order, and no repeats across a fork."""

from __future__ import annotations

import os
import time
from uuid import UUID

from ledger.ids import uuid7


def test_uuid7_has_version_7_the_rfc_variant_and_the_current_millisecond():
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7 and value.variant == "specified in RFC 4122"
    assert before <= value.int >> 80 <= after


def test_uuid7s_made_later_sort_later_and_never_repeat():
    values = [uuid7() for _ in range(20_000)]  # several refills of the random pool
    assert len(set(values)) == len(values)
    assert [v.int >> 80 for v in values] == sorted(v.int >> 80 for v in values)


def test_a_forked_child_draws_other_random_bits_than_its_parent():
    uuid7()  # the parent now holds a partly used pool of random bytes
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its ids to the parent and leave at once
        try:
            os.close(read_end)
            os.write(write_end, b"".join(uuid7().bytes for _ in range(500)))
        finally:
            os._exit(0)
    os.close(write_end)
    parent = {uuid7().int & ((1 << 62) - 1) for _ in range(500)}
    received = b""
    while chunk := os.read(read_end, 65536):
        received += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    child = {UUID(bytes=received[i : i + 16]).int & ((1 << 62) - 1) for i in range(0, len(received), 16)}
    assert len(child) == 500
    # Compared without the time bits: inherited random bytes would repeat even a millisecond apart.
    assert not parent & child
