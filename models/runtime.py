"""How many CPU threads JAX computes with.

XLA sizes its CPU compute thread pool once, when JAX's CPU backend starts, from the number
of cores the process may run on; JAX has no option for it. By default that is one thread
per core, which makes one large batch faster but costs more CPU per item for small ones
(measured here for the HAR CNN at batch 1: 0.55 ms of CPU for a 0.32 ms call with two
threads, 0.27-0.36 ms with one), and a multi-threaded call stalls whenever another process
holds one of its cores. A service that shares a small machine with its broker therefore
may want fewer threads than cores.

:func:`set_cpu_threads` starts the backend while the calling thread is restricted to
``n`` cores, so that XLA sizes its pool to ``n``, then lets every thread (XLA's included)
run on all cores again. It must run before anything else touches JAX's backend.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)


def backend_started() -> bool:
    """Whether JAX's backends are already initialised (their thread pools fixed)."""
    import sys

    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def set_cpu_threads(n: int) -> bool:
    """Start JAX's CPU backend with ``n`` compute threads; returns whether it took effect.

    It does not (returns False) when the backend has already started, or on platforms
    without CPU affinity (macOS, Windows).
    """
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    if not hasattr(os, "sched_setaffinity"):
        log.info("event=threads_unsupported: this platform cannot set JAX's CPU threads")
        return False
    if backend_started():
        log.debug("event=threads_too_late: JAX's backend already started; threads unchanged")
        return False
    cores = sorted(os.sched_getaffinity(0))
    existing = set(os.listdir("/proc/self/task"))
    os.sched_setaffinity(0, cores[: min(n, len(cores))])
    try:
        import jax

        jax.devices("cpu")
    finally:
        os.sched_setaffinity(0, cores)
    # XLA's new threads inherited the narrow mask: free them to use every core (a thread
    # that has ended since raises OSError)
    for tid in set(os.listdir("/proc/self/task")) - existing:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cores)
    return True


def default_inference_threads() -> int:
    """The service's default: half the cores (at least 1), the rest left to the MQTT thread,
    the broker and the devices' side. On 2 cores this measured better than XLA's default of
    one per core (docs/performance.md): a one-thread call costs about half the CPU at batch
    1, and a two-thread call stalls whenever the other core is busy."""
    return max(1, default_cpu_threads() // 2)


def default_cpu_threads() -> int:
    """The thread count XLA picks by itself: one per core this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
