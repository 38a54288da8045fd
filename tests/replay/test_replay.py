"""``harstream replay`` through a real broker to the in-process service, every file layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harstream.cli import main

PREFIX = "replaytest"  # other tests' services listen on "har"; keep predictions apart
N = 160  # 8 s at 20 Hz: windows at samples 80, 100, ..., 160 -> 5 per device
WINDOWS = 1 + (N - 80) // 20
T0_NS = 49_105_962_326_000  # WISDM v1.1 style: nanoseconds since boot


def _signal(n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, size=(n, 3)) + [9.8, 0, 0]


def _labels(n: int = N) -> list[str]:
    return ["walking" if i < n // 2 else "sitting" for i in range(n)]


def write_wisdm2019(path: Path, subjects: tuple[str, ...] = ("1650",), n: int = N) -> Path:
    codes = {"walking": "A", "sitting": "D"}
    lines = []
    for s, subject in enumerate(subjects):
        for label, (x, y, z) in zip(_labels(n), _signal(n, s), strict=True):
            lines.append(f"{subject},{codes[label]},{x:.5f},{y:.5f},{z:.5f};")
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_timestamped(path: Path, subject: str, names: dict[str, str]) -> Path:
    """``subject,activity,timestamp_ns,x,y,z;`` lines, the layout WISDM 2019 and v1.1 share."""
    rows = zip(_labels(), _signal(), strict=True)
    path.write_text(
        "".join(
            f"{subject},{names[label]},{T0_NS + i * 50_000_000},{x:.5f},{y:.5f},{z:.5f};\n"
            for i, (label, (x, y, z)) in enumerate(rows)
        )
    )
    return path


def write_wisdm2019_ts(path: Path) -> Path:
    return _write_timestamped(path, "1651", {"walking": "A", "sitting": "D"})


def write_wisdm_v11(path: Path) -> Path:
    return _write_timestamped(path, "33", {"walking": "Walking", "sitting": "Sitting"})


def write_csv(path: Path) -> Path:
    rows = zip(_labels(), _signal(), strict=True)
    body = "".join(
        f"{1700000000 + i * 0.05:.3f},{x:.5f},{y:.5f},{z:.5f},{label},csvsubject\n"
        for i, (label, (x, y, z)) in enumerate(rows)
    )
    path.write_text("t,x,y,z,label,subject\n" + body)
    return path


@pytest.fixture(scope="module")
def service(broker, har_predictor):
    """The service in this process, on the test broker, answering under PREFIX."""
    from harstream.stream.config import ServeConfig
    from harstream.stream.connection import broker_config
    from harstream.stream.service import Service

    cfg = broker_config(
        {"broker": broker.url, "mqtt_version": broker.mqtt_version},
        default_client_id="replay-test-service",
    )
    config = ServeConfig(broker=cfg, families=["har"], prefix=PREFIX, max_batch=16)
    with Service(config, predictors={"har": har_predictor}) as svc:
        yield svc


def replay(broker, *args: str, tmp_path: Path, prefix: str = PREFIX, wait: float = 5) -> dict:
    out = tmp_path / "report.json"
    argv = ["replay", *args, "--broker", broker.url, "--mqtt-version", broker.mqtt_version]
    argv += ["--prefix", prefix, "--quiet"]
    argv += ["--json", str(out), "--wait", str(wait)]
    assert main(argv) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    "writer",
    [write_wisdm2019, write_wisdm2019_ts, write_wisdm_v11, write_csv],
    ids=lambda w: w.__name__,
)
def test_every_layout_replays_with_correct_counts(service, broker, tmp_path, writer) -> None:
    path = writer(tmp_path / "rec.txt")
    report = replay(broker, str(path), "--speed", "max", "-k", "10", "--compare", tmp_path=tmp_path)
    assert report["windows_expected"] == WINDOWS
    assert report["windows_received"] == WINDOWS
    assert report["windows_scored"] == WINDOWS  # every window matched to its true label
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["macro_f1"] <= 1.0
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["max"]
    assert report["samples_sent"] == N and report["messages_sent"] == N // 10
    assert sum(map(sum, report["confusion"])) == WINDOWS
    assert report["models"] == {"har-cnn@test": WINDOWS}
    assert report["service_errors"] == {}  # the default limit lets a short replay through


def test_csv_columns_of_other_names_are_mapped(service, broker, tmp_path, capsys) -> None:
    path = write_csv(tmp_path / "app.csv")
    text = path.read_text().replace("t,x,y,z,label,subject", "time,ax,ay,az,activity,subject", 1)
    path.write_text(text)
    with pytest.raises(SystemExit):
        main(["replay", str(path), "--columns", "t=time,x"])
    assert "'x' is not FIELD=COLUMN" in capsys.readouterr().err
    report = replay(
        broker, str(path), "--columns", "t=time,x=ax,y=ay,z=az,label=activity",
        "--device-id", "mapped",  # the unmapped CSV's replay used its subject's id already
        "--speed", "max", "-k", "10", "--compare", tmp_path=tmp_path,
    )  # fmt: skip
    assert report["windows_expected"] == report["windows_received"] == WINDOWS
    assert report["windows_scored"] == WINDOWS  # the mapped label column was read


def test_fan_out_subjects_single_samples_and_binary(service, broker, tmp_path) -> None:
    path = write_wisdm2019(tmp_path / "two.txt", subjects=("1660", "1661"))
    report = replay(
        broker, str(path), "--speed", "max", "--devices", "3", "--compare", tmp_path=tmp_path
    )
    assert report["devices"] == 6  # 2 subjects x 3 copies
    assert report["windows_expected"] == report["windows_received"] == 6 * WINDOWS
    assert report["messages_sent"] == 6 * N  # one sample per message by default
    binary = replay(
        broker, str(path), "--speed", "max", "-k", "20", "--binary", "--qos", "0",
        "--device-id", "bin", "--compare", tmp_path=tmp_path,
    )  # fmt: skip
    assert binary["windows_expected"] == binary["windows_received"] == 2 * WINDOWS


def test_a_replay_faster_than_the_services_limit_is_told_so(broker, har_predictor, tmp_path):
    from harstream.stream.config import ServeConfig
    from harstream.stream.connection import broker_config
    from harstream.stream.service import Service

    cfg = broker_config(
        {"broker": broker.url, "mqtt_version": broker.mqtt_version},
        default_client_id="replay-limit-test-service",
    )
    # 1 window/s after a burst of 2: a --speed max replay of 5 windows loses some
    config = ServeConfig(
        broker=cfg,
        families=["har"],
        prefix="replaylimit",
        max_batch=16,
        device_rate_margin=1.0,
        device_burst=2.0,
    )
    path = write_wisdm2019(tmp_path / "fast.txt", ("1675",))
    with Service(config, predictors={"har": har_predictor}):
        report = replay(
            broker, str(path), "--speed", "max", "-k", "10", "--compare",
            tmp_path=tmp_path, prefix="replaylimit", wait=1,
        )  # fmt: skip
    assert report["windows_expected"] == WINDOWS
    assert 2 <= report["windows_received"] < WINDOWS
    assert report["service_errors"] == {"rate_limited": 1}  # one notice per 10 s at most


def test_speed_one_follows_the_recorded_time_and_max_does_not(service, broker, tmp_path) -> None:
    path = write_wisdm2019(tmp_path / "short.txt", ("1670",), n=40)  # 2 s at 20 Hz
    slow = replay(broker, str(path), "--speed", "1", tmp_path=tmp_path)
    fast = replay(broker, str(path), "--speed", "max", tmp_path=tmp_path)
    assert slow["publish_seconds"] >= 1.5
    assert fast["publish_seconds"] < slow["publish_seconds"] / 2
    assert slow["samples_sent"] == fast["samples_sent"] == 40


def test_loop_repeats_until_the_duration(service, broker, tmp_path) -> None:
    path = write_wisdm2019(tmp_path / "loop.txt", ("1680",), n=40)
    report = replay(
        broker, str(path), "--loop", "--speed", "20", "--duration", "1", "--compare",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert report["samples_sent"] > 80  # more than two passes of 40 samples
    assert report["windows_expected"] >= 1
    assert report["windows_received"] == report["windows_expected"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("t,x,y\n1,2,3\n", r"bad\.csv:1: CSV header .* lacks column\(s\) \['z'\]"),
        ("\nhello there\nthis is not data\n", r"bad\.csv:2: unknown layout"),
    ],
)
def test_bad_files_name_the_line(tmp_path, capsys, content: str, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["replay", str(path), "--broker", "mqtt://127.0.0.1:1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "harstream replay: error:" in err
    assert err.count("\n") == 1
    import re

    assert re.search(expected, err), err


def test_dirty_lines_are_skipped_and_counted(service, broker, tmp_path, capsys) -> None:
    path = write_wisdm2019(tmp_path / "dirty.txt", ("1690",))
    lines = path.read_text().splitlines()
    lines[10:10] = ["1690,A,1.0,oops,2.0;", "garbage"]
    path.write_text("\n".join(lines) + "\n")
    report = replay(broker, str(path), "--speed", "max", "-k", "8", "--compare", tmp_path=tmp_path)
    assert report["samples_sent"] == N
    assert report["windows_received"] == WINDOWS
    assert "skipped 2 bad record(s)" in capsys.readouterr().err


def test_bad_options_are_explained(tmp_path, capsys) -> None:
    path = write_wisdm2019(tmp_path / "ok.txt")
    for args, message in [
        (["--speed", "fast"], "speed must be a positive number or 'max'"),
        (["--device-id", "no spaces"], "is not a valid id"),
        (["-k", "0"], "samples per message must be between 1 and"),
    ]:
        assert main(["replay", str(path), *args, "--quiet"]) == 2
        assert message in capsys.readouterr().err


def test_unreachable_broker_is_reported(tmp_path, capsys) -> None:
    from harstream.stream.broker import free_port

    path = write_wisdm2019(tmp_path / "ok.txt")
    url = f"mqtt://127.0.0.1:{free_port()}"
    assert main(["replay", str(path), "--broker", url, "--quiet"]) == 1
    assert "connection refused: nothing listens" in capsys.readouterr().err
    # the cause is named for a host name that does not resolve too, in one line
    url = "no-such-host.invalid:1883"  # host:port means mqtt://
    assert main(["replay", str(path), "--broker", url, "--quiet"]) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert "cannot use the MQTT broker at mqtt://no-such-host.invalid:1883" in line
    assert "name resolution failed" in line


def test_simulate_streams_labelled_devices_and_scores_them(service, broker, tmp_path) -> None:
    out = tmp_path / "sim.json"
    argv = ["simulate", "--devices", "3", "--duration", "5", "-k", "10", "--stagger", "0"]
    argv += ["--broker", broker.url, "--mqtt-version", broker.mqtt_version, "--prefix", PREFIX]
    argv += ["--compare", "--json", str(out)]
    argv += ["--quiet", "--wait", "5", "--jitter-ms", "2", "--clock-drift", "1", "--seed", "4"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["simulated"] is True
    assert report["devices"] == 3
    assert report["windows_expected"] >= 3
    assert report["windows_received"] == report["windows_expected"]
    assert report["windows_scored"] == report["windows_received"]


@pytest.mark.parametrize("command", ["replay", "simulate", "demo"])
def test_tools_offer_no_persistent_session_options(command, capsys) -> None:
    """The tools connect with a fresh session each run: their help offers no session to
    keep, while serve's still does."""
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    tool = capsys.readouterr().out
    assert "--client-id" in tool and "fresh session" in tool
    assert "persistent session" not in tool and "--session-expiry" not in tool
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    serve = capsys.readouterr().out
    assert "keeps the persistent session" in serve and "--session-expiry" in serve
    with pytest.raises(SystemExit):
        main(["bench", "e2e", "--help"])  # every connection of the bench gets an id of its own
    bench = capsys.readouterr().out
    assert "--client-id" not in bench and "--session-expiry" not in bench
