"""The generic route: how a model family plugs into the service without copying the engine.

A route is a tuple (topic pattern, decoder, per-id buffer, model,
encoder). The service subscribes to ``<prefix>/+/<suffix>`` for every route and, for each
message, does only cheap work on the MQTT thread::

    payload --decode--> value --buffer.push--> sink.emit(x, info, received)
                                                   |
               ready queue (bounded) <-------------+
                    |
    inference worker: stack many ids' x -> predictor.predict_valid -> encode -> publish

Contract for the pieces (all run on the MQTT network thread except ``encode``):

- ``decode(payload, content_type) -> value`` turns the raw bytes into whatever the
  buffer accepts, or raises :class:`PayloadError` naming what is wrong. It must never
  raise anything else for bad bytes; the service reports the error on
  ``<prefix>/<id>/errors`` and counts it by ``PayloadError.kind``.
- ``new_buffer(id, sink) -> Buffer`` is called once per id (ids are evicted after an idle
  TTL and re-created on their next message). ``Buffer.push(value, wall, mono)`` is called
  per message with the receive time as unix seconds (``wall``) and ``time.perf_counter()``
  (``mono``, for latency); it returns how many samples/items it accepted and calls
  ``sink.emit(x, info, mono)`` for each model input that became ready (``x`` an array of
  the predictor's ``item_shape``, owned by the engine afterwards; ``info`` anything the
  encoder needs, e.g. window times and a sequence number) and ``sink.drop(reason, n,
  detail)`` for input it dropped on purpose (out-of-order, duplicate, ...): the service
  counts it and tells the id on ``<prefix>/<id>/errors`` (error ``reason``, with
  ``detail`` saying what happened; rate-limited per id, see :mod:`stream.notices`). It
  may raise PayloadError too.
  A buffer that holds state worth keeping across a planned restart also implements
  :class:`Restorable` (``snapshot`` / ``restore``).
  A buffer whose consecutive inputs overlap may pass ``sink.emit(x, info, mono, link)``
  with a :class:`Link`: where the route has a ``stepper``, the engine then computes an
  input that continues the id's previous one incrementally (see :class:`Link`).
- ``predictor`` is a :class:`models.predictor.Predictor` (bucketed jit, pre-compiled);
  ``stepper`` its incremental programs for the route's inputs (``predictor.stepper(hop)``),
  or None.
- ``encode(id, info, probs, predictor, latency_ms) -> bytes`` builds the output payload
  from one row of the predictor's output (a tuple of rows, one per output, when the
  predictor's forward returns several, as HAR's returns probabilities and embeddings);
  it runs on the inference worker thread, which encodes one id's inputs in the order
  they were emitted (so per-id state reached through ``info``, e.g. a filter over
  consecutive outputs, needs no lock). It may return
  ``(payload, extras)`` instead: each :class:`Extra` is published too, on
  ``<prefix>/<id>/<extra.suffix>`` (e.g. a retained state that changes now and then).

A family adds a module ``stream/families/<family>.py`` (decode, buffer, then
``build(config, predictor=None) -> Route`` with its encoder) and its entry in the table of
families (:mod:`harstream.families`); ``harstream serve --families`` then serves it with the
same batching engine, metrics, error reporting and lifecycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from harstream.models.predictor import Predictor, Stepper


class PayloadError(ValueError):
    """Bad input from a device; ``kind`` is a short stable name used in errors and metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class RouteUnavailable(RuntimeError):
    """A family's route module or shipped model is not available in this installation."""


class Carry:
    """What an incremental model kept of the last input of an id's run of consecutive
    inputs, for the next one: ``state`` (None before the run's first input is computed),
    ``n``, the number of the input it belongs to, and ``by``, the stepper that computed it
    (a reloaded model's stepper does not reuse another's state). Only the inference worker
    reads and writes them; a buffer makes a new one whenever its inputs stop following
    each other."""

    __slots__ = ("state", "n", "by")

    def __init__(self) -> None:
        self.state: np.ndarray | None = None
        self.n = -1
        self.by: Any = None


class Link(NamedTuple):
    """An input's place in its id's run: the run's :class:`Carry` and the input's number
    (1 and up, so a new carry's ``n`` of -1 belongs to none).

    Inputs of one run follow each other: each is the previous one shifted by the route's
    hop. The engine steps input ``n`` from the carry's state when that state belongs to
    input ``n - 1`` (nothing in between was dropped), and otherwise computes it in full;
    either way it leaves the input's own state in the carry.
    """

    carry: Carry
    n: int


class Sink(Protocol):
    """Where a buffer hands over ready model inputs and reports deliberate drops."""

    def emit(self, x: np.ndarray, info: Any, received: float, link: Link | None = None) -> None: ...

    def drop(self, reason: str, n: int = 1, detail: str = "") -> None: ...


class Buffer(Protocol):
    """Per-id state between messages (a ring buffer, the last k values, or nothing)."""

    def push(self, value: Any, wall: float, mono: float) -> int: ...


@runtime_checkable
class Restorable(Protocol):
    """A buffer whose state survives a planned restart (saved by :mod:`stream.state`).

    ``snapshot()`` returns plain JSON values and numpy float arrays; ``restore(snapshot)``
    on a fresh buffer of the same route makes it behave exactly like the saved one, or
    raises ValueError (e.g. the snapshot was taken with another window layout).
    """

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: Mapping[str, Any]) -> None: ...


class Extra(NamedTuple):
    """A message an encoder publishes besides its result, on ``<prefix>/<id>/<suffix>``.

    A retained one is published at QoS 1 whatever ``--qos`` says: it is sent once per
    change, and the broker keeps it for clients that subscribe later.
    """

    suffix: str
    payload: bytes
    retain: bool = False


Decoder = Callable[[bytes, "str | None"], Any]


class Control(NamedTuple):
    """A second input topic of a family that steers an id's buffer instead of feeding it
    (HAR's labels on ``<prefix>/<id>/label``): ``decode(payload, content_type) -> value``,
    then ``apply(buffer, value, wall)`` on the id's buffer, both on the MQTT thread, both
    raising :class:`PayloadError` for bad input (reported like the input topic's errors)."""

    decode: Decoder
    apply: Callable[[Any, Any, float], None]


BufferFactory = Callable[[str, Sink], Buffer]
Encoder = Callable[
    [str, Any, np.ndarray, "Predictor", float], "bytes | tuple[bytes, Sequence[Extra]]"
]


@dataclass(frozen=True)
class Route:
    """One model family on the bus: ``<prefix>/+/<suffix>`` in, ``<prefix>/<id>/<out_suffix>`` out.

    ``family`` names it in logs, metrics labels and the status message. ``real_rate`` is
    how many model inputs per second a real-time source of the family makes: the per-device
    rate limit (``--device-rate-margin``) is a multiple of it. The default, one input per
    second, is that of the families with one input per message (text, series: a person or a
    meter sending a message a second); HAR sets ``rate_hz / hop`` windows per second.
    ``controls`` are the family's other input topics (``<prefix>/+/<suffix>`` each, by
    suffix), which act on the same per-id buffers (:class:`Control`).
    """

    family: str
    suffix: str
    out_suffix: str
    decode: Decoder
    new_buffer: BufferFactory
    predictor: Predictor
    encode: Encoder
    real_rate: float = 1.0
    controls: Mapping[str, Control] = field(default_factory=dict)  # by topic suffix
    stepper: Stepper | None = None


def load_family_predictor(family: str, path: Any, max_batch: int) -> Predictor:
    """The family's predictor from ``path``, or its shipped model when ``path`` is None.

    A missing shipped model raises :class:`RouteUnavailable` (the family is skipped under
    the default ``--families``); a bad explicit ``path`` raises ``CheckpointError``.
    """
    from harstream.families import default_checkpoint, load_predictor
    from harstream.models.checkpoint import CheckpointError

    if path is None:
        try:
            path = default_checkpoint(family)
        except CheckpointError as exc:
            raise RouteUnavailable(str(exc)) from None
    return load_predictor(path, family=family, max_batch=max_batch)
