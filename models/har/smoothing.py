"""Causal smoothing of one-per-window class posteriors: a sticky-HMM forward filter.

The CNN scores each 4 s window on its own, so what a person sees flickers between
neighbouring classes (sitting/standing, walking/stairs). People change activity rarely
compared with one window per second, so a hidden Markov model whose state is the true
activity and whose transition matrix is "sticky" is the natural prior:

    T[i, i] = p_stay,   T[i, j] = (1 - p_stay) / (C - 1) for j != i.

The forward filter is exact for that model and costs O(C) per window, because
``alpha @ T = p_stay * alpha + q * (1 - alpha)`` with ``q = (1 - p_stay) / (C - 1)``
(alpha sums to 1), so the C x C matrix is never formed.

The CNN gives posteriors, not likelihoods. With a (near) uniform class prior in training,
``p(window | class)`` is proportional to ``p(class | window)``; windows at hop 1 s overlap
by 75 % and are far from independent, so each posterior is *tempered*: raised to
``beta < 1`` and renormalised, which counts one window as ``beta`` of an observation.

Never stuck: every class keeps a predicted prior of at least ``q`` after each step, and
window posteriors are floored at ``eps`` before tempering, so one window can raise a
class's odds against the current one by a factor bounded below, independent of how long
the current activity lasted. A sustained change therefore wins in a bounded number of
windows (see :func:`windows_to_switch`), however long the previous activity ran.

``since``: when the smoothed answer changes to class k at time t, the activity is
reported as having begun at the first window of the latest *raw* run of k, where a run
tolerates up to ``gap`` windows in a row with a different raw argmax (transitions flicker),
minus ``lead_s``: a CNN window's argmax flips when about half of it shows the new
activity, i.e. about half a window (2 s) after the change. Memory stays O(C) per device:
the start of each class's raw run and the windows since it was last seen.

Everything is batched over devices: the state holds ``(n_devices, C)`` arrays and
:meth:`SmoothingState.update` takes the rows that received a window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

EPS = 1e-4  # floor of a window posterior before tempering: a CNN's "0" is not certainty
HALF_WINDOW_S = 2.0  # 80 samples at 20 Hz, halved: when a window's argmax flips


@dataclass(frozen=True)
class SmootherParams:
    """Settings of the filter; see the module docstring for their meaning."""

    # Chosen on 8 subjects the shipped CNN never saw, with a CNN trained on 25 others
    # (median delay <= 5 s, missed changes no worse than the raw CNN's); anything from
    # 0.8 to 0.99 scored within 0.01 there (docs/results/har.md).
    p_stay: float = 0.8
    beta: float = 0.3
    eps: float = EPS
    gap: int = 2  # windows of another raw class tolerated inside one raw run (for `since`)
    lead_s: float = HALF_WINDOW_S

    def __post_init__(self) -> None:
        if not 0.0 < self.p_stay < 1.0:
            raise ValueError(f"p_stay must be in (0, 1), got {self.p_stay}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if not 0.0 < self.eps < 1.0 or self.gap < 0:
            raise ValueError(f"need 0 < eps < 1 and gap >= 0, got eps={self.eps}, gap={self.gap}")


# For calibrated posteriors (a device's prototypes mixed in): they are less overconfident
# than the CNN's own, so a stickier filter that tempers them less fits them. Chosen in
# research on 8 subjects that the CNN used there never saw (a CNN trained on others),
# never on the shipped CNN's test subjects; on those, windows >= 40 s into an activity with
# 20 s of labels, calibrated + smoothed scored 0.887 with these against 0.868 with the
# defaults (docs/results/har.md).
CALIBRATED = SmootherParams(p_stay=0.95, beta=0.5)


def temper(probs: np.ndarray, beta: float, eps: float = EPS) -> np.ndarray:
    """``max(probs, eps) ** beta`` renormalised over the last axis."""
    p = np.maximum(np.asarray(probs, np.float64), eps) ** beta
    return p / p.sum(axis=-1, keepdims=True)


def predict_prior(alpha: np.ndarray, p_stay: float) -> np.ndarray:
    """``alpha @ T`` for the sticky transition matrix, in O(C) per row."""
    q = (1.0 - p_stay) / (alpha.shape[-1] - 1)
    return p_stay * alpha + q * (1.0 - alpha)


def filter_step(alpha: np.ndarray, probs: np.ndarray, params: SmootherParams) -> np.ndarray:
    """One forward step for a batch of rows: ``(n, C)`` filtered state and window posteriors."""
    post = predict_prior(alpha, params.p_stay) * temper(probs, params.beta, params.eps)
    return post / post.sum(axis=-1, keepdims=True)


def filter_sequence(probs: np.ndarray, params: SmootherParams) -> np.ndarray:
    """Smoothed posteriors of streams ``(T, ..., C)`` (time first) from a uniform start.

    The offline twin of :class:`SmoothingState` for evaluation: same step, no change events.
    """
    probs = np.asarray(probs, np.float64)
    out = np.empty_like(probs)
    alpha = np.full(probs.shape[1:], 1.0 / probs.shape[-1])
    for i, p in enumerate(probs):
        alpha = out[i] = filter_step(alpha, p, params)
    return out


def windows_to_switch(params: SmootherParams, old: np.ndarray, new: np.ndarray) -> int:
    """Windows of posterior ``new`` until the filter, settled on windows ``old``, follows them.

    The filter is first run to its fixed point on ``old`` (what any long bout of that
    activity converges to), so the answer bounds the delay however long the bout lasted.
    """
    old = np.asarray(old, np.float64)[None]
    alpha = np.full_like(old, 1.0 / old.shape[1])
    for _ in range(10_000):
        alpha = filter_step(alpha, old, params)
    target = int(np.argmax(new))
    for n in range(1, 10_000):
        alpha = filter_step(alpha, np.asarray(new, np.float64)[None], params)
        if alpha[0].argmax() == target:
            return n
    raise ValueError("no switch within 10,000 windows")


class SmoothingState:
    """Filter state of ``n_devices`` devices, ``(n_devices, n_classes)`` arrays.

    After :meth:`update`, ``label[rows]`` is each device's smoothed argmax, ``changed[rows]``
    says whether it differs from that device's previous answer (the first window after a
    reset is a change) and ``since[rows]`` is when the current activity began (seconds,
    on the clock of the ``t`` passed in).
    """

    def __init__(self, n_classes: int, params: SmootherParams, n_devices: int = 1) -> None:
        if n_classes < 2 or n_devices < 1:
            raise ValueError(
                f"need n_classes >= 2 and n_devices >= 1, got {n_classes}, {n_devices}"
            )
        self.params = params
        self.n_classes = n_classes
        self.alpha = np.empty((n_devices, n_classes))
        self.run_start = np.empty((n_devices, n_classes))  # first t of each class's raw run
        self.run_gap = np.empty((n_devices, n_classes))  # windows since the raw argmax was it
        self.label = np.empty(n_devices, np.int64)
        self.since = np.empty(n_devices)
        self.changed = np.zeros(n_devices, bool)
        self.reset()

    def reset(self, rows: np.ndarray | slice | None = None) -> None:
        """Forget devices ``rows`` (all by default), e.g. after a gap in their data."""
        rows = slice(None) if rows is None else rows
        self.alpha[rows] = 1.0 / self.n_classes
        self.run_start[rows] = np.nan
        self.run_gap[rows] = np.inf
        self.label[rows] = -1
        self.since[rows] = np.nan
        self.changed[rows] = False

    def update(
        self, probs: np.ndarray, t: np.ndarray | float, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Feed one window per device in ``rows`` (default: all); return their smoothed posteriors.

        ``probs``: ``(len(rows), C)`` window posteriors (or ``(C,)`` for one device); ``t``:
        each window's time in seconds (a scalar for all rows). Rows must be distinct.
        """
        rows = np.arange(self.alpha.shape[0]) if rows is None else np.asarray(rows)
        probs = np.asarray(probs, np.float64).reshape(len(rows), self.n_classes)
        t = np.broadcast_to(np.asarray(t, np.float64), (len(rows),))
        alpha = filter_step(self.alpha[rows], probs, self.params)
        self.alpha[rows] = alpha
        self._track_runs(rows, probs.argmax(axis=1), t)
        new = alpha.argmax(axis=1)
        changed = new != self.label[rows]
        self.changed[rows] = changed
        self.label[rows] = new
        hit = rows[changed]
        start = self.run_start[hit, new[changed]]
        # A class the raw CNN never chose lately has no run: it began now, as far as we know.
        start = np.where(np.isnan(start), t[changed], start)
        self.since[hit] = np.minimum(start - self.params.lead_s, t[changed])
        return alpha

    def _track_runs(self, rows: np.ndarray, raw: np.ndarray, t: np.ndarray) -> None:
        """Extend or restart each device's raw run of its raw argmax class."""
        self.run_gap[rows] += 1
        broken = self.run_gap[rows, raw] > self.params.gap + 1
        self.run_start[rows, raw] = np.where(broken, t, self.run_start[rows, raw])
        self.run_gap[rows, raw] = 0


class DeviceSmoother:
    """One device's :class:`SmoothingState`, in plain Python floats: the service's step.

    Same arithmetic in the same order, so the same answers up to rounding (NumPy's
    vectorised power differs from libm's in the last bit; tested against the batched
    class). The service filters one window of one device at a time, and with 6 classes
    NumPy's per-call overhead is all the cost: ``SmoothingState.update`` took 39-62 us for one
    row, this takes about 5 us (Python 3.11, 2 shared cores of the development machine).

    ``segment`` numbers the caller's stretches of continuous data: a window from another
    segment than the previous one starts afresh, as :meth:`SmoothingState.reset` after a gap.
    A window whose posteriors are ``calibrated`` is filtered with ``calibrated_params``
    (default :data:`CALIBRATED`): the state carries over, only the step's settings change,
    and the next uncalibrated window (after a calibration reset) steps with ``params`` again.
    After :meth:`update`, ``label``, ``changed`` and ``since`` are as in
    :class:`SmoothingState` and ``previous`` is the label before the window (-1 after a reset).
    """

    __slots__ = (
        "params",
        "calibrated_params",
        "segment",
        "alpha",
        "run_start",
        "run_gap",
        "label",
        "previous",
        "changed",
        "since",
    )

    def __init__(
        self,
        n_classes: int,
        params: SmootherParams,
        calibrated_params: SmootherParams = CALIBRATED,
    ) -> None:
        if n_classes < 2:
            raise ValueError(f"need n_classes >= 2, got {n_classes}")
        self.params = params
        self.calibrated_params = calibrated_params
        self.segment = 0
        self.alpha = [1.0 / n_classes] * n_classes
        self.reset()

    def reset(self) -> None:
        """Forget the device's past (its segment stays)."""
        n = len(self.alpha)
        self.alpha = [1.0 / n] * n
        self.run_start = [math.nan] * n
        self.run_gap = [math.inf] * n
        self.label = self.previous = -1
        self.changed = False
        self.since = math.nan

    def update(
        self, probs: list[float], t: float, segment: int = 0, calibrated: bool = False
    ) -> list[float]:
        """Feed one window's posteriors (time ``t``, seconds); return the smoothed posteriors."""
        if segment != self.segment:
            self.reset()
            self.segment = segment
        p = self.calibrated_params if calibrated else self.params
        n = len(self.alpha)
        eps, beta = p.eps, p.beta
        tempered = [(v if v > eps else eps) ** beta for v in probs]
        total = 0.0  # sequential sums, as NumPy's for fewer than 8 values (not Python's sum)
        for v in tempered:
            total += v
        q = (1.0 - p.p_stay) / (n - 1)
        post = [
            (p.p_stay * a + q * (1.0 - a)) * (v / total)
            for a, v in zip(self.alpha, tempered, strict=True)
        ]
        total = 0.0
        for v in post:
            total += v
        alpha = self.alpha = [v / total for v in post]
        # the raw runs, as SmoothingState._track_runs; list.index(max(..)) is the first
        # maximum, as NumPy's argmax
        gaps = self.run_gap = [g + 1 for g in self.run_gap]
        raw = probs.index(max(probs))
        if gaps[raw] > p.gap + 1:
            self.run_start[raw] = t
        gaps[raw] = 0
        new = alpha.index(max(alpha))
        self.previous = self.label
        self.changed = new != self.label
        self.label = new
        if self.changed:
            start = self.run_start[new]
            if math.isnan(start):
                start = t
            self.since = min(start - p.lead_s, t)
        return alpha

    def snapshot(self) -> dict[str, Any]:
        """The state as plain values and float64 arrays (for a planned restart)."""
        return {
            "segment": self.segment,
            "alpha": np.array(self.alpha),
            "run_start": np.array(self.run_start),
            "run_gap": np.array(self.run_gap),
            "label": self.label,
            "since": np.array([self.since]),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take over a :meth:`snapshot`; ValueError if it has another number of classes."""
        n = len(self.alpha)
        arrays = [np.asarray(state[k], np.float64) for k in ("alpha", "run_start", "run_gap")]
        if any(a.shape != (n,) for a in arrays) or not -1 <= int(state["label"]) < n:
            raise ValueError(f"a saved smoother does not fit {n} classes")
        self.alpha, self.run_start, self.run_gap = (a.tolist() for a in arrays)
        self.segment = int(state["segment"])
        self.label = self.previous = int(state["label"])
        self.changed = False
        self.since = float(np.asarray(state["since"], np.float64).reshape(-1)[0])
