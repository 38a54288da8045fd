"""Shared fixtures. JAX compile time dominates the suite, so compiled models are session-scoped."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from bus_client import Client

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Services started by tests (in-process or as subprocesses, which inherit it) keep
    their state files and calibration stores here, never in the real home directory."""
    home = tmp_path_factory.mktemp("state-home")
    os.environ["XDG_STATE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets beside the checkout; tests that need them skip when absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data not found at {DATA_DIR}")
    return DATA_DIR


# --- streaming service: a real broker on a free loopback port, a HAR model --------------------

HAR_TEST_CLASSES = ["walking", "jogging", "stairs", "sitting", "standing", "kicking"]


@pytest.fixture(scope="session")
def broker():
    """An isolated MQTT broker on a free 127.0.0.1 port: ``.host``, ``.port``, ``.url``.

    Mosquitto (with ``set_tcp_nodelay true``) when the binary is installed, else the
    embedded amqtt broker; ``HARSTREAM_TEST_BROKER=amqtt`` picks the embedded one anyway,
    as on a machine without Mosquitto. Never the machine's own broker on 1883.
    """
    from harstream.stream.broker import isolated_broker

    with isolated_broker(os.environ.get("HARSTREAM_TEST_BROKER", "mosquitto")) as running:
        yield running


@pytest.fixture(scope="session")
def har_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HAR CNN checkpoint with random weights (until tests need the shipped one)."""
    from harstream.models.har import checkpoint, network

    path = tmp_path_factory.mktemp("har-model") / "har-cnn"
    checkpoint.save(
        path,
        "har-cnn",
        {"num_classes": len(HAR_TEST_CLASSES)},
        network.init_params(network.HarCNN(num_classes=len(HAR_TEST_CLASSES)), seed=3),
        {
            "classes": HAR_TEST_CLASSES,
            "normalization": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
            "name": "har-cnn",
            "version": "test",
        },
    )
    return path


@pytest.fixture(scope="session")
def har_blend_path(tmp_path_factory: pytest.TempPathFactory, har_model_path: Path) -> Path:
    """A blend of the random-weight test CNN (weight 0.6) with small boosted trees fitted on
    generated windows whose classes differ in gravity direction."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from harstream.models.har import blend, checkpoint

    _, cnn_params, meta = checkpoint.load(har_model_path)
    n = len(HAR_TEST_CLASSES)
    y = np.arange(240) % n
    x = np.random.default_rng(5).normal(0.0, 4.0, (240, 80, 3))
    x[np.arange(240), :, y % 3] += np.where(y < 3, 9.8, -9.8)[:, None]
    trees = HistGradientBoostingClassifier(max_iter=8, max_leaf_nodes=7, random_state=0)
    trees.fit(blend.features_numpy(x), y)
    arrays, shape = blend.export_trees(trees, n)
    path = tmp_path_factory.mktemp("har-blend") / "har-blend"
    checkpoint.save(
        path,
        blend.ARCH,
        blend.blend_config(n, 0.6, shape),
        {"cnn": cnn_params, "boost": arrays},
        {**{k: meta[k] for k in ("classes", "normalization")}, "name": "har-blend",
         "version": "test"},
    )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def har_blend_predictor(har_blend_path: Path):
    """The compiled predictor of ``har_blend_path`` (buckets up to 16)."""
    from harstream.families import load_predictor

    return load_predictor(har_blend_path, family="har", max_batch=16)


@pytest.fixture(scope="session")
def har_predictor(har_model_path: Path):
    """The compiled predictor of ``har_model_path`` (buckets up to 16), shared by services."""
    from harstream.families import load_predictor

    return load_predictor(har_model_path, family="har", max_batch=16)


# --- HAR models: the shipped CNN ---------------------------------------------------------------


@pytest.fixture(scope="session")
def shipped_har_predictor():
    """The HAR CNN shipped in ``models/weights/har-cnn``, compiled once (buckets up to 64)."""
    from harstream.families import load_predictor

    return load_predictor(family="har", max_batch=64)


# --- the service on the session broker: a unique prefix per test, services stopped after ----


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def serve(broker, har_predictor, prefix):
    """Start services on the session broker (same prefix as the test); stopped at teardown."""
    from harstream.stream.config import ServeConfig
    from harstream.stream.connection import BrokerConfig
    from harstream.stream.service import Service

    started: list[Service] = []

    def start(predictor=None, **overrides) -> Service:
        broker_cfg = BrokerConfig(
            host=broker.host,
            port=broker.port,
            mqtt_version=overrides.pop("mqtt_version", broker.mqtt_version),
            client_id=overrides.pop("client_id", f"serve-{prefix}"),
            explicit=True,
        )
        overrides.setdefault("families", ["har"])
        config = ServeConfig(broker=broker_cfg, prefix=prefix, max_batch=16, **overrides)
        service = Service(config, predictors={"har": predictor or har_predictor}).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def device(broker, prefix):
    client = Client(broker.host, broker.port, prefix, broker.mqtt_version)
    yield client
    client.close()
