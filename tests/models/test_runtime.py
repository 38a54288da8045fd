"""JAX's CPU thread count: set before the backend starts, every thread free to use all cores."""

import os
import subprocess
import sys

import pytest

from harstream.models.runtime import set_cpu_threads

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform"
)

CHILD = """
import os, sys
from harstream.models.runtime import set_cpu_threads
first, second = set_cpu_threads(1), set_cpu_threads(2)
import jax, jax.numpy as jnp
jax.jit(lambda a: (a @ a).sum())(jnp.ones((256, 256))).block_until_ready()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
mask = os.sched_getaffinity(0)
free = all(os.sched_getaffinity(int(t)) == mask for t in os.listdir("/proc/self/task"))
print(first, second, sum(n.startswith("tf_XLAEigen") for n in names), free)
"""


def test_one_thread_pool_then_too_late_and_no_thread_left_pinned():
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert out == ["True", "False", "1", "True"]


def test_rejects_zero_threads():
    with pytest.raises(ValueError, match=">= 1"):
        set_cpu_threads(0)
