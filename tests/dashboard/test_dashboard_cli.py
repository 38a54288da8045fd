"""``harstream dashboard`` as a command: flags and environment shared with serve, exit codes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

from harstream.cli import build_parser
from harstream.dashboard.cli import settings_from_args
from harstream.stream.config import ConfigError


def test_settings_come_from_flags_then_environment() -> None:
    args = build_parser().parse_args(["dashboard", "--port", "9000", "--allow-actions"])
    env = {"HARSTREAM_DASHBOARD_PORT": "9100", "HARSTREAM_DASHBOARD_HOST": "0.0.0.0"}
    settings = settings_from_args(args, env)
    assert (settings.host, settings.port, settings.allow_actions) == ("0.0.0.0", 9000, True)
    assert settings_from_args(build_parser().parse_args(["dashboard"]), {}).allow_actions is False


def test_the_shared_config_file_has_a_dashboard_table_that_serve_accepts(tmp_path) -> None:
    from harstream.stream.cli import config_from_args

    config = tmp_path / "serve.toml"
    config.write_text('prefix = "plant"\n[dashboard]\nport = 9200\nallow_actions = true\n')
    args = build_parser().parse_args(["dashboard", "--config", str(config)])
    settings = settings_from_args(args, {"HARSTREAM_DASHBOARD_PORT": "9300"})
    assert (settings.port, settings.allow_actions) == (9300, True)  # env beats the file
    assert settings_from_args(args, {}).port == 9200
    serve = config_from_args(build_parser().parse_args(["serve", "--config", str(config)]), {})
    assert serve.prefix == "plant"
    config.write_text("[dashboard]\nprot = 9200\n")
    try:
        settings_from_args(args, {})
    except ConfigError as exc:
        assert "prot" in str(exc)
    else:
        raise AssertionError("a misspelt [dashboard] key was accepted")


def test_invalid_settings_are_refused() -> None:
    for flags in (["--port", "70000"], ["--history", "0"], ["--max-devices", "0"]):
        args = build_parser().parse_args(["dashboard", *flags])
        try:
            settings_from_args(args, {})
        except ConfigError:
            continue
        raise AssertionError(f"{flags} was accepted")


def test_the_command_serves_the_page_and_stops_cleanly(broker, prefix, tmp_path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(f'prefix = "{prefix}"\nbroker = "{broker.url}"\n')  # serve's own file
    cmd = [sys.executable, "-m", "harstream", "dashboard", "--port", "0", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        found = re.search(r"harstream dashboard: (http://\S+) \(broker (\S+), prefix (\S+),", line)
        assert found, line + proc.stderr.read() if proc.poll() is not None else line
        url, broker_url, shown_prefix = found.groups()
        assert (broker_url, shown_prefix) == (broker.url, prefix)
        assert "read-only" in line
        with urllib.request.urlopen(url, timeout=20) as response:
            assert b"harstream dashboard" in response.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_bad_broker_url_is_a_usage_error() -> None:
    cmd = [sys.executable, "-m", "harstream", "dashboard", "--broker", "http://x", "--port", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "mqtt://" in done.stderr
