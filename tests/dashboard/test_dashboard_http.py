"""The dashboard's HTTP side over loopback: files, headers, the event stream, actions."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import pytest
from conftest import prediction


def request(url: str, path: str, method: str = "GET", body=None, headers=None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css")],
)
def test_the_page_comes_from_the_package_with_a_strict_policy(dashboard, path, content_type):
    board = dashboard()
    response, body = request(board.url, path)
    assert response.status == 200
    assert response.getheader("Content-Type").startswith(content_type)
    policy = response.getheader("Content-Security-Policy")
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert b"http://" not in body and b"https://" not in body  # nothing from elsewhere


def test_another_host_name_is_refused_on_loopback(dashboard):
    board = dashboard()
    response, _ = request(board.url, "/", headers={"Host": "attacker.example:8050"})
    assert response.status == 403
    response, _ = request(board.url, "/", headers={"Host": "localhost:8050"})
    assert response.status == 200


def test_the_event_stream_starts_with_a_snapshot(dashboard, device):
    board = dashboard()
    device.publish("watch-1", prediction("watch-1", "walking"), suffix="activity")
    parts = urlsplit(board.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    conn.request("GET", "/events")
    response = conn.getresponse()
    assert response.getheader("Content-Type") == "text/event-stream"
    events = []
    while len(events) < 8:
        line = response.fp.readline()
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
            if any(r["id"] == "watch-1" for e in events for r in e["rows"]):
                break
    conn.close()
    assert events[0]["type"] == "snapshot" and events[0]["allow_actions"] is False
    assert all(e["type"] == "delta" for e in events[1:])
    assert any(r["id"] == "watch-1" and r["a"] == "walking" for e in events for r in e["rows"])


def test_device_detail(dashboard, device):
    board = dashboard()
    device.publish("watch-1", prediction("watch-1", "walking"), suffix="activity")
    device.wait_for("watch-1", 1)
    for _ in range(100):
        response, body = request(board.url, "/api/device?id=watch-1")
        if response.status == 200:
            break
        time.sleep(0.05)
    detail = json.loads(body)
    assert detail["row"]["a"] == "walking" and len(detail["history"]) == 1
    assert request(board.url, "/api/device?id=nobody")[0].status == 404
    assert request(board.url, "/api/device?id=../x")[0].status == 404


def label(url: str, doc, content_type: str = "application/json"):
    body = json.dumps(doc).encode()
    return request(url, "/api/label", "POST", body, {"Content-Type": content_type})


def test_actions_are_refused_unless_allowed(dashboard, device):
    read_only = dashboard()
    response, body = label(read_only.url, {"device": "watch-1", "reset": True})
    assert response.status == 403 and b"--allow-actions" in body

    acting = dashboard(allow_actions=True)
    device.publish("watch-1", prediction("watch-1", "walking"), suffix="activity")
    device.wait_for("watch-1", 1)
    assert label(acting.url, {"device": "watch-1", "reset": True}, "text/plain")[0].status == 415
    for bad in (
        {"device": "../x", "reset": True},
        {"device": "watch-1", "activity": "flying", "seconds": 20},
        {"device": "watch-1", "activity": "walking", "seconds": 1},
        {"device": "watch-1", "activity": "walking", "seconds": "20"},
        ["watch-1"],
    ):
        assert label(acting.url, bad)[0].status == 400, bad
    for _ in range(100):  # the classes come with the first prediction the dashboard reads
        response, _ = label(acting.url, {"device": "watch-1", "activity": "walking", "seconds": 8})
        if response.status == 200:
            break
        time.sleep(0.05)
    assert response.status == 200
    assert label(acting.url, {"device": "watch-1", "reset": True})[0].status == 200
    assert device.wait_for("watch-1", 2, suffix="label") == [
        {"activity": "walking", "seconds": 8.0},
        {"reset": True},
    ]


HOSTILE_PAYLOADS = [
    b"",
    b"\xff\xfe\x00",
    b"null",
    b"[]",
    b"[" * 10_000 + b"]" * 10_000,
    b'{"activity": {"nested": 1}, "confidence": "x"}',
    b'{"activity": "' + b"a" * 60_000 + b'", "probs": {"x": 1e308}}',
    b'{"classes": {"a": 1e999}}',
    b'{"values": "abc", "value": [1]}',
    b'{"forecast": 1, "after": 3, "horizon": "x"}',
    b'{"error": ["x"], "message": 3}',
    b'{"status": {"online": true}, "models": [1, 2]}',
]
SUFFIXES = [
    "activity",
    "state",
    "calibration",
    "errors",
    "text",
    "text/class",
    "series",
    "series/forecast",
]


def test_errors_of_refused_ids_are_counted_by_kind(dashboard, device):
    board = dashboard()
    error = {"device": None, "error": "invalid_id", "message": "device id ..."}
    device.client.publish(f"{device.prefix}/_invalid/errors", json.dumps(error), qos=1)
    for _ in range(100):
        snapshot = json.loads(request(board.url, "/api/snapshot")[1])
        if snapshot["service"]["errors"]:
            break
        time.sleep(0.05)
    assert snapshot["service"]["errors"] == {"invalid_id": 1}
    assert not [r for r in snapshot["rows"] if r["id"] == "_invalid"]


def test_hostile_messages_on_every_topic_leave_it_working(dashboard, device, caplog):
    board = dashboard()
    for payload in HOSTILE_PAYLOADS:
        for suffix in SUFFIXES:
            device.publish("evil", payload, suffix=suffix)
        device.client.publish(f"{device.prefix}/service/status", payload, qos=1)
    device.publish("good", prediction("good", "walking"), suffix="activity")
    device.wait_for("good", 1)
    for _ in range(100):
        response, body = request(board.url, "/api/device?id=good")
        if response.status == 200:
            break
        time.sleep(0.05)
    assert json.loads(body)["row"]["a"] == "walking"
    snapshot = json.loads(request(board.url, "/api/snapshot")[1])
    evil = next(r for r in snapshot["rows"] if r["id"] == "evil")
    assert len(evil["a"] or "") <= 100
    assert not [r for r in caplog.records if r.name.startswith("harstream.dashboard")]
