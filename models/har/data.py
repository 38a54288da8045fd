"""Read accelerometer recordings from the layouts people actually have, dirt included.

One public entry point, :func:`load_recordings`, reads a file or a directory of files and
returns per-(file, subject, device) :class:`Recording` arrays plus a :class:`LoadReport`.
Layouts are detected per file from its first data line:

- ``wisdm2019``: ``subject,activity,x,y,z;`` (the reduced WISDM 2019 watch files),
- ``wisdm2019-ts``: ``subject,activity,timestamp,x,y,z;`` (WISDM 2019 as published),
- ``wisdm-v1.1``: ``user,activity,timestamp,x,y,z;`` with activity names (WISDM v1.1),
- ``csv``: a header line naming ``t,x,y,z`` and optionally ``label``, ``subject``, ``device``;
  ``columns`` (:func:`parse_columns`, ``--columns t=time,x=ax,y=ay,z=az``) maps a file's
  own column names onto these.

Real files are dirty (WISDM v1.1 has lines without the trailing ``;``, several records on
one line, empty and malformed lines and zero timestamps). Bad records are skipped and
counted, never fatal; only a file whose layout cannot be recognised at all, or a CSV header
without the required columns, raises :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from harstream.models.har.timebase import to_seconds

# WISDM 2019 activity codes (the "activity_key" of the data set); the reduced watch files
# keep A B C D E M.
WISDM2019_ACTIVITIES = {
    "A": "walking",
    "B": "jogging",
    "C": "stairs",
    "D": "sitting",
    "E": "standing",
    "F": "typing",
    "G": "brushing_teeth",
    "H": "eating_soup",
    "I": "eating_chips",
    "J": "eating_pasta",
    "K": "drinking",
    "L": "eating_sandwich",
    "M": "kicking",
    "O": "playing_catch",
    "P": "dribbling",
    "Q": "writing",
    "R": "clapping",
    "S": "folding_clothes",
}
# WISDM v1.1 activity names, as written in its raw file.
WISDM_V11_ACTIVITIES = {
    "Walking": "walking",
    "Jogging": "jogging",
    "Upstairs": "upstairs",
    "Downstairs": "downstairs",
    "Sitting": "sitting",
    "Standing": "standing",
}
LAYOUTS = ("wisdm2019", "wisdm2019-ts", "wisdm-v1.1", "csv")
CSV_REQUIRED = ("x", "y", "z")
CSV_OPTIONAL = ("t", "label", "subject", "device")
MAX_BAD_LINES = 10  # how many offending lines the report keeps verbatim
_SNIFF_LINES = 50


class DataError(ValueError):
    """A data file cannot be read at all (unknown layout, missing columns, no samples)."""


@dataclass
class Recording:
    """Consecutive samples of one subject/device from one file.

    ``xyz`` is ``(n, 3)`` float32 in the file's units (m/s^2 for WISDM); ``t`` is seconds
    (float64) or ``None`` when the file has no timestamps (samples then are taken as
    consecutive at 20 Hz); ``labels`` holds activity names or is ``None`` for unlabelled data.
    """

    source: str
    subject: str
    device: str | None
    xyz: np.ndarray
    t: np.ndarray | None
    labels: np.ndarray | None

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def key(self) -> str:
        """Who recorded it: ``subject`` or ``subject/device``."""
        return self.subject if self.device is None else f"{self.subject}/{self.device}"


@dataclass
class LoadReport:
    """What was read and what was skipped (``skipped`` maps reason -> count)."""

    files: dict[str, str] = field(default_factory=dict)  # path -> detected layout
    records: int = 0
    samples: int = 0
    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)  # kept, but not well-formed
    bad_lines: list[tuple[str, int, str, str]] = field(default_factory=list)

    @property
    def skipped_total(self) -> int:
        return int(sum(self.skipped.values()))

    def _bad(self, source: str, line_no: int, reason: str, text: str) -> None:
        self.skipped[reason] += 1
        if len(self.bad_lines) < MAX_BAD_LINES:
            self.bad_lines.append((source, line_no, reason, text[:80]))

    def summary(self) -> str:
        """One human-readable paragraph, for CLIs."""
        layouts = Counter(self.files.values())
        parts = [
            f"read {self.samples:,} samples from {len(self.files)} file(s) "
            f"({', '.join(f'{n} {k}' for k, n in sorted(layouts.items()))})"
        ]
        if self.skipped:
            reasons = ", ".join(f"{n} {r}" for r, n in self.skipped.most_common())
            parts.append(f"skipped {self.skipped_total:,} bad record(s): {reasons}")
            first = "; ".join(f"{Path(s).name}:{n} {r}" for s, n, r, _ in self.bad_lines[:3])
            parts.append(f"first: {first}")
        if self.repaired:
            parts.append(
                "kept with repairs: " + ", ".join(f"{n} {r}" for r, n in self.repaired.items())
            )
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "files": dict(self.files),
            "records": self.records,
            "samples": self.samples,
            "skipped": dict(self.skipped),
            "repaired": dict(self.repaired),
            "bad_lines": [
                {"file": s, "line": n, "reason": r, "text": t} for s, n, r, t in self.bad_lines
            ],
        }


class Loaded(NamedTuple):
    """Result of :func:`load_recordings`: unpack as ``recordings, report = ...``."""

    recordings: list[Recording]
    report: LoadReport


def parse_columns(text: str) -> dict[str, str]:
    """``"t=time,x=ax,y=ay,z=az"`` -> ``{"t": "time", ...}``: the file's column that holds
    each of the CSV fields ``t,x,y,z,label,subject,device``; ValueError naming the fault."""
    known = (*CSV_REQUIRED, *CSV_OPTIONAL)
    columns: dict[str, str] = {}
    for pair in text.split(","):
        name, sep, column = (part.strip() for part in pair.partition("="))
        if not sep or not name or not column:
            raise ValueError(f"{pair.strip()!r} is not FIELD=COLUMN (as in t=time,x=ax)")
        if name not in known:
            raise ValueError(f"unknown field {name!r} in {pair.strip()!r}; fields: {known}")
        if name in columns:
            raise ValueError(f"field {name!r} is mapped twice")
        columns[name] = column
    return columns


def load_recordings(
    path: str | Path, layout: str = "auto", columns: Mapping[str, str] | None = None
) -> Loaded:
    """Read a file, or every data file in a directory (sorted, non-recursive).

    ``layout`` is ``"auto"`` (detect per file) or one of :data:`LAYOUTS`. ``columns`` maps
    CSV fields to the file's header names (see :func:`parse_columns`); fields it leaves out
    keep their own names. Files named ``README*`` and hidden files in a directory are ignored.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected 'auto' or one of {LAYOUTS}")
    rename = {column.lower(): name for name, column in (columns or {}).items()}
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file()
            and not p.name.startswith(".")
            and not p.name.upper().startswith("README")
        )
        if not files:
            raise DataError(f"no data files in directory {path}")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"no such file or directory: {path}")
    report = LoadReport()
    recordings: list[Recording] = []
    for file in files:
        recordings.extend(_load_file(file, layout, report, rename))
    if not recordings:
        raise DataError(f"no valid samples in {path} ({report.summary()})")
    return Loaded(recordings, report)


def activity_name(code: str) -> str:
    """Activity name for a WISDM code or v1.1 name; anything else is returned as given."""
    return WISDM2019_ACTIVITIES.get(code) or WISDM_V11_ACTIVITIES.get(code) or code


# ---------------------------------------------------------------------------- parsing


def _records(text_lines: Iterator[str], report: LoadReport, source: str, sep: str | None):
    """Yield ``(line_no, record_text, terminated)``; ``sep`` splits several records on one
    line, and ``terminated`` says whether the record ended with ``sep``."""
    for line_no, raw in enumerate(text_lines, start=1):
        line = raw.strip()
        if not line:
            report._bad(source, line_no, "empty", raw)
            continue
        if sep is None:
            yield line_no, line, True
            continue
        pieces = line.split(sep)
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            piece = piece.strip()
            if piece:  # an empty piece after the last separator is the normal terminator
                yield line_no, piece, i < last


def _sniff(path: Path, rename: Mapping[str, str]) -> tuple[str, int, str]:
    """Return ``(layout, line_no, line)`` from the first recognisable non-empty line.

    A few dirty lines at the top are tolerated; if none of the first non-empty lines
    fits a layout, the error names the first of them.
    """
    first_bad: tuple[int, str] | None = None
    seen = 0
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line_no, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            layout = _classify(line, rename)
            if layout is not None:
                return layout, line_no, line
            first_bad = first_bad or (line_no, line)
            seen += 1
            if seen >= _SNIFF_LINES:
                break
    if first_bad is None:
        raise DataError(f"{path} is empty")
    line_no, line = first_bad
    raise DataError(
        f"{path}:{line_no}: unknown layout in {line[:60]!r}; expected "
        "'subject,activity,x,y,z;', 'subject,activity,timestamp,x,y,z;' or a CSV "
        "header naming t,x,y,z[,label][,subject][,device] (other names: --columns "
        "t=time,x=ax,y=ay,z=az)"
    )


def _classify(line: str, rename: Mapping[str, str]) -> str | None:
    fields = [f.strip() for f in line.split(";")[0].split(",")]
    names = [rename.get(f.lower(), f.lower()) for f in fields]
    if any(n in CSV_REQUIRED for n in names) and not _is_float(fields[-1]):
        return "csv"
    if len(fields) == 5 and _is_float(fields[2]) and _parse_xyz(fields[2:]):
        return "wisdm2019"
    if len(fields) == 6 and _is_float(fields[2]) and _parse_xyz(fields[3:]):
        activity = fields[1]
        if activity in WISDM_V11_ACTIVITIES or len(activity) > 1:
            return "wisdm-v1.1"
        return "wisdm2019-ts"
    return None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Builder:
    """Accumulates samples per (subject, device) in order of appearance."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str | None], tuple[list, list, list]] = {}

    def add(self, subject: str, device: str | None, t: float | None, xyz, label) -> None:
        group = self.groups.setdefault((subject, device), ([], [], []))
        group[0].append(t)
        group[1].append(xyz)
        group[2].append(label)

    def build(self, source: str, has_t: bool, has_labels: bool) -> list[Recording]:
        out = []
        for (subject, device), (ts, xyzs, labels) in self.groups.items():
            out.append(
                Recording(
                    source=source,
                    subject=subject,
                    device=device,
                    xyz=np.asarray(xyzs, np.float32).reshape(-1, 3),
                    t=to_seconds(np.asarray(ts, np.float64)) if has_t else None,
                    labels=np.asarray(labels, dtype=object) if has_labels else None,
                )
            )
        return out


def _parse_xyz(fields: list[str]) -> tuple[float, float, float] | None:
    try:
        x, y, z = (float(f) for f in fields)
    except ValueError:
        return None
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
        return None
    return x, y, z


def _load_file(
    path: Path, layout: str, report: LoadReport, rename: Mapping[str, str]
) -> list[Recording]:
    detected, header_line, header = _sniff(path, rename)
    if layout == "auto":
        layout = detected
    source = str(path)
    report.files[source] = layout
    with path.open(encoding="utf-8", errors="replace") as fh:
        if layout == "csv":
            return _load_csv(fh, source, header_line, header, report, rename)
        return _load_wisdm(fh, source, layout, report)


def _load_wisdm(fh, source: str, layout: str, report: LoadReport) -> list[Recording]:
    n_fields = 5 if layout == "wisdm2019" else 6
    names = WISDM2019_ACTIVITIES if layout != "wisdm-v1.1" else WISDM_V11_ACTIVITIES
    builder = _Builder()
    for line_no, rec, terminated in _records(fh, report, source, sep=";"):
        report.records += 1
        fields = [f.strip() for f in rec.split(",")]
        if len(fields) != n_fields or not fields[0] or not fields[1]:
            report._bad(source, line_no, f"expected {n_fields} fields", rec)
            continue
        xyz = _parse_xyz(fields[-3:])
        if xyz is None:
            report._bad(source, line_no, "bad x/y/z value", rec)
            continue
        t = None
        if n_fields == 6:
            try:
                t = float(fields[2])
            except ValueError:
                report._bad(source, line_no, "bad timestamp", rec)
                continue
            if t <= 0 or not math.isfinite(t):
                report._bad(source, line_no, "zero timestamp", rec)
                continue
        label = names.get(fields[1], fields[1])
        builder.add(fields[0], None, t, xyz, label)
        report.samples += 1
        if not terminated:
            report.repaired["missing_semicolon"] += 1
    return builder.build(source, has_t=n_fields == 6, has_labels=True)


def _load_csv(
    fh, source: str, header_line: int, header: str, report: LoadReport, rename: Mapping[str, str]
):
    own = [c.strip().lower() for c in header.rstrip(";").split(",")]
    absent = [c for c in rename if c not in own]
    if absent:
        raise DataError(
            f"{source}:{header_line}: --columns names {absent}, not in the CSV header {header!r}"
        )
    columns = [rename.get(c, c) for c in own]
    missing = [c for c in CSV_REQUIRED if c not in columns]
    if missing:
        raise DataError(
            f"{source}:{header_line}: CSV header {header!r} lacks column(s) {missing}; "
            f"required {list(CSV_REQUIRED)}, optional {list(CSV_OPTIONAL)}; map other "
            "names with --columns, e.g. t=time,x=ax,y=ay,z=az"
        )
    index = {c: columns.index(c) for c in (*CSV_REQUIRED, *CSV_OPTIONAL) if c in columns}
    has_t, has_labels = "t" in index, "label" in index
    default_subject = Path(source).stem
    builder = _Builder()
    for line_no, rec, _ in _records(fh, report, source, sep=None):
        if line_no <= header_line:
            continue
        report.records += 1
        fields = [f.strip() for f in rec.rstrip(";").split(",")]
        if len(fields) != len(columns):
            report._bad(source, line_no, f"expected {len(columns)} fields", rec)
            continue
        xyz = _parse_xyz([fields[index[c]] for c in CSV_REQUIRED])
        if xyz is None:
            report._bad(source, line_no, "bad x/y/z value", rec)
            continue
        t = None
        if has_t:
            try:
                t = float(fields[index["t"]])
            except ValueError:
                report._bad(source, line_no, "bad timestamp", rec)
                continue
            if not math.isfinite(t):
                report._bad(source, line_no, "bad timestamp", rec)
                continue
        label = activity_name(fields[index["label"]]) if has_labels else None
        if has_labels and not label:
            report._bad(source, line_no, "empty label", rec)
            continue
        subject = fields[index["subject"]] if "subject" in index else default_subject
        device = fields[index["device"]] if "device" in index else None
        builder.add(subject or default_subject, device or None, t, xyz, label)
        report.samples += 1
    return builder.build(source, has_t=has_t, has_labels=has_labels)
