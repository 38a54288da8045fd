"""The HAR route: ``<prefix>/<id>/accel`` readings -> windows -> ``<prefix>/<id>/activity``."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from harstream.stream.families.har import WindowBuffer, decode_accel
from harstream.stream.routes import Route, Sink, load_family_predictor

FAMILY = "har"


def build(config: Any, predictor: Any = None) -> Route:
    """The HAR route for ``config`` (a ServeConfig), loading ``config.model`` unless given."""
    if predictor is None:
        predictor = load_family_predictor(FAMILY, config.model, config.max_batch)
    window, axes = predictor.item_shape
    if not 1 <= config.hop <= window:
        raise ValueError(f"--hop must be between 1 and the window {window}, got {config.hop}")
    rate_hz = float(predictor.meta.get("rate_hz", 20.0))
    labels = list(predictor.labels)
    tag = predictor.tag

    def new_buffer(device: str, sink: Sink) -> WindowBuffer:
        return WindowBuffer(
            sink,
            window=window,
            axes=axes,
            hop=config.hop,
            rate_hz=rate_hz,
            max_gap_s=config.max_gap,
        )

    def encode(device: str, info: Any, probs: np.ndarray, _p: Any, latency_ms: float) -> bytes:
        start, end, seq = info
        values = probs.tolist()
        best = int(probs.argmax())
        return orjson.dumps(
            {
                "device": device,
                "activity": labels[best],
                "confidence": values[best],
                "probs": dict(zip(labels, values, strict=True)),
                "window": {"start": start, "end": end, "samples": window},
                "model": tag,
                "seq": seq,
                "latency_ms": round(latency_ms, 3),
            }
        )

    # a real device makes a window every hop samples at the model's rate, however fast it samples
    real_rate = rate_hz / config.hop
    return Route(
        FAMILY, "accel", "activity", decode_accel, new_buffer, predictor, encode, real_rate
    )
