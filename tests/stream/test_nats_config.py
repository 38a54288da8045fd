"""``serve --nats`` options and the fair-share plan of the partition leases (no server)."""

from __future__ import annotations

import pytest

from harstream.cli import build_parser
from harstream.stream.cli import configs_from_args
from harstream.stream.config import ConfigError
from harstream.stream.leases import plan, quota
from harstream.stream.nats_input import NatsConfig, parse_owns


def serve(*argv: str):
    return configs_from_args(build_parser().parse_args(["serve", *argv]), {})


def test_a_worker_holds_at_most_its_fair_share():
    assert [quota(8, n) for n in (1, 2, 3, 4, 5, 8, 9)] == [8, 4, 3, 2, 2, 1, 1]
    claim, release = plan({0, 1, 2, 3, 4, 5, 6, 7}, [], 8, 2)
    assert (claim, release) == ([], [4, 5, 6, 7])  # a second worker came: give half back
    claim, release = plan({0, 1, 2}, [5, 6, 7], 8, 2)
    assert sorted(claim) == [5, 6, 7] and release == []  # candidates; claimed up to quota
    assert plan({0, 1, 2}, [], 8, 3) == ([], [])


def test_owns_lists_partitions_and_ranges():
    assert parse_owns("0-3,6") == frozenset({0, 1, 2, 3, 6})
    with pytest.raises(ConfigError, match="N or N-M"):
        parse_owns("a-b")
    with pytest.raises(ConfigError, match="--owns must lie in 0-7"):
        NatsConfig("nats://h:4222", partitions=8, owns=frozenset({8}), worker="w")
    with pytest.raises(ConfigError, match="nats://"):
        NatsConfig("mqtt://h:1883", worker="w")
    with pytest.raises(ConfigError, match="worker-name"):
        NatsConfig("nats://h:4222", worker="a.b")


def test_a_nats_worker_publishes_over_mqtt_3_with_its_own_client_id():
    config, nats = serve(
        "--nats", "nats://n:4222", "--broker", "mqtt://n:1883", "--worker-name", "w2"
    )
    assert nats is not None and nats.worker == "w2" and nats.partitions == 8
    assert nats.calibrations  # in the NATS bucket, where the device's next worker looks
    assert config.broker.mqtt_version == "3.1.1"
    assert config.broker.client_id.endswith("-w2")
    assert config.embedded_broker is False and config.state_file is None
    assert config.calibration_store is None  # the bucket's store is set when it starts
    config, nats = serve(
        "--nats", "nats://n:4222", "--worker-name", "w2", "--owns", "0-3",
        "--calibration-store", "/tmp/c.sqlite", "--mqtt-version", "5",
    )  # fmt: skip
    assert nats.owns == frozenset({0, 1, 2, 3}) and not nats.calibrations
    assert str(config.calibration_store) == "/tmp/c.sqlite"
    assert config.broker.mqtt_version == "5"  # given explicitly: kept
    config, nats = serve()
    assert nats is None and config.state_file is not None
