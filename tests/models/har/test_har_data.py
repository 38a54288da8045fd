"""Loaders for every supported layout, on small files the tests write, dirt included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harstream.models.har.data import DataError, load_recordings, parse_columns


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_wisdm2019_without_timestamps(tmp_path):
    lines = [f"1600,A,{i}.5,-{i},9.81;" for i in range(5)] + ["1600,D,0.1,0.2,9.7;"]
    recordings, report = load_recordings(write(tmp_path / "data_1600_accel_watch.txt", lines))
    assert report.files == {str(tmp_path / "data_1600_accel_watch.txt"): "wisdm2019"}
    (rec,) = recordings
    assert rec.subject == "1600" and rec.device is None and rec.t is None
    assert rec.xyz.dtype == np.float32 and rec.xyz.shape == (6, 3)
    np.testing.assert_allclose(rec.xyz[2], [2.5, -2.0, 9.81], rtol=1e-6)
    assert rec.labels.tolist() == ["walking"] * 5 + ["sitting"]
    assert report.samples == 6 and report.skipped_total == 0


def test_wisdm2019_dirty_lines_are_skipped_and_counted(tmp_path):
    lines = [
        "1601,B,1.0,2.0,3.0;",  # 1
        "",  # 2 empty
        "1601,B,1.0,2.0",  # 3 malformed: 4 fields
        "1601,B,1.0,oops,3.0;",  # 4 bad value
        "1601,B,4.0,5.0,6.0",  # 5 missing ';' but complete: kept
        "1601,B,nan,5.0,6.0;",  # 6 NaN
        "1601,M,7.0,8.0,9.0;",  # 7
    ]
    (rec,), report = load_recordings(write(tmp_path / "s.txt", lines))
    assert rec.labels.tolist() == ["jogging", "jogging", "kicking"]
    assert report.samples == 3
    assert report.skipped == {"empty": 1, "expected 5 fields": 1, "bad x/y/z value": 2}
    assert report.repaired["missing_semicolon"] == 1
    assert [line for _, line, _, _ in report.bad_lines] == [2, 3, 4, 6]
    assert "skipped 4 bad record(s)" in report.summary()


def test_wisdm2019_with_timestamps(tmp_path):
    base = 90426757696641
    lines = [f"1602,E,{base + i * 50_000_000},0.1,9.8,0.2;" for i in range(4)]
    lines.insert(2, "1602,E,0,0.1,9.8,0.2;")  # zero timestamp
    (rec,), report = load_recordings(write(tmp_path / "ts.txt", lines))
    assert report.files[str(tmp_path / "ts.txt")] == "wisdm2019-ts"
    assert report.skipped == {"zero timestamp": 1}
    np.testing.assert_allclose(np.diff(rec.t), 0.05, rtol=1e-6)  # nanoseconds -> seconds
    assert set(rec.labels) == {"standing"}


def test_wisdm_v11_raw_with_its_dirt(tmp_path):
    lines = [
        "33,Jogging,49105962326000,-0.6946377,12.680544,0.50395286;",
        "33,Jogging,49106062271000,5.012288,11.264028,0.95342433;"
        "33,Jogging,49106112167000,4.903325,10.882658,-0.08172209;",  # two records, one line
        "33,Jogging,49106222305000,-0.61291564,18.496431,3.0237172",  # no ';'
        "",
        "33,Jogging,0,0.0,0.0,0.0;",  # zero timestamp
        "33,Jogging,49106332290000,-1.1849703,12.108489,;",  # empty z
        "11,Upstairs,1867172313000,4.4,4.4,-1.0;",
        "garbage",
    ]
    recordings, report = load_recordings(write(tmp_path / "WISDM_ar_v1.1_raw.txt", lines))
    assert report.files[str(tmp_path / "WISDM_ar_v1.1_raw.txt")] == "wisdm-v1.1"
    by_subject = {r.subject: r for r in recordings}
    assert len(by_subject["33"]) == 4 and set(by_subject["33"].labels) == {"jogging"}
    assert by_subject["11"].labels.tolist() == ["upstairs"]
    assert report.skipped == {
        "empty": 1,
        "zero timestamp": 1,
        "bad x/y/z value": 1,
        "expected 6 fields": 1,
    }
    assert report.repaired == {"missing_semicolon": 1}
    assert [line for _, line, _, _ in report.bad_lines] == [4, 5, 6, 8]


def test_generic_csv_with_devices_and_milliseconds(tmp_path):
    lines = ["t,x,y,z,label,subject,device"]
    for i in range(3):
        lines.append(f"{1_700_000_000_000 + 50 * i},1,2,3,A,p1,watch")
        lines.append(f"{1_700_000_000_000 + 50 * i},4,5,6,standing,p1,phone")
    lines.append("1700000000200,1,2,3,A,p1")  # too few fields
    recordings, report = load_recordings(write(tmp_path / "mine.csv", lines))
    assert report.files[str(tmp_path / "mine.csv")] == "csv"
    assert sorted(r.key for r in recordings) == ["p1/phone", "p1/watch"]
    watch = next(r for r in recordings if r.device == "watch")
    np.testing.assert_allclose(np.diff(watch.t), 0.05, rtol=1e-5)  # ms -> seconds
    assert watch.labels.tolist() == ["walking"] * 3
    assert report.skipped == {"expected 7 fields": 1}
    assert report.bad_lines[0][1] == 8


def test_generic_csv_minimal_is_unlabelled(tmp_path):
    (rec,), _ = load_recordings(write(tmp_path / "dev42.csv", ["x,y,z", "1,2,3", "4,5,6"]))
    assert rec.labels is None and rec.t is None and rec.subject == "dev42"


def test_csv_missing_columns_names_the_line(tmp_path):
    path = write(tmp_path / "bad.csv", ["", "t,x,y,label", "0,1,2,A"])
    with pytest.raises(DataError, match=r"bad\.csv:2: .*lacks column\(s\) \['z'\]"):
        load_recordings(path)


def test_csv_with_other_column_names_reads_with_a_column_map(tmp_path):
    lines = ["time,ax,ay,az,activity", "1700000000000,1,2,3,A", "1700000000050,4,5,6,A"]
    path = write(tmp_path / "app.csv", lines)
    with pytest.raises(DataError, match=r"unknown layout .*--columns t=time,x=ax"):
        load_recordings(path)  # no column is named x, y or z: not even seen as CSV
    columns = parse_columns("t=time, x=AX,y=ay,z=az,label=activity")
    assert columns == {"t": "time", "x": "AX", "y": "ay", "z": "az", "label": "activity"}
    (rec,), report = load_recordings(path, columns=columns)  # header names match any case
    assert report.files[str(path)] == "csv"
    np.testing.assert_array_equal(rec.xyz, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(rec.t, [1_700_000_000.0, 1_700_000_000.05])
    assert rec.labels.tolist() == ["walking", "walking"]
    (partial,), _ = load_recordings(path, columns=parse_columns("x=ax,y=ay,z=az"))
    assert partial.t is None and partial.labels is None  # unmapped: "time" is not "t"
    with pytest.raises(DataError, match=r"app\.csv:1: --columns names \['acc_x'\]"):
        load_recordings(path, columns={"x": "acc_x", "y": "ay", "z": "az"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t=time,x", "'x' is not FIELD=COLUMN"),
        ("q=ax", "unknown field 'q'"),
        ("x=ax,x=ay", "mapped twice"),
        ("x=", "not FIELD=COLUMN"),
    ],
)
def test_column_map_errors_name_the_fault(text, message):
    with pytest.raises(ValueError, match=message):
        parse_columns(text)


def test_unknown_layout_names_the_line(tmp_path):
    path = write(tmp_path / "odd.txt", ["hello world", "1;2;3"])
    with pytest.raises(DataError, match=r"odd\.txt:1: unknown layout"):
        load_recordings(path)


def test_directory_reads_every_data_file_and_skips_readme(tmp_path):
    write(tmp_path / "README.md", ["# not data"])
    write(tmp_path / "a.txt", ["1,A,1,2,3;"])
    write(tmp_path / "b.txt", ["2,B,1,2,3;", "2,B,1,2,3;"])
    recordings, report = load_recordings(tmp_path)
    assert [r.subject for r in recordings] == ["1", "2"] and report.samples == 3


def test_missing_and_empty_inputs_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_recordings(tmp_path / "nope")
    with pytest.raises(DataError, match="no data files"):
        load_recordings(tmp_path)
    with pytest.raises(DataError, match="empty"):
        load_recordings(write(tmp_path / "blank.txt", ["", ""]))
    with pytest.raises(ValueError, match="unknown layout 'parquet'"):
        load_recordings(tmp_path, layout="parquet")
