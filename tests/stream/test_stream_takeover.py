"""Two services on one broker: their own ids coexist, a shared id warns once, no storm."""

from __future__ import annotations

import logging
import time

import pytest
from bus_client import Client

from harstream.stream.broker import MosquittoBroker, free_port, mosquitto_binary
from harstream.stream.cli import serve_client_id
from harstream.stream.config import ServeConfig
from harstream.stream.connection import BrokerConfig
from harstream.stream.service import Service
from harstream.stream.takeover import (
    CONFLICT_DELAY_S,
    SESSION_TAKEN_OVER,
    STABLE_FACTOR,
    TakeoverGuard,
)

needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")


def test_guard_sees_a_takeover_or_repeated_short_connections_and_a_lasting_one_ends_it():
    guard = TakeoverGuard()
    guard.connected(0.0)
    assert guard.disconnected(3600.0, 0) is False  # a long connection that dropped
    for t in (3600.5, 3601.0):
        guard.connected(t)
        assert guard.disconnected(t + 0.1, 0) is False and not guard.conflict
    guard.connected(3601.5)
    assert guard.disconnected(3601.6, 0) is True  # the third short one: a conflict
    guard.connected(3610.0)
    assert guard.disconnected(3610.0 + CONFLICT_DELAY_S, 0) is False  # taking turns: no news
    assert guard.conflict
    guard.connected(3700.0)
    assert guard.disconnected(3701.0 + STABLE_FACTOR * CONFLICT_DELAY_S, 0) is False
    assert not guard.conflict  # it lasted: the other client went away
    guard.connected(3800.0)
    assert guard.disconnected(3900.0, SESSION_TAKEN_OVER) is True  # MQTT 5 says so at once


@pytest.fixture
def mosquitto():
    own = MosquittoBroker(free_port())
    own.start()
    yield own
    own.close()


def start_service(broker: MosquittoBroker, prefix: str, client_id: str, version: str, har):
    cfg = BrokerConfig(
        host=broker.host, port=broker.port, mqtt_version=version, client_id=client_id, explicit=True
    )
    config = ServeConfig(broker=cfg, prefix=prefix, families=["har"], max_batch=16)
    return Service(config, predictors={"har": har}).start()


@needs_mosquitto
@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_a_shared_client_id_warns_once_and_reconnects_slowly(
    mosquitto, har_predictor, prefix, version, caplog
):
    caplog.set_level(logging.INFO, logger="harstream.stream.service")
    services = [start_service(mosquitto, prefix, "same-id", version, har_predictor)]
    try:
        services.append(start_service(mosquitto, prefix + "b", "same-id", version, har_predictor))
        deadline = time.monotonic() + 20

        def conflicts() -> float:
            return sum(s.metrics.value("harstream_client_id_conflicts_total") for s in services)

        while conflicts() < 1:
            assert time.monotonic() < deadline, "no conflict seen"
            time.sleep(0.05)
        seen = len(caplog.records)
        time.sleep(3.0)
        assert 1 <= conflicts() <= 2
    finally:
        for service in services:
            service.stop()
    messages = [r.getMessage() for r in caplog.records]
    warnings = [m for m in messages if "event=client_id_conflict" in m]
    assert 1 <= len(warnings) <= 2, messages  # at most once per service
    assert "another client uses client id same-id" in warnings[0]
    assert "give each service its own --client-id" in warnings[0]
    # at paho's 0.1 s minimum the two took turns ~30 times in 3 s, with a line per turn
    # and service; now the service that noticed waits 5 s before it takes the id back
    later = [m for m in messages[seen:] if "event=connected" in m or "event=disconnected" in m]
    assert len(later) <= 4, later


@needs_mosquitto
def test_services_with_different_prefixes_and_default_ids_both_answer(
    mosquitto, har_predictor, prefix
):
    prefixes = (prefix, prefix + "b")
    ids = [serve_client_id(p, ["har"]) for p in prefixes]
    assert ids[0] != ids[1]
    services = [
        start_service(mosquitto, p, i, "5", har_predictor)
        for p, i in zip(prefixes, ids, strict=True)
    ]
    devices = [Client(mosquitto.host, mosquitto.port, p, "5") for p in prefixes]
    try:
        for dev in devices:
            dev.samples("w", 0, 80)
        for dev in devices:
            (pred,) = dev.wait_for("w", 1)
            assert pred["seq"] == 1
        assert all(s.metrics.value("harstream_broker_connects_total") == 1 for s in services)
        assert all(s.metrics.value("harstream_client_id_conflicts_total") == 0 for s in services)
    finally:
        for dev in devices:
            dev.close()
        for service in services:
            service.stop()
