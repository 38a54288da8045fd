"""The dashboard's aggregate: coalesced deltas, bounded memory, eviction, the service figures."""

from __future__ import annotations

from conftest import prediction

from harstream.dashboard.board import HISTORY_PER_S, Board


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_delta_carries_each_changed_device_once() -> None:
    clock = Clock()
    board = Board(clock=clock)
    for i in range(5):
        board.on_prediction("a", prediction("a", ["walking", "sitting"][i % 2]))
        clock.t += 0.05
    board.on_prediction("b", prediction("b", "stairs"))
    rows = board.delta()["rows"]
    assert sorted(r["id"] for r in rows) == ["a", "b"]
    assert {r["id"]: r["a"] for r in rows} == {"a": "walking", "b": "stairs"}
    assert board.delta()["rows"] == []  # nothing changed since


def test_history_is_bounded_in_time_and_rate() -> None:
    clock = Clock()
    board = Board(history_s=60.0, clock=clock)
    for _ in range(20 * 300):  # 5 minutes of a device answering 20 times a second
        board.on_prediction("fast", prediction("fast", "walking"))
        clock.t += 0.05
    history = board.detail("fast")["history"]
    assert len(history) <= 60 * HISTORY_PER_S + 1
    assert history[0][0] >= clock.t - 60.0 - 0.05


def test_silent_devices_are_evicted_and_the_device_count_is_capped() -> None:
    clock = Clock()
    board = Board(evict_after_s=60.0, max_devices=3, clock=clock)
    for name in ("a", "b", "c", "d"):
        board.on_prediction(name, prediction(name, "walking"))
    delta = board.delta()
    assert delta["removed"] == ["a"]  # the least recently seen went first
    assert sorted(r["id"] for r in delta["rows"]) == ["b", "c", "d"]
    clock.t += 30
    board.on_prediction("d", prediction("d", "walking"))
    clock.t += 31
    assert board.delta()["removed"] == ["b", "c"]
    assert [r["id"] for r in board.snapshot()["rows"]] == ["d"]


def test_state_places_the_activity_start_on_the_dashboard_clock() -> None:
    clock = Clock()
    board = Board(clock=clock)
    board.on_prediction("a", prediction("a", "sitting"))  # window.end 1_700_000_003.95
    board.on_state("a", {"activity": "sitting", "since": 1_700_000_000.0}, live=True)
    (row,) = board.delta()["rows"]
    assert abs((clock.t - row["since"]) - 3.95) < 1e-6


def test_service_figures() -> None:
    clock = Clock()
    board = Board(clock=clock)
    board.on_status({"status": "online", "models": {"har": "har-cnn@1"}, "time": 1.0})
    for i in range(100):
        board.on_prediction("a", prediction("a", "walking", latency_ms=float(i + 1)))
    board.on_error("a", {"error": "wrong_type", "message": "x"})
    board.on_error("b", {"error": "empty"})
    clock.t += 1
    service = board.delta()["service"]
    assert service["status"] == "online" and service["models"] == {"har": "har-cnn@1"}
    assert service["latency_ms"]["p50"] == 50.5 and service["latency_ms"]["n"] == 100
    assert service["errors"] == {"wrong_type": 1, "empty": 1}
    assert service["windows_per_s"] == 100.0  # the one full second so far
    clock.t += 61
    assert board.delta()["service"]["latency_ms"] is None  # older than a minute


def test_text_and_series_pair_inputs_with_answers() -> None:
    board = Board()
    board.on_text("phone", "hello")
    board.on_text_class("phone", {"label": "ham", "confidence": 0.9})
    board.on_text_class("other", {"label": "spam"})
    board.on_series("meter", [1.0, 2.0, 3.0])
    board.on_forecast("meter", {"forecast": 4.0, "horizon": 1, "after": {"seq": 3}})
    snap = board.snapshot()
    assert [(t["id"], t["text"], t["label"]) for t in snap["texts"]] == [
        ("other", None, "spam"),
        ("phone", "hello", "ham"),
    ]
    assert snap["series"]["meter"] == {
        "values": [(1, 1.0), (2, 2.0), (3, 3.0)],
        "forecasts": [(4.0, 4.0)],
    }


def test_malformed_fields_are_ignored() -> None:
    board = Board()
    board.on_prediction("a", {"activity": 3})
    board.on_prediction("b", {"activity": "walking", "confidence": "high", "raw": [1]})
    board.on_calibration("b", {"classes": "all"}, live=False)
    board.on_calibration("b", {"classes": {"sitting": float("inf"), "walking": 4}}, live=False)
    board.on_status({"status": 1, "models": ["x"]})
    board.on_forecast("s", {"forecast": 1.0, "horizon": "one", "after": {"seq": 2}})
    (row,) = board.delta()["rows"]
    assert row["id"] == "b" and row["c"] is None and row["r"] is None
    assert row["k"] == {"walking": 4}
