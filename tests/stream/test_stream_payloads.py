"""The shared payload helpers."""

from __future__ import annotations

from harstream.stream.payloads import error_payload


def test_error_payload_is_json():
    assert error_payload("d", "oversize", "too big", "har/d/accel").startswith(b'{"device":"d"')
