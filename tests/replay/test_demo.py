"""``harstream demo`` runs end to end in a subprocess, exits 0 and leaves nothing listening.

It runs as after ``pip install -e .`` alone: without the ``train`` extra (scikit-learn,
matplotlib), which ``sys.modules[name] = None`` makes look uninstalled.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
