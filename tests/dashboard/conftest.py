"""Fixtures of the dashboard tests: a dashboard on the session broker, a headless Chromium."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from harstream.dashboard.app import Dashboard, DashboardSettings
from harstream.stream.connection import BrokerConfig

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HAR_CLASSES = ["walking", "jogging", "stairs", "sitting", "standing", "kicking"]


@pytest.fixture
def dashboard(broker, prefix):
    """Start dashboards on the session broker under the test's prefix, on free ports."""
    started: list[Dashboard] = []

    def start(**settings) -> Dashboard:
        cfg = BrokerConfig(
            host=broker.host,
            port=broker.port,
            mqtt_version=broker.mqtt_version,
            client_id=f"dash-{uuid.uuid4().hex[:8]}",
            explicit=True,
        )
        board = Dashboard(cfg, prefix, DashboardSettings(port=0, **settings)).start()
        started.append(board)
        assert board.feed.connected.wait(20), "the dashboard could not connect"
        return board

    yield start
    for board in started:
        board.stop()


def _binary(name: str, default: Path) -> str | None:
    if default.exists():
        return str(default)
    return shutil.which(name)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver, collecting the console's messages."""
    chromium = _binary("chromium", CHROMIUM)
    driver_path = _binary("chromedriver", CHROMEDRIVER)
    if chromium is None or driver_path is None:
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, chromedriver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def prediction(device: str, activity: str, confidence: float = 0.9, **extra) -> dict:
    """A prediction message as docs/contract.md spells it (for tests that skip the model)."""
    others = (1.0 - confidence) / (len(HAR_CLASSES) - 1)
    return {
        "device": device,
        "activity": activity,
        "confidence": confidence,
        "raw": {"activity": activity, "confidence": confidence},
        "probs": {c: confidence if c == activity else others for c in HAR_CLASSES},
        "window": {"start": 1_700_000_000.0, "end": 1_700_000_003.95, "samples": 80},
        "model": "har-cnn@test",
        "seq": 1,
        "calibrated": False,
        "latency_ms": 1.5,
        **extra,
    }
