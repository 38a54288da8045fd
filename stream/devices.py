"""The per-id table every route keeps: one buffer per device or stream id, created on first
use, the least recently seen evicted when full and idle ones after a TTL."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from harstream.stream.routes import Buffer


class BufferTable:
    """One route's per-id buffers: at most ``max_ids``, idle ones evicted after ``ttl_s``.

    When full, the least recently seen id is evicted to make room (``on_evict("capacity")``);
    ids idle for longer than ``ttl_s`` go on :meth:`evict_idle` (``on_evict("idle")``).
    """

    def __init__(
        self,
        factory: Callable[[str], Buffer],
        *,
        max_ids: int,
        ttl_s: float,
        on_evict: Callable[[str, str], None],
    ) -> None:
        if max_ids < 1 or ttl_s <= 0:
            raise ValueError("max_ids must be >= 1 and ttl_s > 0")
        self._factory = factory
        self._max = max_ids
        self._ttl = ttl_s
        self._on_evict = on_evict
        self._items: OrderedDict[str, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, device_id: str) -> bool:
        return device_id in self._items

    def get(self, device_id: str, now: float) -> Buffer:
        """The buffer of ``device_id`` (created on first use), marked as seen at ``now``."""
        entry = self._items.get(device_id)
        if entry is None:
            if len(self._items) >= self._max:
                old, _ = self._items.popitem(last=False)
                self._on_evict(old, "capacity")
            entry = [self._factory(device_id), now]
            self._items[device_id] = entry
        else:
            self._items.move_to_end(device_id)
            entry[1] = now
        return entry[0]

    def entries(self) -> Iterator[tuple[str, Buffer, float]]:
        """``(id, buffer, last seen)``, least recently seen first."""
        for device_id, (buffer, seen) in self._items.items():
            yield device_id, buffer, seen

    def rebuild(
        self, factory: Callable[[str], Buffer], carry: Callable[[Buffer, Buffer], None]
    ) -> None:
        """Create buffers with ``factory`` from now on, and replace every live one by a new
        one from it that ``carry(old, new)`` brings up to date (a model reload); the ids
        keep their place and last-seen time."""
        self._factory = factory
        for device_id, entry in self._items.items():
            new = factory(device_id)
            carry(entry[0], new)
            entry[0] = new

    def remove(self, device_id: str) -> None:
        """Forget ``device_id`` (no eviction is reported)."""
        self._items.pop(device_id, None)

    def evict_idle(self, now: float) -> int:
        """Drop ids not seen for ``ttl_s``; returns how many went."""
        gone = 0
        limit = now - self._ttl
        while self._items:
            device_id, entry = next(iter(self._items.items()))
            if entry[1] >= limit:
                break
            del self._items[device_id]
            self._on_evict(device_id, "idle")
            gone += 1
        return gone
