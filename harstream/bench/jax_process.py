"""The JAX predictor in a child process, for timing JAX at another CPU thread count.

XLA fixes its CPU thread pool when JAX's backend starts (see ``models.runtime``), so JAX
at a thread count other than this process's runs in a spawned child that starts its
backend with that many threads and loads the same checkpoint. The child times its own
calls with the same :class:`~harstream.bench.timing.CallRunner` as every other runtime
and sends back the seconds; this process waits (idle) meanwhile, so the interleaved
rounds of ``bench model`` still hold.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import traceback
from pathlib import Path
from typing import Any

import numpy as np

START_TIMEOUT_S = 300.0  # loading and compiling every bucket on a busy 2-core machine


class JaxProcess:
    """A :class:`~harstream.bench.timing.Runner` (plus ``predict``) backed by a child process."""

    def __init__(self, checkpoint: Path, threads: int, max_batch: int) -> None:
        self.threads = threads
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(child, str(checkpoint), threads, max_batch), daemon=True
        )
        self._proc.start()
        child.close()
        self._reply(timeout=START_TIMEOUT_S)  # the child's "ready"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The child predictor's outputs for ``x`` (for the agreement check)."""
        return self._call("predict", x)

    def warm(self, x: np.ndarray, calls: int) -> None:
        self._call("warm", x, calls)

    def run(self, x: np.ndarray, calls: int, seconds: float) -> list[float]:
        return self._call("run", x, calls, seconds)

    def close(self) -> None:
        """Ask the child to exit; kill it if it does not."""
        if self._proc.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(("exit",))
            self._proc.join(10.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._conn.close()

    def __enter__(self) -> JaxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, op: str, *args: Any) -> Any:
        self._conn.send((op, *args))
        return self._reply()

    def _reply(self, timeout: float | None = None) -> Any:
        if timeout is not None and not self._conn.poll(timeout):
            self.close()
            raise RuntimeError(f"JAX child ({self.threads} threads) did not start in {timeout:g} s")
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"JAX child ({self.threads} threads) exited unexpectedly") from None
        if status == "error":
            raise RuntimeError(f"JAX child ({self.threads} threads) failed:\n{value}")
        return value


def _serve(conn: Any, checkpoint: str, threads: int, max_batch: int) -> None:
    """Child main: start JAX with ``threads``, load the predictor, answer requests."""
    try:
        from harstream.bench.timing import CallRunner
        from harstream.families import load_predictor
        from harstream.models.runtime import set_cpu_threads

        if not set_cpu_threads(threads):
            raise RuntimeError(f"could not start JAX with {threads} CPU threads here")
        predictor = load_predictor(checkpoint, max_batch=max_batch)
        runner = CallRunner(predictor.predict_valid)
        ops = {"predict": predictor.predict, "warm": runner.warm, "run": runner.run}
        conn.send(("ok", None))
        while True:
            op, *args = conn.recv()
            if op == "exit":
                return
            try:
                conn.send(("ok", ops[op](*args)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
