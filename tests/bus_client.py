"""A test device and observer on a real broker, shared by the service tests."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

from harstream.stream.connection import BrokerConfig, connect, make_client

T0 = 1_700_000_000.0
WAIT = 20.0
# The service filters the model's own probabilities and publishes them rounded to 4
# decimals. Rounding moves a probability near the smoother's floor of 1e-4 by up to 50%,
# 13% once tempered (beta 0.3), so the offline filter over the published ones lands
# within this of the service's confidence (0.0005 apart in these tests).
ROUNDED = 5e-3


class Client:
    """A test device and observer: publishes QoS 1, records everything under a prefix."""

    def __init__(self, host: str, port: int, prefix: str, version: str = "5", **tls) -> None:
        self.prefix = prefix
        self.messages: dict[str, list[bytes]] = defaultdict(list)
        self.arrived: dict[str, list[float]] = defaultdict(list)  # time.monotonic() of each
        self._cond = threading.Condition()
        cfg = BrokerConfig(
            host=host,
            port=port,
            mqtt_version=version,
            client_id=f"test-{uuid.uuid4().hex[:10]}",
            **tls,
        )
        self._subscribed = threading.Event()
        self.client = make_client(cfg, persistent=False)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        connect(self.client, cfg, persistent=False)
        assert self._subscribed.wait(WAIT), "test client could not subscribe"

    def _on_connect(self, client, *_args) -> None:
        client.subscribe(f"{self.prefix}/#", qos=1)

    def _on_message(self, _client, _userdata, msg) -> None:
        with self._cond:
            self.messages[msg.topic].append(msg.payload)
            self.arrived[msg.topic].append(time.monotonic())
            self._cond.notify_all()

    def publish(self, device: str, payload, suffix: str = "accel") -> None:
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
        self.client.publish(f"{self.prefix}/{device}/{suffix}", payload, qos=1)

    def samples(self, device: str, start: int, n: int, t0: float = T0, rate: float = 20.0):
        """Publish ``n`` single timestamped samples, indices ``start..start+n-1``."""
        for i in range(start, start + n):
            self.publish(device, {"x": float(i % 7), "y": 1.0, "z": 9.8, "t": t0 + i / rate})

    def json_of(self, device: str, suffix: str = "activity") -> list[dict]:
        with self._cond:
            return [json.loads(p) for p in self.messages[f"{self.prefix}/{device}/{suffix}"]]

    def wait_for(self, device: str, count: int, suffix: str = "activity") -> list[dict]:
        topic = f"{self.prefix}/{device}/{suffix}"
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.messages[topic]) >= count, WAIT)
        got = self.json_of(device, suffix)
        assert ok, f"expected {count} messages on {topic}, got {len(got)}: {got[-3:]}"
        return got

    def settle(self, seconds: float = 0.4) -> None:
        """Give stray extra messages a chance to arrive before asserting exact counts."""
        time.sleep(seconds)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def service_broker(host: str, port: int, version: str, prefix: str) -> BrokerConfig:
    """How a test's service connects: its broker, protocol and a client id of its own."""
    return BrokerConfig(
        host=host, port=port, mqtt_version=version, client_id=f"serve-{prefix}", explicit=True
    )


def offline_smoothing(
    preds: list[dict], restarts: tuple[int, ...] = (), calibrated: bool = True
) -> list[dict]:
    """What the service's default smoothing must make of one device's predictions (in seq
    order): the offline filter over their ``probs``, restarted before the predictions at
    the indices ``restarts`` (after a gap), stepping with the calibrated settings on the
    predictions marked ``calibrated`` (unless ``calibrated`` is False). One dict per
    prediction: its ``activity`` and ``confidence``, and ``state``, the change event it
    must cause (None without a change)."""
    from harstream.models.har.smoothing import CALIBRATED, SmootherParams, SmoothingState

    labels = list(preds[0]["probs"])
    default = SmootherParams()
    filt = SmoothingState(len(labels), default)
    out = []
    for i, pred in enumerate(preds):
        if i in restarts:
            filt.reset()
        filt.params = CALIBRATED if calibrated and pred["calibrated"] else default
        previous = int(filt.label[0])
        probs = [pred["probs"][name] for name in labels]
        alpha = filt.update(probs, pred["window"]["end"])[0]
        label = int(filt.label[0])
        state = None
        if filt.changed[0]:
            state = {
                "device": pred["device"],
                "activity": labels[label],
                "since": float(filt.since[0]),
                "previous": labels[previous] if previous >= 0 else None,
                "confidence": float(alpha[label]),
                "model": pred["model"],
            }
        out.append({"activity": labels[label], "confidence": float(alpha[label]), "state": state})
    return out


def assert_smoothed(client: Client, device: str, restarts: tuple[int, ...] = ()) -> list[dict]:
    """The device's predictions so far (wait for them first) carry the offline filter's
    activity and confidence beside the window's own ``raw`` answer, and its ``state``
    messages are exactly the filter's changes; returns the state messages."""
    import pytest

    preds = sorted(client.json_of(device), key=lambda p: p["seq"])
    expected = offline_smoothing(preds, restarts)
    for pred, want in zip(preds, expected, strict=True):
        raw = pred["raw"]  # the argmax before rounding: one of the largest rounded values
        assert raw["confidence"] == pred["probs"][raw["activity"]] == max(pred["probs"].values())
        assert pred["activity"] == want["activity"], (device, pred["seq"])
        assert pred["confidence"] == pytest.approx(want["confidence"], abs=ROUNDED)
    states = client.json_of(device, "state")
    wanted = [w["state"] for w in expected if w["state"]]
    assert len(states) == len(wanted), (states, wanted)
    for got, want in zip(states, wanted, strict=True):
        assert got["confidence"] == pytest.approx(want.pop("confidence"), abs=ROUNDED)
        assert {k: got[k] for k in want} == want and len(got) == len(want) + 1
    return states


def http_get(port: int, path: str) -> tuple[int, object]:
    """Status and body (parsed where it is JSON) of a GET on a loopback port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def make_certificates(tmp: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=t")
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext",
        )  # fmt: skip
    return {n: tmp / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
