"""Row ids that sort by creation time (UUID version 7, RFC 9562).

A random (version 4) key puts each new row's primary-key entry on a random leaf page, and
so does every later version of the row (a state change that is not a HOT update writes its
key again): the index's hot pages are all of it. Keys of version 7 start with the time, so a
table's new and changing rows share the few rightmost pages. Python's `uuid.uuid7` arrives
in 3.14; this is its layout."""

from __future__ import annotations

import os
import time
import uuid

_SUB_MS_STEPS = 4096  # the 12 bits after the milliseconds: a fraction of the millisecond
_RANDOM_BITS = 62


def time_ordered_uuid() -> uuid.UUID:
    """48 bits of Unix milliseconds, version 7, 12 bits of sub-millisecond time, the RFC
    variant, then 62 random bits. Ids made in one process sort in the order they were made,
    to the clock's 244 ns; across processes, to about that, then at random."""
    nanoseconds = time.time_ns()
    milliseconds, rest = divmod(nanoseconds, 1_000_000)
    fraction = rest * _SUB_MS_STEPS // 1_000_000
    random_bits = int.from_bytes(os.urandom(8)) >> (64 - _RANDOM_BITS)
    value = (
        (milliseconds & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | fraction << 64
        | 0b10 << _RANDOM_BITS
        | random_bits
    )
    return uuid.UUID(int=value)
