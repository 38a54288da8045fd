"""The per-device token bucket, on an injected clock: rate, burst, notices, the sink's drops
and the notices of the buffers' own drops."""

from __future__ import annotations

import numpy as np
import pytest

from harstream.stream.engine import DeviceSink, InferenceWorker
from harstream.stream.metrics import ServiceMetrics
from harstream.stream.notices import Tally
from harstream.stream.ratelimit import RateLimit
from harstream.stream.routes import Route


def make_limit(real_rate: float = 1.0, margin: float = 5.0, burst_s: float = 10.0, **kw):
    notices: list[tuple[str, str]] = []
    limit = RateLimit("har", real_rate, margin, burst_s, lambda d, m: notices.append((d, m)), **kw)
    return limit, notices


def admitted(bucket, times) -> int:
    return sum(bucket.admit(t) for t in times)


def test_a_full_bucket_passes_the_burst_then_the_excess_is_owed():
    limit, _ = make_limit(real_rate=1.0, margin=5.0, burst_s=10.0)  # 5/s, bursts of 10
    bucket = limit.bucket("flood")
    assert admitted(bucket, [0.0] * 25) == 10  # one message of 25 windows at t=0
    # the 15 refused are owed, up to one burst (10): closed until 2 s of the rate repaid it
    assert bucket.closed(1.9) and limit.closed("flood", 1.9)
    assert not bucket.closed(2.2) and admitted(bucket, [2.2]) == 1
    # an id within its share (5/s here) after that never owes anything
    assert admitted(bucket, [2.4 + i / 5 for i in range(1, 51)]) == 50


def test_a_flooding_id_gets_at_most_its_rate():
    limit, _ = make_limit(real_rate=1.0, margin=5.0, burst_s=10.0)
    bucket = limit.bucket("flood")
    passed = admitted(bucket, [i / 100 for i in range(1000)])  # 100 inputs/s for 10 s
    assert 10 <= passed <= 10 + 5 * 10  # the burst, then no more than the rate


def test_the_service_forgets_an_evicted_ids_bucket():
    limit, _ = make_limit(real_rate=1.0, margin=1.0, burst_s=1.0)
    bucket = limit.bucket("gone")
    assert bucket.admit(0.0) and not bucket.admit(0.0)
    assert limit.closed("gone", 0.0)
    limit.forget("gone")
    assert not limit.closed("gone", 0.0)  # unknown ids are never closed


def test_a_device_at_its_real_rate_never_loses_anything():
    limit, notices = make_limit(real_rate=1.0, margin=1.0, burst_s=1.0)  # no headroom at all
    bucket = limit.bucket("steady")
    assert admitted(bucket, [float(t) for t in range(3600)]) == 3600
    assert notices == []


def test_the_bucket_refills_to_its_capacity_only():
    limit, _ = make_limit(real_rate=2.0, margin=3.0, burst_s=4.0)  # 6/s, bursts of 8
    bucket = limit.bucket("d")
    assert admitted(bucket, [0.0] * 8) == 8
    assert admitted(bucket, [1000.0] * 20) == 8  # a long pause banks no more than 8


def test_the_clock_going_back_adds_no_tokens():
    limit, _ = make_limit(real_rate=1.0, margin=1.0, burst_s=2.0)
    bucket = limit.bucket("d")
    assert admitted(bucket, [10.0, 10.0]) == 2
    assert admitted(bucket, [5.0, 9.0, 10.0]) == 0


def test_capacity_is_at_least_one_input():
    limit, _ = make_limit(real_rate=0.05, margin=20.0, burst_s=1.0)  # 0.05 inputs in 1 s
    assert limit.capacity == 1.0 and limit.rate == 1.0
    bucket = limit.bucket("d")
    assert admitted(bucket, [0.0, 0.0, 2.0]) == 2  # the refused one is repaid by t = 1


def test_notices_are_rate_limited_and_carry_the_count_since_the_last():
    limit, notices = make_limit(real_rate=1.0, margin=1.0, burst_s=1.0, notice_every_s=10.0)
    bucket = limit.bucket("flood")
    assert bucket.admit(0.0)
    assert not bucket.admit(0.0)  # the first drop is told at once
    assert [d for d, _ in notices] == ["flood"] and notices[0][1].startswith(
        "1 input(s) or message(s) dropped"
    )
    dropped = 1
    for i in range(1, 100):  # 10 inputs/s for 9.9 s: about 1/s pass, nothing told yet
        dropped += not bucket.admit(i / 10)
    assert len(notices) == 1 and dropped > 80
    while len(notices) == 1:  # 10 s after the first notice, the next drop is told
        dropped += not bucket.admit(10.0)
    assert [d for d, _ in notices] == ["flood", "flood"]
    assert sum(int(m.split()[0]) for _, m in notices) == dropped  # every drop told once
    assert "may send 1/s (1 x a real device's 1/s) after a burst of 1;" in notices[1][1]


def test_devices_have_their_own_buckets():
    limit, notices = make_limit(real_rate=1.0, margin=1.0, burst_s=3.0)
    flood, quiet = limit.bucket("flood"), limit.bucket("quiet")
    assert admitted(flood, [0.0] * 50) == 3
    assert admitted(quiet, [0.0, 0.5, 1.0]) == 3
    assert {d for d, _ in notices} == {"flood"}


@pytest.mark.parametrize(
    "args", [(0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0), (-1.0, 1.0, 1.0)]
)
def test_bad_numbers_are_refused(args):
    with pytest.raises(ValueError):
        RateLimit("har", *args, lambda d, m: None)


class _Predictor:
    max_batch = 4
    item_shape = (2,)
    dtype = np.float32
    tag = "t@1"


def test_the_sink_drops_excess_before_the_queue_and_counts_it():
    metrics = ServiceMetrics()
    fm = metrics.family("har")
    route = Route("har", "in", "out", lambda p, c: p, lambda d, s: None, _Predictor(), None)
    worker = InferenceWorker(route, lambda t, p, r: None, fm, prefix="p", queue_size=1000)
    limit, notices = make_limit(real_rate=1.0, margin=2.0, burst_s=4.0)
    sink = DeviceSink("flood", worker, fm, limit.bucket("flood"))
    for t in (0.0, 3.0):  # 10 inputs at once, twice, 3 s apart
        for _ in range(10):
            sink.emit(np.zeros(2, np.float32), None, t)
    # the burst of 4; 6 refused, owed up to 4 and repaid at 2/s: 3 s later 2 more pass
    assert worker._queue.qsize() == 4 + 2
    assert metrics.value("harstream_drops_total", family="har", reason="rate_limited") == 14
    assert metrics.value("harstream_drops_total", family="har", reason="queue_full") == 0
    assert len(notices) == 1
    unlimited = DeviceSink("other", worker, fm)
    for _ in range(10):
        unlimited.emit(np.zeros(2, np.float32), None, 1.0)
    assert worker._queue.qsize() == 16


def test_a_tally_tells_the_first_drop_then_the_count_every_10_s():
    tally = Tally()
    assert tally.add(1, 0.0) == 1  # the first is told at once
    assert tally.add(3, 5.0) == 0  # within 10 s of it: held
    assert tally.add(2, 10.0) == 5  # the next one after 10 s carries every drop since
    assert tally.add(1, 12.0, every_s=1.0) == 0 and tally.add(1, 20.0, every_s=1.0) == 2


def test_the_sink_tells_the_device_its_buffer_drops_once_per_kind():
    metrics = ServiceMetrics()
    fm = metrics.family("har")
    route = Route("har", "in", "out", lambda p, c: p, lambda d, s: None, _Predictor(), None)
    worker = InferenceWorker(route, lambda t, p, r: None, fm, prefix="p", queue_size=10)
    told = []
    sink = DeviceSink("dev", worker, fm, notify=lambda *notice: told.append(notice))
    for _ in range(3):
        sink.drop("duplicate", 1, "twice")
    sink.drop("gap", 30, "a jump")
    assert told == [("dev", "duplicate", 1, "twice"), ("dev", "gap", 30, "a jump")]
    assert metrics.value("harstream_drops_total", family="har", reason="duplicate") == 3
    assert metrics.value("harstream_drops_total", family="har", reason="gap") == 30
