"""The table of families: a toy fourth family added through one entry is known to the
command line, the model registry, the serve configuration and the service's routes, and is
served end to end through a real broker."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from bus_client import Client, service_broker
from safetensors.numpy import load_file

from harstream import families
from harstream.models import checkpoint
from harstream.models.predictor import Predictor
from harstream.stream.config import ServeConfig, _family_options
from harstream.stream.payloads import number
from harstream.stream.routes import Route, RouteUnavailable, Sink, load_family_predictor
from harstream.stream.service import Service, build_routes

# --- the toy family: "scale" multiplies each value by its one weight ------------------------


def toy_load(path: Path, max_batch: int) -> Predictor:
    """The toy family's checkpoint loader (what models/<family>/checkpoint.py provides)."""
    meta = checkpoint.load_meta(path)
    params = load_file(str(Path(path) / checkpoint.PARAMS_FILE))
    return Predictor(
        lambda p, x: x[:, 0] * p["scale"][0],
        params,
        item_shape=(1,),
        name=meta["name"],
        version=meta["version"],
        max_batch=max_batch,
        meta=meta,
    )


class OneValue:
    """The toy family's per-id buffer: every value is one model input."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def push(self, value: float, wall: float, mono: float) -> int:
        self._sink.emit(np.array([value], np.float32), None, mono)
        return 1


def toy_route(config: Any, predictor: Predictor | None = None) -> Route:
    """The toy family's stream module (what stream/families/<family>.py provides)."""
    if predictor is None:
        predictor = load_family_predictor("toy", config.models.get("toy"), config.max_batch)

    def decode(payload: bytes, _content_type: str | None = None) -> float:
        return number(orjson.loads(payload), "the payload")

    def encode(device: str, _info: Any, out: np.ndarray, _p: Any, _latency_ms: float) -> bytes:
        return orjson.dumps({"device": device, "value": float(out)})

    return Route(
        "toy", "toy", "toy/scaled", decode, lambda _id, sink: OneValue(sink), predictor, encode
    )


def toy_cli() -> types.ModuleType:
    """The toy family's command line (what models/<family>/cli.py provides)."""
    cli = types.ModuleType("toy_cli")

    def register(groups: dict[str, Any]) -> None:
        parser = groups["train"].add_parser("toy", help="train the toy family")
        parser.add_argument("--scale", type=float, default=2.0)
        parser.set_defaults(func=lambda args: 0)

    cli.register = register
    return cli


@pytest.fixture
def toy(monkeypatch, tmp_path) -> Path:
    """The toy family in the table, and a checkpoint of it."""
    entry = families.Family(
        "toy", "values times a learnt scale", "toy_model", "toy", toy_cli(), toy_route, toy_load
    )
    monkeypatch.setattr(families, "FAMILIES", [*families.FAMILIES, entry])
    meta = {"family": "toy", "arch": "scale", "arch_config": {}, "name": "toy", "version": "1"}
    return checkpoint.save(tmp_path / "toy", {"scale": np.array([2.0], np.float32)}, meta)


def test_the_command_line_registry_and_config_read_the_table(toy):
    from harstream.cli import build_parser

    args = build_parser().parse_args(["train", "toy", "--scale", "3"])
    assert args.scale == 3.0
    predictor = families.load_predictor(toy)  # the registry dispatches on meta["family"]
    assert predictor.tag == "toy@1" and predictor.predict_valid(np.array([[21.0]]))[0] == 42.0
    assert "toy_model" in {opt.name for opt in _family_options()}
    ServeConfig(families=["toy"], models={"toy": toy})  # a known family now
    with pytest.raises(ValueError, match="ghost"):
        ServeConfig(families=["ghost"])


def test_a_family_without_its_shipped_model_is_skipped_unless_asked_for(
    toy, har_predictor, monkeypatch
):
    monkeypatch.setattr(families, "FAMILIES", [families.lookup("har"), families.lookup("toy")])
    with pytest.raises(RouteUnavailable, match="toy"):
        build_routes(ServeConfig(families=["toy"]))
    built = build_routes(ServeConfig(), predictors={"har": har_predictor})
    assert [r.family for r in built] == ["har"]


def test_the_toy_family_is_served_through_a_real_broker(toy, broker, prefix):
    cfg = service_broker(broker.host, broker.port, broker.mqtt_version, prefix)
    config = ServeConfig(broker=cfg, prefix=prefix, families=["toy"], models={"toy": toy})
    device = Client(broker.host, broker.port, prefix, broker.mqtt_version)
    try:
        with Service(config):
            device.publish("meter-1", b"21.5", suffix="toy")
            (out,) = device.wait_for("meter-1", 1, "toy/scaled")
        assert out == {"device": "meter-1", "value": 43.0}
    finally:
        device.close()
