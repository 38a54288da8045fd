"""Watching the MQTT thread: how long each message's handling takes, and log lines that
cannot flood.

Everything a message costs is paid on paho's network thread, so one slow handler delays
every device behind it and, past the keepalive, costs the connection. The decoders and
buffers bound the work of a message by its size; :class:`HandlerWatch` is the check that
this holds in production: it times every handler, and a thread of its own reports a
handler that is still running past the bound (a stuck one never reaches its own end).

:class:`LogLimiter` keeps repeated warnings and tracebacks to one line per kind per
interval with a count of those held back: one bad message repeated 50,000 times once wrote
51,915 traceback lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class LogLimiter:
    """Allows one log line per key per ``interval_s``; counts the ones it holds back."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._interval = interval_s
        self._clock = clock
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None when a line for ``key`` was written less than ``interval_s`` ago (the caller
        stays silent); else the number of lines held back since the last one."""
        now = self._clock()
        if now < self._next.get(key, -1.0):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._next[key] = now + self._interval
        return self._held.pop(key, 0)


class HandlerWatch:
    """Times the handling of each message on the MQTT thread against ``bound_s``.

    The MQTT thread calls :meth:`begin` and :meth:`end` around each handler. A handler over
    the bound is counted once and logged (rate-limited) with its topic: when it ends, or,
    if it is still running, by the watch thread every ``check_s``.
    """

    def __init__(
        self,
        bound_s: float,
        on_slow: Callable[[], None],
        *,
        check_s: float = 0.25,
        limiter: LogLimiter | None = None,
    ) -> None:
        self.bound_s = bound_s
        self._on_slow = on_slow
        self._check_s = check_s
        self._limiter = limiter or LogLimiter()
        self._lock = threading.Lock()
        self._topic: str | None = None
        self._since = 0.0
        self._flagged = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="harstream-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def begin(self, topic: str) -> None:
        """A handler for a message on ``topic`` starts now."""
        since = time.perf_counter()
        with self._lock:
            self._topic, self._since, self._flagged = topic, since, False

    def end(self) -> float:
        """The handler ended; returns its duration in seconds."""
        took = time.perf_counter() - self._since
        with self._lock:
            topic, flagged = self._topic, self._flagged
            self._topic = None
        if took > self.bound_s and not flagged:
            self._report(topic or "", took, "took")
        return took

    def running(self) -> tuple[str, float] | None:
        """``(topic, seconds so far)`` of the handler running now, or None."""
        with self._lock:
            if self._topic is None:
                return None
            return self._topic, time.perf_counter() - self._since

    def _watch(self) -> None:
        while not self._stop.wait(self._check_s):
            with self._lock:
                topic, since, flagged = self._topic, self._since, self._flagged
                late = topic is not None and not flagged
                took = time.perf_counter() - since
                if late and took > self.bound_s:
                    self._flagged = True
                else:
                    late = False
            if late:
                self._report(topic or "", took, "still running after")

    def _report(self, topic: str, took: float, what: str) -> None:
        self._on_slow()
        held = self._limiter.allow("slow_handler")
        if held is not None:
            log.warning(
                "event=slow_handler topic=%r: handling one message %s %.0f ms (bound %.0f ms); "
                "every other device waits meanwhile%s",
                topic[:200],
                what,
                took * 1000,
                self.bound_s * 1000,
                f" ({held} more since the last such line)" if held else "",
            )
