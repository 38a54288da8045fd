"""``harstream demo`` serves the dashboard: the page shows every device and updates."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_dashboard_browser import page_text, wait_until

from harstream.stream.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
DEVICES = 4


def test_the_demo_prints_its_dashboard_and_the_page_follows_it(browser, tmp_path) -> None:
    cmd = [sys.executable, "-m", "harstream", "demo", "--duration", "60"]
    cmd += ["--devices", str(DEVICES), "--broker", f"mqtt://127.0.0.1:{free_port()}"]
    cmd += ["--dashboard-port", str(free_port())]
    demo = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.decode() for line in demo.stdout))
    reader.start()
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline and demo.poll() is None:
            found = re.search(r"dashboard: open (http://\S+) in a browser", "".join(lines))
            url = found and found.group(1)
            time.sleep(0.2)
        assert url, "".join(lines)[-3000:]
        browser.get(url)
        ids = [f"sim-{i:03d}" for i in range(DEVICES)]

        def activities(driver) -> list[str | None]:
            return [page_text(driver, f'.row[data-id="{i}"] .c-act') for i in ids]

        wait_until(browser, lambda d: all(a not in (None, "-") for a in activities(d)), 60)
        assert page_text(browser, "#service") == "service: online"

        def confidences(driver) -> list[str | None]:
            return [page_text(driver, f'.row[data-id="{i}"] .c-conf') for i in ids]

        before = confidences(browser)
        wait_until(browser, lambda d: confidences(d) != before, 30)  # new windows arrived
        assert float(page_text(browser, "#f-rate")) > 0
        browser.save_screenshot(str(tmp_path / "demo.png"))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0, "".join(lines)[-3000:]
        reader.join()
    out = "".join(lines)
    assert "demo stopped" in out
    assert re.search(rf"^dashboard: {re.escape(url)}$", out, re.MULTILINE)  # under the table
