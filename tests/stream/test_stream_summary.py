"""The periodic one-line summary: its figures, from the service's own counters."""

from __future__ import annotations

import logging
import math
import re
import time

from bus_client import WAIT

from harstream.stream.metrics import ServiceMetrics
from harstream.stream.summary import Summary, quantile


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def by_kind(texts) -> dict[str, int]:
    """The ``family/kind:count`` lists of several lines, added up."""
    total: dict[str, int] = {}
    for text in texts:
        for item in text.split(",") if text != "0" else ():
            kind, n = item.rsplit(":", 1)
            total[kind] = total.get(kind, 0) + int(n)
    return total


def test_quantiles_interpolate_within_buckets_as_prometheus_does():
    buckets = {0.001: 0.0, 0.002: 50.0, 0.005: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == 0.002
    assert math.isclose(quantile(0.25, buckets), 0.0015)
    assert math.isclose(quantile(0.99, buckets), 0.002 + 0.003 * 49 / 50)
    assert quantile(0.99, {0.001: 0.0, math.inf: 10.0}) == 0.001  # past the last bound
    assert math.isnan(quantile(0.5, {0.001: 0.0, math.inf: 0.0}))


def test_a_line_counts_what_happened_since_the_last_one():
    metrics = ServiceMetrics()
    har = metrics.family("har")
    har.messages.inc(7)
    summary = Summary(metrics)  # counts before it are not in its first line
    har.messages.inc(100)
    har.windows.inc(5)
    har.devices.set(3)
    for _ in range(98):
        har.latency_seconds.observe(0.0015)
    har.latency_seconds.observe(0.3)
    har.latency_seconds.observe(0.3)
    har.error("malformed_json")
    har.error("malformed_json")
    har.drop("gap", 99)
    first = fields(summary.line())
    assert first["devices"] == "3"
    assert (first["messages"], first["windows"]) == ("100", "5")
    assert first["latency_ms_p50"] == "1.5"  # within the 1-2 ms bucket
    assert first["latency_ms_p99"] == "350"  # halfway into the 200-500 ms bucket
    assert first["errors"] == "har/malformed_json:2"
    assert first["drops"] == "har/gap:99"
    assert float(first["messages_per_s"]) > 0
    second = fields(summary.line())
    assert (second["messages"], second["windows"], second["errors"], second["drops"]) == (
        "0",
        "0",
        "0",
        "0",
    )
    assert second["latency_ms_p50"] == "-"


def test_the_service_logs_a_summary_every_period(serve, device, caplog):
    caplog.set_level(logging.INFO, logger="harstream.stream.service")
    service = serve(summary_every=0.3)
    device.samples("a", 0, 100)  # one window (hop 20: 80 samples), then one more
    device.samples("b", 0, 80)
    device.publish("c", b"{not json")
    device.samples("a", 99, 1)  # a duplicate
    device.wait_for("a", 2)
    device.wait_for("b", 1)
    device.wait_for("c", 1, "errors")
    deadline = time.monotonic() + WAIT
    while True:  # until a line has come after everything above was counted
        lines = [fields(r.getMessage()) for r in caplog.records if "event=summary" in r.message]
        if sum(int(f["windows"]) for f in lines) == 3 and lines[-1]["windows"] == "0":
            break
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)
    assert sum(int(f["messages"]) for f in lines) == 182
    assert max(int(f["devices"]) for f in lines) == 2  # c sent nothing that made a buffer
    errors = by_kind(f["errors"] for f in lines)
    assert errors["har/malformed_json"] == 1
    # the duplicate is dropped, and the device told (a notice counted as an error)
    assert by_kind(f["drops"] for f in lines) == {"har/duplicate": 1}
    for kind, n in errors.items():  # the lines add up to the counters
        family, name = kind.split("/")
        assert n == service.metrics.value("harstream_errors_total", family=family, kind=name)
    assert service.metrics.value("harstream_messages_total", family="har") == 182
