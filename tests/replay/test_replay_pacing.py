"""Replay pacing: recorded time scaled by the speed, merged across devices, fan-out, loop."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import orjson
import pytest

from harstream.replay.pacing import Chunk, Track, paced, parse_speed, stagger_offsets, track_chunks


def _track(n: int = 40, rate: float = 20.0, device: str = "d1") -> Track:
    return Track(
        device=device,
        t_rel=np.arange(n) / rate,
        xyz=np.zeros((n, 3), np.float32),
        labels=np.array(["walking"] * n, dtype=object),
        timed=False,
        rate_hz=rate,
    )


def test_parse_speed() -> None:
    assert parse_speed("1") == 1.0
    assert parse_speed("2.5") == 2.5
    assert math.isinf(parse_speed("MAX"))
    for bad in ("0", "-1", "fast", "inf"):
        with pytest.raises(ValueError, match="positive number or 'max'"):
            parse_speed(bad)


def test_chunks_keep_recorded_spacing_and_batch_k_samples() -> None:
    chunks = list(track_chunks(_track(45), device="d1", samples_per_message=10, base=100.0))
    assert [len(c.t) for c in chunks] == [10, 10, 10, 10, 5]
    t = np.concatenate([c.t for c in chunks])
    np.testing.assert_allclose(t, 100.0 + np.arange(45) / 20)
    assert chunks[-1].due == pytest.approx(44 / 20)
    assert all(c.regular for c in chunks)


def test_loop_continues_time_without_a_gap() -> None:
    stream = track_chunks(_track(20), device="d1", samples_per_message=20, base=0.0, loop=True)
    first, second, third = next(stream), next(stream), next(stream)
    assert second.t[0] - first.t[-1] == pytest.approx(0.05)
    assert third.t[0] == pytest.approx(2.0)
    assert third.labels is not None and third.labels[0] == "walking"


def test_fan_out_offsets_are_staggered_within_the_spread() -> None:
    assert stagger_offsets(4, 1.0) == [0.0, 0.25, 0.5, 0.75]
    assert stagger_offsets(1, 1.0) == [0.0]
    with pytest.raises(ValueError):
        stagger_offsets(0, 1.0)


def test_paced_merges_devices_in_due_order() -> None:
    offsets = stagger_offsets(3, 0.03)
    streams = [
        track_chunks(_track(10), device=f"d{i}", samples_per_message=1, base=0.0, offset=o)
        for i, o in enumerate(offsets)
    ]
    out = list(paced(streams, math.inf, threading.Event()))
    assert len(out) == 30
    dues = [c.due for c in out]
    assert dues == sorted(dues)
    assert [c.device for c in out[:3]] == ["d0", "d1", "d2"]


def test_speed_scales_wall_time_and_stop_interrupts() -> None:
    def run(speed: float) -> float:
        start = time.monotonic()
        stream = track_chunks(_track(11), device="d", samples_per_message=1, base=0.0)
        assert len(list(paced([stream], speed, threading.Event()))) == 11
        return time.monotonic() - start

    assert run(1.0) >= 0.45  # 0.5 s recorded
    assert run(math.inf) < 0.45
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    start = time.monotonic()
    stream = track_chunks(_track(200), device="d", samples_per_message=1, base=0.0)
    sent = list(paced([stream], 1.0, stop))
    assert time.monotonic() - start < 5.0  # 10 s recorded, stopped early
    assert 0 < len(sent) < 200


def test_readings_go_on_the_wire_without_float32_noise() -> None:
    from harstream.replay.publisher import encode_chunk

    xyz = np.array([[9.8, -0.1, 0.5]], np.float32)
    one = Chunk("w", 0.0, np.array([1.7e9]), xyz, None)
    assert orjson.loads(encode_chunk(one))["x"] == 9.8
    rows = Chunk("w", 0.0, np.array([1.7e9, 1.7e9 + 0.05]), np.repeat(xyz, 2, 0), None)
    assert orjson.loads(encode_chunk(rows))["samples"][0][1:] == [9.8, -0.1, 0.5]
