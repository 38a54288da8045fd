"""Scoring predictions: truth lookup by window times, windows expected, the report."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from harstream.replay.compare import Scoreboard, TruthLog, WindowCounter, format_report, percentiles
from harstream.replay.pacing import Chunk


def _chunk(device: str, t: np.ndarray, labels: list[str] | None) -> Chunk:
    xyz = np.zeros((t.size, 3), np.float32)
    return Chunk(device, float(t[-1]), t, xyz, None if labels is None else np.array(labels))


def _prediction(device: str, start: float, end: float, activity: str, raw: object = None) -> bytes:
    """A prediction; ``raw`` a window's own activity (str) or the ``raw`` value as is."""
    doc = {
        "device": device,
        "activity": activity,
        "confidence": 0.9,
        "probs": {"walking": 0.5, "sitting": 0.5},
        "window": {"start": float(start), "end": float(end), "samples": 80},
        "model": "m@1",
        "latency_ms": 2.0,
    }
    if raw is not None:
        doc["raw"] = {"activity": raw, "confidence": 0.5} if isinstance(raw, str) else raw
    return orjson.dumps(doc)


def test_window_label_is_the_majority_of_its_samples_and_latency_is_measured() -> None:
    truth = TruthLog()
    t = 1000 + np.arange(100) / 20
    labels = ["walking"] * 50 + ["sitting"] * 50
    truth.record(_chunk("d", t[:60], labels[:60]), sent_at=10.0)
    truth.record(_chunk("d", t[60:], labels[60:]), sent_at=11.0)
    first = truth.lookup("d", t[0], t[79])  # 50 walking, 30 sitting
    assert first.ours and first.label == "walking" and first.sent_at == 11.0
    later = truth.lookup("d", t[20], t[99])  # 30 walking, 50 sitting
    assert later.label == "sitting"
    assert not truth.lookup("d", t[0] - 5, t[79]).ours  # began before this run
    assert not truth.lookup("other", t[0], t[79]).ours


def test_bounded_log_keeps_the_recent_past() -> None:
    truth = TruthLog(capacity=100)
    for block in range(10):
        t = block * 10 + np.arange(200) / 20
        truth.record(_chunk("d", t, ["walking"] * 200), sent_at=float(block))
    assert truth.lookup("d", 95.0, 99.0).label == "walking"
    assert truth.lookup("d", 20.0, 24.0).label is None  # forgotten, but still this run's


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        (np.arange(79) / 20, 0),
        (np.arange(80) / 20, 1),
        (np.arange(160) / 20, 5),
        (np.concatenate([np.arange(100) / 20, 20 + np.arange(100) / 20]), 4),  # a gap
        (np.arange(400) / 50, 5),  # 50 Hz for 8 s: 160 samples at 20 Hz after resampling
    ],
)
def test_windows_expected_follow_the_services_rules(times: np.ndarray, expected: int) -> None:
    counter = WindowCounter(hop=20, max_gap=1.0)
    for start in range(0, times.size, 7):  # in uneven messages
        counter.add(times[start : start + 7])
    assert counter.expected == expected


def test_out_of_order_samples_are_not_counted() -> None:
    counter = WindowCounter()
    counter.add(np.arange(80) / 20)
    counter.add(np.arange(40) / 20)  # old timestamps: dropped by the service
    assert counter.expected == 1


def test_scoreboard_report_has_the_contract_keys() -> None:
    truth = TruthLog()
    t = np.arange(120) / 20
    truth.record(_chunk("d", t, ["walking"] * 60 + ["sitting"] * 60), sent_at=0.0)
    board = Scoreboard(truth, {"d"})
    board.on_prediction(_prediction("d", t[0], t[79], "walking"), received_at=0.005)
    board.on_prediction(_prediction("d", t[40], t[119], "walking"), received_at=0.010)
    board.on_prediction(_prediction("elsewhere", t[0], t[79], "walking"), received_at=0.010)
    board.on_prediction(b"not json", received_at=0.010)
    assert board.running_accuracy == 0.5
    report = board.report(windows_expected=3, simulated=True)
    assert report["accuracy"] == 0.5
    assert report["windows_expected"] == 3 and report["windows_received"] == 2
    assert report["bad_predictions"] == 1
    assert report["latency_ms"]["max"] == pytest.approx(10.0)
    assert report["confusion"] == [[1, 0], [1, 0]]
    text = format_report(report)
    assert text.startswith("SIMULATED") and "windows expected 3, received 2" in text
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}


def test_raw_accuracy_is_of_the_windows_own_answer_and_defaults_to_the_published_one() -> None:
    truth = TruthLog()
    t = np.arange(160) / 20
    truth.record(_chunk("d", t, ["walking"] * 160), sent_at=0.0)
    truth.record(_chunk("old", t, ["walking"] * 160), sent_at=0.0)
    board = Scoreboard(truth)
    flicker = {"activity": "sitting", "confidence": 0.6}
    board.on_prediction(_prediction("d", t[0], t[79], "walking", raw=flicker))  # smoothed right
    board.on_prediction(_prediction("d", t[20], t[99], "walking", raw={"activity": "walking"}))
    board.on_prediction(_prediction("old", t[40], t[119], "sitting"))  # no raw: raw = activity
    board.on_prediction(_prediction("d", t[60], t[139], "walking", raw=["sitting"]))  # malformed
    report = board.report(windows_expected=4)
    assert report["bad_predictions"] == 1 and report["windows_scored"] == 3
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["raw_accuracy"] == pytest.approx(1 / 3)
    assert "of each window's own (raw) answer 0.3333" in format_report(report)
    assert Scoreboard(TruthLog()).report(windows_expected=0)["raw_accuracy"] is None


def test_the_scoreboard_counts_the_flips_smoothing_removed() -> None:
    truth = TruthLog()
    t = np.arange(200) / 20
    truth.record(_chunk("d", t, None), sent_at=0.0)
    board = Scoreboard(truth, {"d"})
    raw = ["walking", "sitting", "walking", "walking", "sitting", "sitting"]
    shown = ["walking", "walking", "walking", "walking", "walking", "sitting"]
    for k, (r, a) in enumerate(zip(raw, shown, strict=True)):
        board.on_prediction(_prediction("d", t[20 * k], t[20 * k + 79], a, raw=r))
    assert (board.raw_flips, board.flips) == (3, 1)
    assert board.latest_copy()["d"].raw == "sitting"
