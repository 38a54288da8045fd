"""Per-device rate limit: one token bucket per id, so that a flooding id is limited on its own.

Without it, one id sending 4,096-sample binary messages 40 times a second made 8,200 HAR
windows/s; the full inference queue dropped the oldest windows whoever they belonged to, and
50 ordinary devices got 99 of their 1,000 windows. The bucket drops such an id's excess
windows (any family's model inputs) before they reach the queue.

The numbers, relative to what a real source of the family makes (``Route.real_rate``, model
inputs per second: HAR ``rate_hz / hop``, 20 / 20 = 1 window/s; text and series 1 message/s):

- ``margin`` (``--device-rate-margin``, default 25): the sustained rate an id may keep up is
  25 times real time. ``harstream replay --speed 20`` (the replay of eight test subjects in
  docs/replay.md) makes 20 windows/s per device at hop 20, under 25 with room for the
  pacer to catch up after a stall; the default ``--speed 1``, the demo, ``simulate`` and
  ``bench e2e`` stream in real time. 25 windows/s is about 1% of what the 2-core
  development machine classifies (over 2,500 devices at 1 window/s), so one id at the
  limit cannot crowd out the rest. 0 turns the limit off.
- ``burst_s`` (``--device-burst``, default 120 s): the bucket holds 120 seconds of a real
  source's inputs (120 windows at hop 20, 2,400 at hop 1), all available at once: a device
  that flushes the readings it kept through a two-minute outage, or the broker's backlog
  for every device after the service restarts, passes whole. A ``--speed max`` replay
  passes a recording of up to about two minutes whole (the test recordings are 8 s);
  longer ones lose windows beyond the burst plus 25/s as ``rate_limited``.

Each dropped input counts as ``harstream_drops_total{reason="rate_limited"}``; the id is
told on ``<prefix>/<id>/errors`` (error ``rate_limited``) at most once per
:data:`~harstream.stream.notices.NOTICE_EVERY_S`, with the count dropped since its last
notice (:mod:`stream.notices`). Per id the state is
six slots and :meth:`DeviceBucket.admit` is O(1); a bucket lives in the id's sink, so it is
evicted with the id's buffer (and starts full when the id comes back).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from harstream.stream.notices import NOTICE_EVERY_S, Tally
from harstream.stream.watchdog import LogLimiter

log = logging.getLogger(__name__)

DEFAULT_MARGIN = 25.0
DEFAULT_BURST_S = 120.0
RATE_LIMITED = "rate_limited"  # the error kind and the drop reason (model inputs)
# the drop reason of whole messages from an id already over its share, dropped undecoded
RATE_LIMITED_MESSAGES = "rate_limited_messages"

Notify = Callable[[str, str], None]  # (id, message) -> publish it on <prefix>/<id>/errors


class RateLimit:
    """One family's limit: ``margin`` times ``real_rate`` inputs/s, bursts of ``burst_s``.

    ``notify(id, message)`` tells an id it was limited; times are ``time.perf_counter()``
    seconds (any monotonic clock: tests pass their own).
    """

    def __init__(
        self,
        family: str,
        real_rate: float,
        margin: float,
        burst_s: float,
        notify: Notify,
        *,
        notice_every_s: float = NOTICE_EVERY_S,
    ) -> None:
        if real_rate <= 0 or margin <= 0 or burst_s <= 0 or notice_every_s < 0:
            raise ValueError("real_rate, margin and burst_s must be > 0, notice_every_s >= 0")
        self.family = family
        self.real_rate = real_rate
        self.margin = margin
        self.rate = real_rate * margin
        self.capacity = max(1.0, real_rate * burst_s)  # at least one input must fit
        self.notice_every_s = notice_every_s
        self._notify = notify
        self._log = LogLimiter()  # one warning line a minute for the whole family
        # the live ids' buckets, so that a message can be refused before it is decoded;
        # an entry goes with the id's buffer (forget), so this is bounded by --max-devices
        self._buckets: dict[str, DeviceBucket] = {}

    def bucket(self, device: str) -> DeviceBucket:
        """``device``'s bucket: the one it has (a model reload gives a live id a new buffer,
        not a new share), else a new, full one."""
        bucket = self._buckets.get(device)
        if bucket is None:
            bucket = self._buckets[device] = DeviceBucket(self, device)
        return bucket

    def forget(self, device: str) -> None:
        """``device``'s buffer is gone (evicted): so is its bucket."""
        self._buckets.pop(device, None)

    def closed(self, device: str, now: float) -> bool:
        """Whether ``device`` is over its share right now, so that its next message may be
        dropped undecoded: decoding and resampling a 4,096-sample message costs about 8 ms of
        the MQTT thread, and a flooding id whose windows were only dropped after that held up
        every other device (14-190 s behind in a trial at 900 such messages a second)."""
        bucket = self._buckets.get(device)
        return bucket is not None and bucket.closed(now)

    def notify(self, device: str, dropped: int) -> None:
        held = self._log.allow(RATE_LIMITED)
        if held is not None:
            log.warning(
                "event=rate_limited family=%s device=%s dropped=%d: an id sends more than %g "
                "inputs/s; its excess is dropped (see --device-rate-margin)%s",
                self.family,
                device,
                dropped,
                self.rate,
                f"; {held} more such notices since the last line" if held else "",
            )
        self._notify(
            device,
            f"{dropped} input(s) or message(s) dropped since the last notice: an id may send "
            f"{self.rate:g}/s ({self.margin:g} x a real device's {self.real_rate:g}/s) after "
            f"a burst of {self.capacity:g}; the service's --device-rate-margin and "
            "--device-burst set this",
        )


class DeviceBucket:
    """One id's token bucket: :meth:`admit` says whether its next model input may pass.

    The id's notice interval is kept here rather than in a :class:`LogLimiter` keyed by id,
    whose table would keep every id that ever flooded: here it goes with the id's buffer.
    """

    __slots__ = ("_limit", "_device", "_tokens", "_last", "_dropped")

    def __init__(self, limit: RateLimit, device: str) -> None:
        self._limit = limit
        self._device = device
        self._tokens = limit.capacity
        self._last = -math.inf
        self._dropped = Tally()

    def admit(self, now: float) -> bool:
        """Take a token at ``now``; without one, count the drop and maybe notify the id."""
        limit = self._limit
        if self._refill(now) >= 1.0:
            self._tokens -= 1.0
            return True
        # An input without a token is dropped and also owed: an id that floods stays closed
        # (its messages dropped undecoded) until the rate has paid the excess back, up to one
        # burst's worth. A device within its share never owes anything.
        self._tokens = max(self._tokens - 1.0, -limit.capacity)
        self._count_drop(now)
        return False

    def closed(self, now: float) -> bool:
        """No token for even one input at ``now``: the id's next message is dropped whole
        (counted with the inputs it is refused, for the notice)."""
        if self._refill(now) >= 1.0:
            return False
        self._count_drop(now)
        return True

    def _refill(self, now: float) -> float:
        """Add the tokens earned since the last call; returns the tokens now."""
        if now > self._last:
            limit = self._limit
            self._tokens = min(limit.capacity, self._tokens + (now - self._last) * limit.rate)
            self._last = now
        return self._tokens

    def _count_drop(self, now: float) -> None:
        count = self._dropped.add(1, now, self._limit.notice_every_s)
        if count:
            self._limit.notify(self._device, count)
