"""``harstream replay --calibrate-seconds``: labels through a real broker to the service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harstream.cli import main
from harstream.replay.labelling import calibration_labels
from harstream.replay.pacing import Track

SECONDS = 50  # per activity: windows starting 40-46 s in are scored, 7 per activity


def _write(path: Path, subject: str) -> Path:
    rng = np.random.default_rng(1)
    lines = []
    for code, offset in (("A", 0.0), ("D", 4.0)):  # walking, then sitting
        for x, y, z in rng.normal(offset, 2, size=(SECONDS * 20, 3)) + [9.8, 0, 0]:
            lines.append(f"{subject},{code},{x:.5f},{y:.5f},{z:.5f};")
    path.write_text("\n".join(lines) + "\n")
    return path


def _replay(broker, prefix: str, path: Path, out: Path, *extra: str) -> dict:
    argv = ["replay", str(path), "--broker", broker.url, "--mqtt-version", broker.mqtt_version]
    argv += ["--prefix", prefix, "--quiet", "--speed", "max", "-k", "20", "--compare"]
    argv += ["--json", str(out), "--wait", "5", *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_labels_cover_the_first_seconds_of_each_activity() -> None:
    labels = np.array(["walking"] * 300 + ["sitting"] * 50 + ["walking"] * 100)
    track = Track("d", np.arange(450) / 20, np.zeros((450, 3)), labels, timed=False)
    # 20 s = 400 samples of the first walk (it is 300), none of the 2.5 s sitting
    assert calibration_labels(track, 20) == [("walking", 0, 299), ("walking", 350, 449)]
    assert calibration_labels(track, 4) == [("walking", 0, 79), ("walking", 350, 429)]


def test_replay_calibrates_the_device_and_scores_as_evaluate(
    serve, broker, prefix, tmp_path
) -> None:
    serve(calibration_store=None)
    path = _write(tmp_path / "rec.txt", "1700")
    report = _replay(broker, prefix, path, tmp_path / "r.json", "--calibrate-seconds", "20")
    assert report["labels_sent"] == 2
    # the retained calibration message: 17 labelled windows (0-4 s ... 16-20 s) per activity
    assert report["calibrations"] == {"1700": {"walking": 17, "sitting": 17}}
    cal = report["calibrated"]
    assert cal["windows"] == 2 * 7 and cal["seconds"] == 20.0 and cal["score_from_s"] == 40.0
    assert 0.0 <= cal["accuracy"] <= 1.0 and 0.0 <= cal["raw_accuracy"] <= 1.0
    assert cal["calibrated_share"] == 1.0  # both activities were labelled before 40 s in

    plain = _replay(broker, prefix, path, tmp_path / "p.json", "--device-id", "plain-1700")
    assert "calibrated" not in plain and "labels_sent" not in plain


@pytest.mark.parametrize("seconds", ["3", "41"])
def test_calibrate_seconds_out_of_range_is_refused(tmp_path, capsys, seconds: str) -> None:
    path = _write(tmp_path / "rec.txt", "1700")
    argv = ["replay", str(path), "--broker", "mqtt://127.0.0.1:1", "--calibrate-seconds", seconds]
    assert main(argv) == 2
    assert "--calibrate-seconds must be between 4" in capsys.readouterr().err
