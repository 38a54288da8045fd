"""Tests of harstream.models.har.streams (real numbers, synthetic streams and embeddings)."""

import numpy as np

from harstream.models.har.streams import (
    Segment,
    build_stream,
    change_delays,
    score_streams,
    stream_orders,
)

CLASSES = ["a", "b", "c"]


def segment(label: int, seconds: int) -> Segment:
    # Samples carry their class in x so that windows can be checked by content.
    xyz = np.zeros((seconds * 20, 3), np.float32)
    xyz[:, 0] = label
    return Segment(label, xyz)


def test_windows_straddle_changes_and_are_labelled_by_their_end() -> None:
    stream = build_stream("s", [segment(0, 10), segment(1, 10)], (0, 1), hop=20)
    assert len(stream.x) == (400 - 80) // 20 + 1
    straddling = (stream.x[:, 0, 0] == 0) & (stream.x[:, -1, 0] == 1)
    assert straddling.sum() == 3  # windows starting 1, 2, 3 s before the change at 10 s
    np.testing.assert_array_equal(stream.label, stream.x[:, -1, 0])
    assert np.all(stream.offset[straddling] < 0)
    assert stream.offset[stream.end == 200 + 80].item() == 0
    assert stream.changes == [(200, 1, 400)]


def test_orders_start_with_the_file_order_and_are_seeded() -> None:
    orders = stream_orders(6, 3, seed=7)
    assert orders[0] == tuple(range(6)) and len(orders) == 4
    assert orders == stream_orders(6, 3, seed=7)
    assert all(sorted(o) == list(range(6)) for o in orders)


def test_no_change_between_segments_of_the_same_activity() -> None:
    stream = build_stream("s", [segment(2, 10), segment(2, 10), segment(0, 10)], (0, 1, 2))
    assert stream.changes == [(400, 0, 600)]


def test_delay_counts_from_the_change_to_the_first_right_window() -> None:
    stream = build_stream("s", [segment(0, 30), segment(1, 30), segment(2, 30)], (0, 1, 2))
    pred = stream.label.copy()
    late = (stream.end - 1 >= 600) & (stream.end - 1 < 600 + 5 * 20)
    pred[late] = 0  # wrong on the windows ending 1..5 s after the change at 30 s
    pred[stream.end - 1 >= 1200] = 1  # and never reaches "c"
    delays, missed = change_delays(pred, stream)
    np.testing.assert_allclose(delays, [6.0])  # the next window ends 6 s after the change
    assert missed == 1
    scores = score_streams([stream], [pred], CLASSES)
    assert scores["changes"] == 2 and scores["missed_rate"] == 0.5
    assert scores["accuracy"] == (pred == stream.label).mean()


def test_a_change_is_missed_after_the_delay_limit() -> None:
    stream = build_stream("s", [segment(0, 10), segment(1, 200)], (0, 1))
    pred = np.where(stream.end - 1 >= 200 + 130 * 20, 1, 0)
    assert change_delays(pred, stream, max_delay_s=120.0)[1] == 1
    assert change_delays(pred, stream, max_delay_s=150.0)[1] == 0
