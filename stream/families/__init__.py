"""The streaming side of each model family, one module per family (``har``, ``text``,
``series``), read top-down in the order a message flows through it:

- decode: ``decode(payload, content_type) -> value``, raising
  :class:`~harstream.stream.routes.PayloadError` for bad bytes;
- buffer: the per-id state that turns values into model inputs (HAR's windows, the last k
  series values, a text message counter), handed to the engine through its ``Sink``;
- encode: ``build(config, predictor=None) -> Route``, which loads the family's model and
  holds the encoder of its output payload.

Everything family-agnostic (engine, service, per-id table, connection, config) stays in
:mod:`harstream.stream`; :mod:`harstream.stream.routes` documents the contract.
"""
