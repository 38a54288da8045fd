"""Turn recorded files into replayable per-device tracks, using the HAR data loaders.

Parsing belongs to ``models.har.data`` (every layout, dirty lines skipped and counted); this
module only decides device ids and times: a file's subject/device column names the device
(or ``--device-id``), recorded timestamps are kept as they are, and files without them are
taken as consecutive samples at 20 Hz.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harstream.models.har.data import DataError, LoadReport, Recording, load_recordings
from harstream.replay.pacing import Track
from harstream.stream.contract import ID_RULE, is_valid_id
from harstream.stream.families.har import DEFAULT_RATE_HZ


@dataclass
class Recordings:
    """Tracks ready to replay and, per file, what the loader read and skipped."""

    tracks: list[Track]
    reports: list[LoadReport]

    @property
    def labelled(self) -> bool:
        return any(track.labels is not None for track in self.tracks)

    def summary(self) -> str:
        """What was read; the loader's details only for files with skipped or repaired lines."""
        if len(self.reports) == 1:
            return self.reports[0].summary()
        samples = sum(r.samples for r in self.reports)
        files = sum(len(r.files) for r in self.reports)
        dirty = [r.summary() for r in self.reports if r.skipped or r.repaired]
        return "\n".join([f"read {samples:,} samples from {files} files", *dirty])


def _clean(text: str) -> str:
    """A subject or device name made usable as a topic id (other characters become '-')."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", text)[:64]


def _track(recording: Recording, device: str) -> Track:
    if recording.t is None:
        t_rel = np.arange(len(recording)) / DEFAULT_RATE_HZ
    else:
        t_rel = recording.t - recording.t[0]
    return Track(
        device=device,
        t_rel=t_rel,
        xyz=recording.xyz,
        labels=recording.labels,
        timed=recording.t is not None,
    )


def load_tracks(
    paths: Sequence[str | Path],
    *,
    device_id: str | None = None,
    layout: str = "auto",
    columns: Mapping[str, str] | None = None,
) -> Recordings:
    """Read ``paths`` (files or directories) into one track per subject/device.

    With ``device_id`` a single recording is sent as that device; several recordings as
    ``<device_id>-<subject>``. ``columns`` maps CSV fields to other column names
    (``models.har.data.parse_columns``). Raises ``DataError`` (with file and line) for unreadable
    files and ``ValueError`` for an invalid ``device_id``.
    """
    if device_id is not None and not is_valid_id(device_id):
        raise ValueError(f"--device-id {device_id!r} is not a valid id: use {ID_RULE}")
    recordings: list[Recording] = []
    reports: list[LoadReport] = []
    for path in paths:
        found, report = load_recordings(path, layout, columns)
        recordings.extend(r for r in found if len(r) > 0)
        reports.append(report)
    if not recordings:
        raise DataError(f"no samples in {', '.join(map(str, paths))}")
    tracks: list[Track] = []
    taken: set[str] = set()
    for recording in recordings:
        key = _clean(recording.key)
        if device_id is None:
            name = key
        else:
            name = device_id if len(recordings) == 1 else _clean(f"{device_id}-{key}")
        unique, n = name, 2
        while unique in taken:  # the same subject in two files
            unique = _clean(f"{name}-{n}")
            n += 1
        taken.add(unique)
        tracks.append(_track(recording, unique))
    return Recordings(tracks, reports)
