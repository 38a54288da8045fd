"""Accel payload decoding: every accepted form, and every kind of bad input named."""

from __future__ import annotations

import math

import numpy as np
import pytest
from harstream.stream.contract import check_prefix, is_valid_id
from harstream.stream.families.har import BINARY_CONTENT_TYPE, decode_accel, encode_binary
from harstream.stream.payloads import error_payload
from harstream.stream.routes import PayloadError


def test_single_sample_with_and_without_time():
    assert decode_accel(b'{"x": 1, "y": 2.5, "z": -3}').xyz.tolist() == [[1.0, 2.5, -3.0]]
    s = decode_accel(b'{"x": 1, "y": 2, "z": 3, "t": 1700000000.25}')
    assert s.times.tolist() == [1700000000.25] and s.rate_hz == 20.0


def test_batches_with_rate_t0_and_per_row_times():
    s = decode_accel(b'{"samples": [[1, 2, 3], [4, 5, 6]], "rate_hz": 50, "t0": 100}')
    assert s.xyz.tolist() == [[1, 2, 3], [4, 5, 6]] and s.rate_hz == 50
    assert s.times.tolist() == [100.0, 100.02]
    s = decode_accel(b"[[10.0, 1, 2, 3], [10.05, 4, 5, 6]]")
    assert s.times.tolist() == [10.0, 10.05] and s.xyz.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert decode_accel(b'{"samples": [[1, 2, 3]]}').times is None


def test_binary_round_trip_keeps_float32_values_and_times():
    xyz = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    s = decode_accel(encode_binary(xyz, rate_hz=100, t0=1700000000.0))
    np.testing.assert_array_equal(np.asarray(s.xyz, np.float32), xyz)
    assert s.rate_hz == 100 and s.times[1] == pytest.approx(1700000000.01)
    assert decode_accel(encode_binary(xyz), BINARY_CONTENT_TYPE).times is None


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b'{"x": 1, "y":', "malformed_json"),
        (b'{"x": "1", "y": 2, "z": 3}', "wrong_type"),
        (b'{"x": true, "y": 2, "z": 3}', "wrong_type"),
        (b'"walking"', "wrong_type"),
        (b"[1, 2, 3]", "wrong_type"),
        (b"[[1, 2, 3], [1, 2]]", "wrong_type"),
        (b'[[1, "a", 3]]', "wrong_type"),
        (b'{"samples": [[1, 2, 3]], "rate_hz": 0}', "out_of_range"),
        (b'{"x": 1, "y": 2}', "missing_axes"),
        (b"[[1, 2]]", "missing_axes"),
        (b'{"x": NaN, "y": 2, "z": 3}', "non_finite"),
        (b'{"x": 1e400, "y": 2, "z": 3}', "non_finite"),
        (encode_binary([[math.inf, 0, 0]]), "non_finite"),
        (b"", "empty"),
        (b'{"samples": []}', "empty"),
        (b"[" + b"[1,2,3]," * 5000 + b"[1,2,3]]", "oversize"),
        (bytes(range(256)), "binary_garbage"),
        (b"HSA1 but short", "binary_garbage"),
        (encode_binary([[1, 2, 3]])[:-1], "binary_garbage"),
    ],
)
def test_bad_payloads_are_named(payload, kind):
    with pytest.raises(PayloadError) as err:
        decode_accel(payload)
    assert err.value.kind == kind and err.value.message


def test_binary_content_type_without_magic_is_refused():
    with pytest.raises(PayloadError, match="magic") as err:
        decode_accel(b'{"x": 1, "y": 2, "z": 3}', BINARY_CONTENT_TYPE)
    assert err.value.kind == "binary_garbage"


def test_ids_and_prefixes():
    assert is_valid_id("watch-7.left_arm") and is_valid_id("a" * 64) and is_valid_id("7")
    for bad in ("", "a" * 65, "a b", "a/b", "é", "a+", ".", "..", "-", "_x", "service"):
        assert not is_valid_id(bad)
    assert check_prefix("site1/har") == "site1/har"
    for bad in ("", "/har", "har/", "h#r"):
        with pytest.raises(ValueError):
            check_prefix(bad)


def test_error_payload_is_json():
    assert error_payload("d", "oversize", "too big", "har/d/accel").startswith(b'{"device":"d"')
