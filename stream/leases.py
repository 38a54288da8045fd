"""Who consumes which partition: leases in a JetStream key-value bucket with a time-to-live.

Every worker keeps two kinds of keys alive in the bucket (``harstream_<prefix>_leases``),
both expiring ``ttl`` seconds after their last write (the bucket's max age):

- ``worker.<name>``: the worker is alive; the live workers are the keys present;
- ``partition.<p>``: the worker named in the value consumes partition ``p``.

A worker claims a free partition with ``create`` (atomic: it fails when the key exists),
renews each of its leases with ``update`` on the revision it last wrote (fails when the
lease expired and someone else took it: the worker then stops consuming at once), and
releases one with ``delete``. :func:`plan` decides, from the live workers, how many
partitions a worker should hold: at most ``ceil(P / workers)``. A dead worker's keys
expire after ``ttl``; the others then see its partitions free and claim them. A worker
that joins makes the quota smaller, the others release what is above it (after
handing the buffers over, :mod:`stream.nats_input`) and the newcomer claims them.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Collection, Iterable
from typing import Any

import nats.js.errors

WORKER = "worker."
PARTITION = "partition."


def quota(partitions: int, workers: int) -> int:
    """The most partitions one of ``workers`` live workers should hold."""
    return math.ceil(partitions / max(1, workers))


def plan(
    owned: Collection[int], free: Iterable[int], partitions: int, workers: int
) -> tuple[list[int], list[int]]:
    """``(claim, release)``: free partitions to try to claim (in a random order, so that
    workers starting together do not all race for the same ones) and owned ones to give
    back, keeping this worker at :func:`quota`."""
    room = quota(partitions, workers) - len(owned)
    if room < 0:
        return [], sorted(owned)[room:]
    candidates = list(free)
    random.shuffle(candidates)
    return candidates, []


class Leases:
    """One worker's view of the lease bucket ``kv`` (a nats-py ``KeyValue``)."""

    def __init__(self, kv: Any, worker: str) -> None:
        self.kv = kv
        self.worker = worker
        self._revisions: dict[int, int] = {}

    async def heartbeat(self) -> None:
        await self.kv.put(WORKER + self.worker, b"")

    async def scan(self, partitions: int) -> tuple[int, set[int]]:
        """The number of live workers (at least this one) and the partitions no one holds."""
        try:
            keys = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        workers = {k for k in keys if k.startswith(WORKER)} | {WORKER + self.worker}
        held = {k[len(PARTITION) :] for k in keys if k.startswith(PARTITION)}
        return len(workers), {p for p in range(partitions) if str(p) not in held}

    async def holder(self, partition: int) -> str | None:
        """The worker that holds ``partition`` now, None when no one does."""
        try:
            entry = await self.kv.get(PARTITION + str(partition))
        except nats.js.errors.KeyNotFoundError:
            return None
        return (entry.value or b"").decode()

    async def claim(self, partition: int) -> bool:
        """Take ``partition`` if no one holds it."""
        try:
            self._revisions[partition] = await self.kv.create(
                PARTITION + str(partition), self.worker.encode()
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def hold(self, partition: int) -> None:
        """Take ``partition`` whoever holds it (explicit ``--owns``)."""
        self._revisions[partition] = await self.kv.put(
            PARTITION + str(partition), self.worker.encode()
        )

    async def renew(self, partition: int) -> bool:
        """Extend the lease; False when it is no longer this worker's."""
        try:
            self._revisions[partition] = await self.kv.update(
                PARTITION + str(partition),
                self.worker.encode(),
                last=self._revisions.get(partition, 0),
            )
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            self._revisions.pop(partition, None)
            return False
        return True

    async def release(self, partition: int) -> None:
        """Give ``partition`` back, if it is still this worker's."""
        last = self._revisions.pop(partition, None)
        if last is None:
            return
        # expired and taken meanwhile: then it is not ours to delete
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await self.kv.delete(PARTITION + str(partition), last=last)

    async def leave(self) -> None:
        """Remove this worker's presence key (a clean stop)."""
        await self.kv.delete(WORKER + self.worker)
