"""Synthetic accelerometer devices with a physical shape, for load tests and demos.

A simulated device is not noise: gravity sits on the axis the sensor's orientation puts it
on (a watch on a hanging arm reads +x, on a bent jogging arm -y, on a wrist resting in the
lap +z, as in the WISDM 2019 watch recordings), gait activities oscillate at a step
frequency with harmonics (walking ~2 Hz, jogging ~2.6 Hz, stairs ~1.6 Hz) plus an arm swing
at the stride frequency, and postures are low-noise. Each device holds an activity for a
random dwell time, then changes. Optional timestamp jitter, dropped samples and clock drift
exercise the service's resampling, gap and ordering logic.

Simulated devices are labelled as such everywhere: their ids start with ``sim-`` and every
report and summary built from them says "simulated".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from harstream.replay.pacing import Chunk

GRAVITY = 9.81
SIM_PREFIX = "sim-"
ORIENTATIONS = ("wrist", "pocket")


@dataclass(frozen=True)
class Profile:
    """How one activity looks to the sensor.

    ``gravity`` maps an orientation to the unit vector gravity points along (sensor frame).
    Gait activities have a ``step_hz`` range; the vertical bounce along gravity runs at the
    step frequency with two harmonics, the arm swing (on the perpendicular axes) at half of
    it. ``kick_every`` adds sharp bursts at random intervals (kicking a ball).
    """

    gravity: dict[str, tuple[float, float, float]]
    noise: float
    step_hz: tuple[float, float] | None = None
    bounce: float = 0.0
    swing: float = 0.0
    kick_every: tuple[float, float] | None = None


_UPRIGHT = {"wrist": (1.0, 0.0, 0.0), "pocket": (0.0, 1.0, 0.0)}
PROFILES: dict[str, Profile] = {
    "walking": Profile(_UPRIGHT, noise=0.4, step_hz=(1.8, 2.1), bounce=3.5, swing=2.5),
    "jogging": Profile(
        {"wrist": (0.0, -1.0, 0.0), "pocket": (0.0, 1.0, 0.0)},
        noise=0.8,
        step_hz=(2.4, 2.9),
        bounce=8.0,
        swing=6.0,
    ),
    "stairs": Profile(_UPRIGHT, noise=0.5, step_hz=(1.4, 1.7), bounce=3.0, swing=2.0),
    "sitting": Profile({"wrist": (0.0, 0.0, 1.0), "pocket": (0.3, 0.0, 0.95)}, noise=0.12),
    "standing": Profile(_UPRIGHT, noise=0.25),
    "kicking": Profile(_UPRIGHT, noise=1.2, kick_every=(1.5, 3.0)),
}
ACTIVITIES = tuple(PROFILES)


@dataclass(frozen=True)
class Imperfections:
    """Ways real devices misbehave: each one exercises a different part of the service.

    ``jitter_ms``: standard deviation of the error on each reported timestamp.
    ``drop``: probability that a sample is never sent.
    ``drift_pct``: the device clock runs this many percent fast or slow (random sign per
    device), so the reported rate is not exactly the nominal one.
    """

    jitter_ms: float = 0.0
    drop: float = 0.0
    drift_pct: float = 0.0

    def __post_init__(self) -> None:
        if self.jitter_ms < 0:
            raise ValueError(f"jitter must be >= 0 ms, got {self.jitter_ms}")
        if not 0.0 <= self.drop < 1.0:
            raise ValueError(f"drop probability must be in [0, 1), got {self.drop}")
        if not 0.0 <= self.drift_pct < 50.0:
            raise ValueError(f"clock drift must be in [0, 50) percent, got {self.drift_pct}")


@dataclass
class Block:
    """Consecutive simulated samples: ``t_true`` is when they happened (seconds since the
    device started), ``t_sent`` what the device's clock reports, ``labels`` the activity."""

    t_true: np.ndarray
    t_sent: np.ndarray
    xyz: np.ndarray
    labels: np.ndarray


def _tilt(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation of at most ``max_deg``: nobody wears a sensor perfectly aligned."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to ``up`` (the swing and lateral directions)."""
    helper = np.array([0.0, 0.0, 1.0]) if abs(up[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    swing = np.cross(up, helper)
    swing /= np.linalg.norm(swing)
    return swing, np.cross(up, swing)


class SimDevice:
    """One simulated sensor; ``generate(n)`` returns its next ``n`` samples.

    Deterministic for a given ``seed``. ``dwell`` is the (min, max) number of seconds an
    activity lasts before the device changes to another one; ``activities`` restricts the
    repertoire (a single activity never changes).
    """

    def __init__(
        self,
        device_id: str,
        *,
        seed: int = 0,
        rate_hz: float = 20.0,
        orientation: str = "wrist",
        dwell: tuple[float, float] = (20.0, 60.0),
        activities: tuple[str, ...] = ACTIVITIES,
        imperfections: Imperfections = Imperfections(),
        max_tilt_deg: float = 10.0,
    ) -> None:
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
        unknown = sorted(set(activities) - set(PROFILES))
        if unknown or not activities:
            raise ValueError(f"unknown activities {unknown}; choose from {list(ACTIVITIES)}")
        if rate_hz <= 0:
            raise ValueError(f"rate must be > 0 Hz, got {rate_hz}")
        if not 0 < dwell[0] <= dwell[1]:
            raise ValueError(f"dwell must be 0 < min <= max seconds, got {dwell}")
        self.device_id = device_id
        self.rate_hz = float(rate_hz)
        self.orientation = orientation
        self.dwell = dwell
        self.activities = tuple(activities)
        self.imperfections = imperfections
        self._rng = np.random.default_rng(seed)
        self.rotation = _tilt(self._rng, max_tilt_deg)
        sign = self._rng.choice([-1.0, 1.0])
        self.clock_rate = 1.0 + sign * imperfections.drift_pct / 100.0
        self._index = 0
        self._phase = self._rng.uniform(0, 2 * np.pi)
        self._harmonic_phase = self._rng.uniform(0, 2 * np.pi, size=4)
        self._kicks_at: list[float] = []
        self._start_activity(str(self._rng.choice(self.activities)))

    def _start_activity(self, name: str) -> None:
        self.activity = name
        profile = PROFILES[name]
        self.step_hz = self._rng.uniform(*profile.step_hz) if profile.step_hz else 0.0
        self._left = max(1, int(self._rng.uniform(*self.dwell) * self.rate_hz))

    def _next_activity(self) -> None:
        others = [a for a in self.activities if a != self.activity] or [self.activity]
        self._start_activity(str(self._rng.choice(others)))

    def generate(self, n: int) -> Block:
        """The next ``n`` samples, in m/s^2 with gravity, less the ones the device drops."""
        parts, labels = [], []
        while n > 0:
            take = min(n, self._left)
            parts.append(self._segment(take))
            labels.extend([self.activity] * take)
            self._left -= take
            n -= take
            if self._left == 0:
                self._next_activity()
        start = self._index - len(labels)
        t_true = np.arange(start, self._index) / self.rate_hz
        t_sent = t_true * self.clock_rate
        if self.imperfections.jitter_ms:
            t_sent = t_sent + self._rng.normal(0, self.imperfections.jitter_ms / 1000, t_sent.size)
        keep = self._rng.random(t_true.size) >= self.imperfections.drop
        xyz = np.concatenate(parts).astype(np.float32)
        return Block(t_true[keep], t_sent[keep], xyz[keep], np.array(labels)[keep])

    def _segment(self, n: int) -> np.ndarray:
        """``n`` samples of the current activity, continuing its phase from the last call."""
        profile = PROFILES[self.activity]
        rng = self._rng
        t = np.arange(self._index, self._index + n) / self.rate_hz
        self._index += n
        up = np.asarray(profile.gravity[self.orientation], float)
        up /= np.linalg.norm(up)
        swing_dir, lateral_dir = _basis(up)
        vertical = np.zeros(n)
        swing = np.zeros(n)
        lateral = np.zeros(n)
        if profile.step_hz:
            # a slowly wandering cadence (+-2 %), integrated so the phase stays continuous
            wobble = 1 + 0.02 * np.sin(2 * np.pi * 0.05 * t + self._harmonic_phase[3])
            phase = self._phase + 2 * np.pi * np.cumsum(self.step_hz * wobble) / self.rate_hz
            self._phase = float(phase[-1])
            h = self._harmonic_phase
            vertical = profile.bounce * (
                np.sin(phase) + 0.45 * np.sin(2 * phase + h[0]) + 0.2 * np.sin(3 * phase + h[1])
            )
            swing = profile.swing * (np.sin(phase / 2 + h[2]) + 0.3 * np.sin(phase + h[0]))
            lateral = 0.3 * profile.swing * np.sin(phase / 2 + h[1])
        else:
            # postures: breathing and small sway at ~0.25 Hz
            sway = 0.15 * np.sin(2 * np.pi * 0.25 * t + self._harmonic_phase[2])
            swing = sway
        if profile.kick_every:
            vertical = vertical + self._kicks(t, profile.kick_every)
        signal = (
            np.outer(GRAVITY + vertical, up)
            + np.outer(swing, swing_dir)
            + np.outer(lateral, lateral_dir)
            + rng.normal(0.0, profile.noise, size=(n, 3))
        )
        return signal @ self.rotation.T

    def _kicks(self, t: np.ndarray, every: tuple[float, float]) -> np.ndarray:
        """Short, strong acceleration pulses (a leg swing jerking the body) at random times."""
        if not self._kicks_at or self._kicks_at[-1] < t[0]:
            self._kicks_at = [t[0] + self._rng.uniform(0, every[1])]
        while self._kicks_at[-1] <= t[-1] + 0.3:
            self._kicks_at.append(self._kicks_at[-1] + self._rng.uniform(*every))
        out = np.zeros(t.size)
        for at in self._kicks_at:
            out += 10.0 * np.exp(-(((t - at) / 0.08) ** 2))
        self._kicks_at = [at for at in self._kicks_at if at > t[-1] - 0.3]
        return out


def sim_device_ids(n: int) -> list[str]:
    """``sim-000``, ``sim-001``, ...: ids that say the data is simulated."""
    width = max(3, len(str(n - 1)))
    return [f"{SIM_PREFIX}{i:0{width}d}" for i in range(n)]


def sim_chunks(
    device: SimDevice, *, samples_per_message: int, base: float, offset: float = 0.0
) -> Iterator[Chunk]:
    """The device's endless stream as messages of up to ``samples_per_message`` samples.

    Samples are generated a second at a time (cheap for thousands of devices) and sent
    with the device's own (possibly jittered, drifting) timestamps shifted to ``base``.
    """
    if samples_per_message < 1:
        raise ValueError(f"samples per message must be >= 1, got {samples_per_message}")
    imp = device.imperfections
    regular = not (imp.jitter_ms or imp.drop or imp.drift_pct)
    # about a second per block, a whole number of messages so that every message is full
    block_size = samples_per_message * math.ceil(device.rate_hz / samples_per_message)
    while True:
        block = device.generate(block_size)
        for start in range(0, block.t_true.size, samples_per_message):
            sl = slice(start, start + samples_per_message)
            yield Chunk(
                device=device.device_id,
                due=offset + float(block.t_true[sl][-1]),
                t=base + offset + block.t_sent[sl],
                xyz=block.xyz[sl],
                labels=block.labels[sl],
                rate_hz=device.rate_hz,
                regular=regular,
            )
