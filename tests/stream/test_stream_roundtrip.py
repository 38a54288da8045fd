"""The round trip through the broker that the service measures at start."""

from __future__ import annotations

import logging


def test_the_start_measures_the_broker_round_trip_and_warns_once_above_the_threshold(
    serve, device, caplog
):
    caplog.set_level(logging.INFO, logger="harstream.stream.service")
    service = serve(rtt_warn_ms=0.0)  # any round trip is above 0 ms
    (warning,) = [r for r in caplog.records if "event=broker_slow" in r.message]
    assert warning.levelno == logging.WARNING
    assert "set_tcp_nodelay true" in warning.message and "--rtt-warn-ms" in warning.message
    rtt = service.broker_rtt_s
    assert rtt is not None and rtt > 0
    assert service.metrics.value("harstream_broker_rtt_seconds") == rtt
    (status,) = device.wait_for("service", 1, "status")  # one online status per start
    assert status["status"] == "online" and status["broker_rtt_ms"] == round(rtt * 1000, 3)
    device.samples("d", 0, 80)  # the probes took nothing from the devices' topics
    assert device.wait_for("d", 1)[0]["seq"] == 1
    assert not device.json_of("d", "errors")
