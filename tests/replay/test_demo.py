"""``harstream demo`` runs end to end in a subprocess, exits 0 and leaves nothing listening.

It runs as after ``pip install -e .`` alone: without the ``train`` extra (scikit-learn,
matplotlib), which ``sys.modules[name] = None`` makes look uninstalled.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

from bus_client import Client

from harstream.stream.broker import free_port, is_listening

ROOT = Path(__file__).resolve().parents[2]
WITHOUT_TRAIN_EXTRA = (
    "import sys; sys.modules.update(sklearn=None, matplotlib=None); "
    "from harstream.cli import main; sys.exit(main())"
)


def test_demo_runs_for_its_duration_and_cleans_up() -> None:
    port = free_port()  # never 1883: the demo starts its embedded broker on this port
    cmd = [sys.executable, "-c", WITHOUT_TRAIN_EXTRA, "demo", "--duration", "10"]
    cmd += ["--broker", f"mqtt://127.0.0.1:{port}", "--devices", "3", "--no-dashboard"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    out = done.stdout
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"started the embedded one at mqtt://127.0.0.1:{port}" in out
    assert all(f"sim-00{i}" in out for i in range(3))
    assert "SIMULATED" in out
    assert "raw window" in out  # the smoothed answer is shown beside the window's own
    assert "calibration: sim-000 is calibrated from its labels" in out  # 6 s of labels
    assert re.search(r"^sim-000 cal ", out, re.MULTILINE)  # its calibrated predictions
    counts = re.search(r"windows expected (\d+), received (\d+)", out)
    expected, received = int(counts.group(1)), int(counts.group(2))
    assert expected >= 3 * 5  # 3 devices for 10 s: windows 4, 5, 6, ... s after each start
    assert received == expected
    for family in ("text", "series"):  # sent through the bus, or said to be unavailable
        line = re.search(rf"^{family}: (.*)$", out, re.MULTILINE).group(1)
        assert "->" in line or "not available" in line, line
    assert "demo stopped" in out
    assert "dashboard" not in out  # --no-dashboard (tests/dashboard open the page of a demo)
    assert not is_listening("127.0.0.1", port)


def test_demo_prefix_keeps_to_itself_and_leaves_no_retained_message(broker) -> None:
    """On a broker that outlives it, a demo under --prefix feeds no other prefix, and a
    subscriber to <prefix>/# after it finds nothing retained (status, state, calibration)."""
    prefix = f"demo-{uuid.uuid4().hex[:6]}"
    during = Client(broker.host, broker.port, prefix, broker.mqtt_version)
    other = Client(broker.host, broker.port, "demo", broker.mqtt_version)  # another demo's
    cmd = [sys.executable, "-c", WITHOUT_TRAIN_EXTRA, "demo", "--duration", "8", "--devices", "2"]
    cmd += ["--broker", broker.url, "--prefix", prefix]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    finally:
        during.close()
        other.close()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "started the embedded one" not in done.stdout
    seen = set(during.messages)
    # what the demo retained while it ran, so there was something to clear
    assert f"{prefix}/service/status" in seen and f"{prefix}/sim-000/state" in seen
    assert f"{prefix}/sim-000/calibration" in seen
    assert not other.messages, sorted(other.messages)[:5]
    after = Client(broker.host, broker.port, prefix, broker.mqtt_version)
    after.settle(1.0)  # retained messages arrive right after the subscription
    after.close()
    assert not after.messages, {t: p[:80] for t, (p, *_) in after.messages.items()}
