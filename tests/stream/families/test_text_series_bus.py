"""Text and series families end to end: a real broker, the service, good and bad input."""

from __future__ import annotations

import math
import uuid

import pytest
from bus_client import Client, service_broker

from harstream.families import load_predictor
from harstream.stream.config import ServeConfig
from harstream.stream.service import Service

SPAM = "URGENT! You have WON a guaranteed £1000 cash prize. Call 09061701461 now to claim"
HAM = "Sorry I missed your call, I'll ring you back after dinner"


@pytest.fixture(scope="module")
def bus(broker):
    """One service with the shipped text and series models, and a test client."""
    prefix = f"ts{uuid.uuid4().hex[:8]}"
    predictors = {
        family: load_predictor(family=family, max_batch=4) for family in ("text", "series")
    }
    config = ServeConfig(
        broker=service_broker(broker.host, broker.port, broker.mqtt_version, prefix),
        prefix=prefix,
        families=["text", "series"],
        max_batch=4,
    )
    service = Service(config, predictors=predictors).start()
    client = Client(broker.host, broker.port, prefix, broker.mqtt_version)
    yield client, service, predictors
    client.close()
    service.stop()


def test_text_messages_are_classified(bus):
    client, _, predictors = bus
    client.publish("phone-1", SPAM.encode(), suffix="text")
    client.publish("phone-1", {"text": HAM}, suffix="text")
    first, second = client.wait_for("phone-1", 2, suffix="text/class")
    assert (first["label"], second["label"]) == ("spam", "ham")
    # the same id field as HAR predictions and every error: "device"
    assert first["device"] == "phone-1" and "id" not in first
    assert first["model"] == predictors["text"].tag
    assert set(first["probs"]) == {"ham", "spam"}
    assert all(round(p, 4) == p for p in first["probs"].values())  # 4 decimals
    assert sum(first["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    assert first["confidence"] == pytest.approx(max(first["probs"].values()))
    assert first["latency_ms"] >= 0


def test_series_forecast_after_k_values(bus):
    client, _, predictors = bus
    (k,) = predictors["series"].item_shape
    ramp = [10.0 + 2.0 * i for i in range(k + 1)]
    for value in ramp[: k - 1]:
        client.publish("meter", value, suffix="series")
    client.publish("meter", {"value": ramp[k - 1], "t": 1_700_000_000.0}, suffix="series")
    client.publish("meter", {"values": [ramp[k]]}, suffix="series")
    first, second = client.wait_for("meter", 2, suffix="series/forecast")
    client.settle()
    assert len(client.json_of("meter", "series/forecast")) == 2  # nothing before k values
    assert first["device"] == "meter" and "id" not in first and first["horizon"] == 1
    assert first["model"] == predictors["series"].tag
    assert first["after"] == {"seq": k, "t": 1_700_000_000.0}
    assert second["after"]["seq"] == k + 1
    # a steady ramp continues as a ramp: 12, 14, ..., 20 -> about 22
    assert second["forecast"] == pytest.approx(ramp[k] + 2.0, abs=0.5)
    assert math.isfinite(second["forecast"])


@pytest.mark.parametrize(
    ("suffix", "payload", "kind"),
    [
        ("text", b"", "empty"),
        ("text", b"   \n", "empty"),
        ("text", b"\xff\xfe not utf-8", "invalid_utf8"),
        ("text", ("x" * 5000).encode(), "oversize"),
        ("text", b'{"text": 42}', "wrong_type"),
        ("text", b'{"text": "unterminated', "malformed_json"),
        ("series", b'"seven"', "wrong_type"),
        ("series", b"NaN", "non_finite"),
        ("series", b'{"values": [1.0, NaN]}', "non_finite"),
        ("series", b'{"values": [1.0, "2"]}', "wrong_type"),
        ("series", b'{"reading": 3}', "wrong_type"),
    ],
)
def test_bad_input_is_reported_and_counted(bus, suffix, payload, kind):
    client, service, _ = bus
    stream_id = f"bad-{uuid.uuid4().hex[:6]}"
    before = service.metrics.value("harstream_errors_total", family=suffix, kind=kind) or 0.0
    client.publish(stream_id, payload, suffix=suffix)
    (error,) = client.wait_for(stream_id, 1, suffix="errors")
    assert error["error"] == kind and error["device"] == stream_id and error["message"]
    after = service.metrics.value("harstream_errors_total", family=suffix, kind=kind)
    assert after == before + 1


def test_stream_still_served_after_bad_input(bus):
    client, _, _ = bus
    client.publish("mixed", b"\xff", suffix="text")
    client.publish("mixed", HAM.encode(), suffix="text")
    client.wait_for("mixed", 1, suffix="errors")
    (result,) = client.wait_for("mixed", 1, suffix="text/class")
    assert result["label"] == "ham"
