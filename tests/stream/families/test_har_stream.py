"""The HAR family's streaming side, top-down: accel payload decoding (every accepted form, and
every kind of bad input named), then per-device windows (hop, timestamps, resampling, gaps,
drops)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harstream.stream.families.har import (
    BINARY_CONTENT_TYPE,
    Samples,
    WindowBuffer,
    decode_accel,
    encode_binary,
)
from harstream.stream.routes import PayloadError


def test_single_sample_with_and_without_time():
    assert decode_accel(b'{"x": 1, "y": 2.5, "z": -3}').xyz.tolist() == [[1.0, 2.5, -3.0]]
    s = decode_accel(b'{"x": 1, "y": 2, "z": 3, "t": 1700000000.25}')
    assert s.times.tolist() == [1700000000.25] and s.rate_hz == 20.0


def test_batches_with_rate_t0_and_per_row_times():
    s = decode_accel(b'{"samples": [[1, 2, 3], [4, 5, 6]], "rate_hz": 50, "t0": 100}')
    assert s.xyz.tolist() == [[1, 2, 3], [4, 5, 6]] and s.rate_hz == 50
    assert s.times.tolist() == [100.0, 100.02]
    s = decode_accel(b"[[10.0, 1, 2, 3], [10.05, 4, 5, 6]]")
    assert s.times.tolist() == [10.0, 10.05] and s.xyz.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert decode_accel(b'{"samples": [[1, 2, 3]]}').times is None


def test_binary_round_trip_keeps_float32_values_and_times():
    xyz = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    s = decode_accel(encode_binary(xyz, rate_hz=100, t0=1700000000.0))
    np.testing.assert_array_equal(np.asarray(s.xyz, np.float32), xyz)
    assert s.rate_hz == 100 and s.times[1] == pytest.approx(1700000000.01)
    assert decode_accel(encode_binary(xyz), BINARY_CONTENT_TYPE).times is None


MS = 1_764_600_000_000  # Date.now() on 2025-12-01


def test_millisecond_microsecond_and_nanosecond_times_are_seconds_once_decoded():
    s = decode_accel(b'{"x": 1, "y": 2, "z": 3, "t": %d}' % (MS + 50))
    assert s.times.tolist() == [pytest.approx(MS / 1e3 + 0.05, abs=1e-6)]
    s = decode_accel(b'{"samples": [[1, 2, 3], [4, 5, 6]], "t0": %d}' % (MS * 1000))
    assert s.times.tolist() == pytest.approx([MS / 1e3, MS / 1e3 + 0.05], abs=1e-6)
    s = decode_accel(encode_binary([[1, 2, 3]], rate_hz=20, t0=MS * 1e6))
    assert s.times.tolist() == pytest.approx([MS / 1e3], abs=1e-6)
    # per-row times since the device started: the step tells milliseconds
    s = decode_accel(b"[[3600000, 1, 2, 3], [3600050, 4, 5, 6], [3600100, 7, 8, 9]]")
    assert s.times.tolist() == pytest.approx([3600.0, 3600.05, 3600.1])


@pytest.mark.parametrize(
    "payload",
    [
        b'{"x": 1, "y": 2, "z": 3, "t": 5e18}',
        b'{"x": 1, "y": 2, "z": 3, "t": -1}',
        b'{"samples": [[1, 2, 3]], "t0": 1e30}',
        b"[[5e18, 1, 2, 3], [5.00000000005e18, 1, 2, 3]]",
    ],
)
def test_times_no_unit_fits_are_out_of_range(payload):
    with pytest.raises(PayloadError, match="seconds, ms, us or ns") as err:
        decode_accel(payload)
    assert err.value.kind == "out_of_range"


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b'{"x": 1, "y":', "malformed_json"),
        (b'{"x": "1", "y": 2, "z": 3}', "wrong_type"),
        (b'{"x": true, "y": 2, "z": 3}', "wrong_type"),
        (b'"walking"', "wrong_type"),
        (b"[1, 2, 3]", "wrong_type"),
        (b"[[1, 2, 3], [1, 2]]", "wrong_type"),
        (b'[[1, "a", 3]]', "wrong_type"),
        (b'{"samples": [[1, 2, 3]], "rate_hz": 0}', "out_of_range"),
        (b'{"x": 1, "y": 2}', "missing_axes"),
        (b"[[1, 2]]", "missing_axes"),
        (b'{"x": NaN, "y": 2, "z": 3}', "non_finite"),
        (b'{"x": 1e400, "y": 2, "z": 3}', "non_finite"),
        (encode_binary([[math.inf, 0, 0]]), "non_finite"),
        (b"", "empty"),
        (b'{"samples": []}', "empty"),
        (b"[" + b"[1,2,3]," * 5000 + b"[1,2,3]]", "oversize"),
        (bytes(range(256)), "binary_garbage"),
        (b"HSA1 but short", "binary_garbage"),
        (encode_binary([[1, 2, 3]])[:-1], "binary_garbage"),
    ],
)
def test_bad_payloads_are_named(payload, kind):
    with pytest.raises(PayloadError) as err:
        decode_accel(payload)
    assert err.value.kind == kind and err.value.message


def test_binary_content_type_without_magic_is_refused():
    with pytest.raises(PayloadError, match="magic") as err:
        decode_accel(b'{"x": 1, "y": 2, "z": 3}', BINARY_CONTENT_TYPE)
    assert err.value.kind == "binary_garbage"


T0 = 1000.0


class Sink:
    def __init__(self) -> None:
        self.windows: list[tuple[np.ndarray, tuple]] = []
        self.drops: dict[str, int] = {}
        self.details: list[str] = []

    def emit(self, x, info, received, link=None) -> None:
        self.windows.append((x, info))

    def drop(self, reason, n=1, detail="") -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n
        self.details.append(detail)


def timed(values, times, rate=20.0) -> Samples:
    return Samples([[v, -v, 1.0] for v in values], list(times), rate)


@pytest.mark.parametrize(("hop", "expected"), [(20, 5), (40, 3), (80, 2), (1, 81)])
def test_hop(hop, expected):
    sink = Sink()
    buf = WindowBuffer(sink, hop=hop)
    for i in range(160):
        buf.push(Samples([[float(i), 0.0, 0.0]], None, 20.0), wall=T0 + i, mono=0.0)
    assert len(sink.windows) == expected
    x, (start, end, seq, *_) = sink.windows[1]
    assert x[0, 0] == hop and x[-1, 0] == hop + 79 and seq == 2
    assert (start, end) == (T0 + hop, T0 + hop + 79)  # untimed: receive times


def test_emitted_windows_are_copies():
    sink = Sink()
    buf = WindowBuffer(sink, hop=20)
    buf.push(timed(range(100), T0 + np.arange(100) / 20), 0.0, 0.0)
    first, second = sink.windows[0][0], sink.windows[1][0]
    assert first[0, 0] == 0 and second[0, 0] == 20


def test_exact_20hz_timestamps_pass_through_unchanged():
    sink = Sink()
    times = [T0 + i * 0.05 for i in range(80)]
    WindowBuffer(sink).push(timed(range(80), times), 0.0, 0.0)
    ((x, (start, end, *_)),) = sink.windows
    assert start == times[0] and end == times[-1]
    np.testing.assert_array_equal(x[:, 0], np.arange(80))


def _windows(messages) -> list[tuple[list, tuple]]:
    sink = Sink()
    buf = WindowBuffer(sink, hop=20)
    for values, times in messages:
        buf.push(timed(values, times), 0.0, 0.0)
    return [(x.tolist(), info) for x, info in sink.windows]


def test_block_copy_and_per_reading_resampling_give_the_same_windows():
    # 20 Hz readings, one jittered by 10 ms (resampled) mid-stream, then on the grid again:
    # sent 20 per message (blocks copied whole where they can be) or one by one
    times = T0 + np.arange(400) / 20
    times[130] += 0.010
    values = np.arange(400.0)
    blocks = [(values[i : i + 20], times[i : i + 20]) for i in range(0, 400, 20)]
    singles = [(values[i : i + 1], times[i : i + 1]) for i in range(400)]
    by_block, by_reading = _windows(blocks), _windows(singles)
    assert len(by_block) == 17 and by_block == by_reading
    jittered = [row[0] for row in by_block[3][0][69:72]]  # window 4: readings 60-139
    # grid point 130 interpolated 50 of 60 ms from reading 129 to 130; point 131 averages
    # the two readings of its interval (130 and 131)
    assert jittered == pytest.approx([129.0, 129.0 + 5 / 6, 130.5], abs=1e-4)


def test_t0_messages_are_marked_regular_and_cut_like_per_row_times():
    """A message with a t0 is checked against the grid at its ends only: the same windows
    as its per-row times, on the grid, off it by a fraction of a step, at other rates."""
    assert decode_accel(b'{"samples": [[1, 2, 3], [4, 5, 6]], "t0": 100}').regular
    assert decode_accel(encode_binary([[1, 2, 3]] * 3, t0=100.0)).regular
    assert not decode_accel(b"[[10.0, 1, 2, 3], [10.05, 4, 5, 6]]").regular
    rng = np.random.default_rng(3)
    for rate, offset in ((20.0, 0.0), (20.0, 0.0004), (20.0, 0.003), (20.2, 0.0), (50.0, 0.0)):
        messages = []
        t = T0
        for _ in range(30):
            k = int(rng.integers(1, 30))
            xyz = rng.normal(size=(k, 3))
            times = t + offset * (len(messages) % 2) + np.arange(k) / rate
            messages.append((xyz, times))
            t += k / rate
        windows = []
        for regular in (True, False):
            sink = Sink()
            buffer = WindowBuffer(sink)
            for xyz, times in messages:
                buffer.push(Samples(xyz, times, rate, regular), 0.0, 0.0)
            windows.append(sink.windows)
        assert len(windows[0]) == len(windows[1]) > 0
        for (a, info_a), (b, info_b) in zip(*windows, strict=True):
            np.testing.assert_array_equal(a, b)
            assert info_a == info_b


@pytest.mark.parametrize("rate", [50.0, 100.0, 12.5, 19.0, 21.0])
def test_other_rates_are_resampled_to_20hz(rate):
    sink = Sink()
    n = int(4.2 * rate)
    times = T0 + np.arange(n) / rate
    WindowBuffer(sink).push(timed(times - T0, times, rate), 0.0, 0.0)  # value = seconds
    x, (start, end, *_) = sink.windows[0]
    grid = np.arange(80) / 20
    # interpolated points are exact; interval means lag the grid by less than one interval
    assert x[0, 0] == 0 and np.all(x[1:, 0] <= grid[1:] + 1e-6)
    assert np.all(x[1:, 0] > grid[1:] - 0.05) and np.all(np.diff(x[:, 0]) > 0)
    assert start == T0 and end == pytest.approx(T0 + 3.95)


def test_fast_devices_are_low_pass_filtered_not_aliased():
    sink = Sink()
    times = T0 + np.arange(450) / 100
    wobble = np.sin(2 * np.pi * 25 * (times - T0))  # 25 Hz: far above what 20 Hz can hold
    WindowBuffer(sink).push(timed(wobble, times, 100.0), 0.0, 0.0)
    x, _ = sink.windows[0]
    assert np.abs(x[1:, 0]).max() < 0.35  # plain point sampling would keep amplitude ~1


def test_untimed_batch_at_another_rate_is_resampled():
    sink = Sink()
    vals = np.arange(250) / 50
    WindowBuffer(sink).push(Samples([[v, 0, 0] for v in vals], None, 50.0), 5.0, 0.0)
    x, (start, end, *_) = sink.windows[0]
    assert x[0, 0] == 0 and np.all(np.abs(x[1:, 0] - np.arange(1, 80) / 20) < 0.05)
    assert start == end == 5.0


def test_gap_restarts_and_drops_are_counted_and_described():
    sink = Sink()
    buf = WindowBuffer(sink, max_gap_s=1.0)
    buf.push(timed(range(30), T0 + np.arange(30) / 20), 0.0, 0.0)
    buf.push(timed([0], [T0 + 29 / 20]), 0.0, 0.0)  # duplicate
    buf.push(timed([0], [T0 + 10 / 20]), 0.0, 0.0)  # out of order
    assert sink.drops == {"duplicate": 1, "out_of_order": 1}
    later = T0 + 60 + np.arange(80) / 20
    buf.push(timed(range(80), later), 0.0, 0.0)
    assert sink.drops["gap"] == 30
    assert "the same time" in sink.details[0] and "time order" in sink.details[1]
    assert "58.55 s apart, more than --max-gap 1 s (times below 1e9" in sink.details[2]
    assert "30 sample(s) were discarded" in sink.details[2]
    ((_, info),) = sink.windows
    start, seq, segment = info.start, info.seq, info.segment
    assert start == later[0] and seq == 1
    assert segment == 1, "a window after a gap belongs to a new segment (a fresh smoother)"


def test_switching_between_timed_and_untimed_starts_over():
    sink = Sink()
    buf = WindowBuffer(sink)
    buf.push(timed(range(50), T0 + np.arange(50) / 20), 0.0, 0.0)
    buf.push(Samples([[0.0, 0.0, 0.0]] * 50, None, 20.0), 7.0, 0.0)
    assert sink.drops == {"gap": 50} and not sink.windows


def test_invalid_hop_is_refused():
    with pytest.raises(ValueError, match="hop"):
        WindowBuffer(Sink(), hop=81)
