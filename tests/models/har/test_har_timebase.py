"""The time unit rule the file loaders and the live service share."""

from __future__ import annotations

import numpy as np
import pytest

from harstream.models.har.timebase import MAX_TIME_S, scale_by_size, time_scale, to_seconds

UNIX_S = 1_764_600_000.0  # 2025-12-01
RATES = (5.0, 20.0, 50.0, 1000.0)


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e6, 1e9])
@pytest.mark.parametrize("rate", RATES)
def test_unix_and_since_start_times_at_any_accelerometer_rate(scale, rate):
    steps = np.arange(40) / rate
    for start in (UNIX_S, 3600.0, 0.0):  # unix time, an hour and no time since the start
        t = (start + steps) * scale
        assert time_scale(t) == scale, (start, rate)
        np.testing.assert_allclose(to_seconds(t), start + steps, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e6, 1e9])
def test_one_unix_time_is_told_by_its_size(scale):
    assert scale_by_size(UNIX_S * scale) == scale
    assert time_scale(np.array([UNIX_S * scale])) == scale


def test_what_no_unit_fits_is_left_to_the_range_check():
    assert scale_by_size(MAX_TIME_S * 1e9 * 1.01) == 1.0
    assert scale_by_size(float("nan")) == 1.0 and scale_by_size(-5.0) == 1.0
    # a small time since the start, alone, is seconds: nothing tells another unit
    assert time_scale(np.array([3_600_000.0])) == 1.0


def test_size_and_step_agree_on_the_larger_unit():
    # nanoseconds since the start (WISDM's clock): the size says at least us, the step ns
    t = 2.5e14 + np.arange(10) * 5e7
    assert time_scale(t) == 1e9
    # gaps and repeats do not move the median step
    t = UNIX_S * 1e3 + np.array([0, 50, 50, 100, 150, 9000, 9050, 9100])
    assert time_scale(t) == 1e3
