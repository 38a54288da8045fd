"""Telling a device what was dropped of its input, without flooding it.

Input the service drops on purpose (a duplicate or out-of-order reading, a window cut
short by a gap, an input over the id's rate limit) is counted in
``harstream_drops_total{reason}`` and told to the id on ``<prefix>/<id>/errors``, with the
reason as the error kind. An id that keeps sending such input is told at most once per
:data:`NOTICE_EVERY_S` per kind, each notice with the count dropped since the previous
one: a device that sends every reading twice (20 duplicates a second) gets one notice
every 10 s, not 20 a second. The state (:class:`Tally`, two slots) lives in the id's sink
or bucket, so it goes with the id's buffer when the id is evicted.
"""

from __future__ import annotations

import math

# at most one notice per kind per id per 10 s: a misbehaving id's notices cost nothing
NOTICE_EVERY_S = 10.0


class Tally:
    """What one id had dropped for one reason since its last notice, and when the next may go."""

    __slots__ = ("_count", "_next")

    def __init__(self) -> None:
        self._count = 0
        self._next = -math.inf

    def add(self, n: int, now: float, every_s: float = NOTICE_EVERY_S) -> int:
        """Count ``n`` dropped at ``now`` (any monotonic clock, in seconds). Returns the count
        to tell the id now (everything since its last notice), or 0 when the last notice
        went less than ``every_s`` ago (the count waits for the next one)."""
        self._count += n
        if now < self._next:
            return 0
        count, self._count = self._count, 0
        self._next = now + every_s
        return count
