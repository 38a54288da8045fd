"""Notice another client connecting with the service's client id, and stop the storm.

A broker keeps one connection per client id: when a second client connects with it, the
broker drops the first (MQTT 5 tells it why: reason code 142, "Session taken over"; on
3.1.1 the socket just closes). Both then reconnect at paho's minimum delay, since each
connect succeeds and resets paho's backoff: measured with two services on one Mosquitto,
each reconnected every ~100 ms and logged ~130 lines in 15 s. :class:`TakeoverGuard`
recognises the pattern, so that the service warns once and waits longer between
reconnects until a connection lasts again.
"""

from __future__ import annotations

from collections import deque

SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason code
# The reconnect delay once a conflict is seen: the two clients then take turns every few
# seconds instead of every 0.1 s. A connection that lasts STABLE_FACTOR times longer than
# the delay means the other client went away.
CONFLICT_DELAY_S = 5.0
STABLE_FACTOR = 3
# A connection dropped sooner than SHORT_S counts towards a conflict, and SHORT_COUNT of
# them within WINDOW_S are one. SHORT_S exceeds the conflict delay, so that the client
# that keeps reconnecting fast also notices, when the other one holds its connections for
# CONFLICT_DELAY_S.
SHORT_S = 2 * CONFLICT_DELAY_S
SHORT_COUNT = 3
WINDOW_S = 30.0


class TakeoverGuard:
    """Tracks connects and disconnects of one client (times in seconds, any clock)."""

    def __init__(self) -> None:
        self.conflict = False
        self._connected_at: float | None = None
        self._short: deque[float] = deque()

    def connected(self, now: float) -> None:
        self._connected_at = now

    def disconnected(self, now: float, reason_code: int) -> bool:
        """Record a disconnect; True when it reveals a new conflict (warn once then)."""
        lasted = now - self._connected_at if self._connected_at is not None else None
        self._connected_at = None
        if self.conflict:
            if lasted is None or lasted <= STABLE_FACTOR * CONFLICT_DELAY_S:
                return False  # still taking turns with the other client
            self.conflict = False  # the other client had gone: judge this drop afresh
            self._short.clear()
        if lasted is not None and lasted < SHORT_S:
            self._short.append(now)
        while self._short and now - self._short[0] > WINDOW_S:
            self._short.popleft()
        self.conflict = reason_code == SESSION_TAKEN_OVER or len(self._short) >= SHORT_COUNT
        return self.conflict
