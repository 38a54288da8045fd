"""HAR subject split, augmentation, summary, baseline and the HAR train/evaluate commands.

The end-to-end runs use small generated WISDM-style files (one per subject) whose classes
differ in gravity direction and rhythm, so a couple of epochs learn them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harstream.cli import main
from harstream.families import load_predictor
from harstream.models import summary, training
from harstream.models.figures import pyplot
from harstream.models.har import network
from harstream.models.har.training import (
    HarTrainConfig,
    augment_windows,
    class_order,
    fit_normalization,
    random_jitter,
    random_orientations,
    random_scale,
    random_warp,
    rotate,
    split_subjects,
    subject_folds,
)

CODES = "ABCDEM"


def write_subject(folder: Path, subject: int, rng: np.random.Generator, per_class: int = 600):
    """One ``subject,activity,x,y,z;`` file: each class its own gravity axis and rhythm."""
    lines = []
    t = np.arange(per_class) / 20.0
    for k, code in enumerate(CODES):
        xyz = rng.normal(0, 0.3, (per_class, 3))
        xyz[:, k % 3] += 9.8 if k < 3 else -9.8
        xyz[:, (k + 1) % 3] += 3 * np.sin(2 * np.pi * (0.5 + k) * t)
        lines += [f"{subject},{code},{x:.4f},{y:.4f},{z:.4f};" for x, y, z in xyz]
    (folder / f"data_{subject}_accel_watch.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wisdm")
    rng = np.random.default_rng(0)
    for subject in range(1600, 1606):
        write_subject(folder, subject, rng)
    return folder


@pytest.fixture(scope="module")
def trained(generated, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "har-cnn"
    code = main(
        [
            "train", "har", "--data", str(generated), "--epochs", "3", "--batch-size", "64",
            "--out", str(out), "--test-subjects", "1600", "--val-subjects", "1601",
            "--no-progress", "--version", "test", "--lr", "3e-3", "--augment", "none",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_split_is_deterministic_disjoint_and_honours_choices():
    subjects = [str(s) for s in range(1600, 1641)]
    split = split_subjects(subjects, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (27, 6, 8)
    assert split == split_subjects(list(reversed(subjects)), seed=0)
    assert split != split_subjects(subjects, seed=1)
    assert not (set(split.train) & set(split.val) or set(split.train) & set(split.test))
    chosen = split_subjects(subjects, test=["1637", "1638"], val=["1600"])
    assert chosen.test == ["1637", "1638"] and chosen.val == ["1600"]
    assert len(chosen.train) == 38
    with pytest.raises(ValueError, match=r"\['9999'\] not in the data"):
        split_subjects(subjects, test=["9999"])
    with pytest.raises(ValueError, match="no subjects left"):
        split_subjects(["a", "b"], test=["a"], val=["b"])
    no_val = split_subjects(subjects, seed=0, val=[])
    assert no_val.val == [] and no_val.test == split.test
    assert no_val.train == sorted(split.train + split.val)


def test_subject_folds_cover_the_subjects_once():
    subjects = [str(s) for s in range(1600, 1633)]
    folds = subject_folds(subjects, 3, seed=0)
    assert [len(f) for f in folds] == [11, 11, 11]
    assert sorted(sum(folds, [])) == subjects
    assert folds == subject_folds(list(reversed(subjects)), 3, seed=0)
    assert folds != subject_folds(subjects, 3, seed=1)
    assert [len(f) for f in subject_folds(subjects[:7], 3)] == [3, 2, 2]
    for bad in (1, 34):
        with pytest.raises(ValueError, match="folds"):
            subject_folds(subjects, bad)


def test_amplitude_jitter_and_time_warp_augmentations():
    rng = np.random.default_rng(0)
    t = np.arange(80) / 20.0
    x = np.stack([np.sin(2 * np.pi * 2 * t), np.cos(2 * np.pi * 2 * t), np.full(80, 9.8)], -1)
    x = np.repeat(x[None], 256, axis=0).astype(np.float32)
    scaled = random_scale(rng, x, 0.2)
    ratio = scaled[:, 0, 2] / x[:, 0, 2]
    assert 0.8 <= ratio.min() < 0.85 and 1.15 < ratio.max() <= 1.2
    np.testing.assert_allclose(scaled / ratio[:, None, None], x, rtol=1e-5)  # one factor
    noisy = random_jitter(rng, x, 0.1)
    assert noisy.dtype == np.float32 and 0.09 < float((noisy - x).std()) < 0.11
    np.testing.assert_allclose(random_warp(rng, x, 0.0), x, atol=1e-5)
    warped = random_warp(rng, x, 0.25)
    assert warped.shape == x.shape and warped.dtype == np.float32
    np.testing.assert_allclose(warped[:, :, 2], 9.8, rtol=1e-5)  # constants stay
    assert np.abs(warped[:, :, :2]).max() <= 1.0 + 1e-5 and not np.allclose(warped, x)
    # the dominant frequency (2 Hz, bin 8) moves by at most the stretch factor
    peaks = np.abs(np.fft.rfft(warped[:, :, 0], axis=1)).argmax(axis=1)
    assert peaks.min() >= 6 and peaks.max() <= 10 and len(set(peaks.tolist())) > 1
    config = HarTrainConfig(data="", augment="none", scale=0.0, jitter=0.0, warp=0.0)
    np.testing.assert_array_equal(augment_windows(rng, x, config), x)
    config = HarTrainConfig(data="", augment="mirror", scale=0.2, jitter=0.1, warp=0.1)
    assert not np.allclose(augment_windows(rng, x, config), x)


def test_orientations_are_rotations_or_mirrors_and_keep_magnitude():
    rots = random_orientations(np.random.default_rng(0), 64)
    eye = np.broadcast_to(np.eye(3), rots.shape)
    np.testing.assert_allclose(rots @ rots.transpose(0, 2, 1), eye, atol=1e-5)
    dets = np.linalg.det(rots)
    assert set(np.round(dets).astype(int)) == {-1, 1}
    assert np.all(np.abs(rots[:, 2, 2]) > np.cos(np.deg2rad(16)))  # z stays near z
    mirror = random_orientations(np.random.default_rng(0), 64, "mirror")
    assert np.all(np.abs(mirror[:, 0, 0]) > 0.8)  # x stays on the x axis, either sign
    assert (mirror[:, 0, 0] < 0).any() and (mirror[:, 0, 0] > 0).any()
    with pytest.raises(ValueError, match="orientation mode"):
        random_orientations(np.random.default_rng(0), 1, "spin")
    x = np.random.default_rng(1).normal(size=(64, 80, 3)).astype(np.float32)
    norms = np.linalg.norm(rotate(x, rots), axis=2)
    np.testing.assert_allclose(norms, np.linalg.norm(x, axis=2), rtol=1e-4)


def test_normalization_and_class_order():
    x = np.stack([np.full((10, 80), v) for v in (1.0, 2.0, 3.0)], axis=-1)
    x[5:, :, 0] = 3.0
    norm = fit_normalization(x)
    assert norm["mean"] == pytest.approx([2.0, 2.0, 3.0])
    assert norm["std"] == pytest.approx([1.0, 1.0, 1.0])
    assert class_order(["kicking", "walking", "zumba", "sitting", ""]) == [
        "walking", "sitting", "kicking", "zumba",
    ]  # fmt: skip


def test_summary_of_both_architectures(capsys):
    assert main(["summary", "har-cnn"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 520,486" in out and "(None, 71, 100)" in out and "conv4 (Conv)" in out
    lstm = network.HarLSTM()
    rows, total = summary.layer_rows(lstm, jax.ShapeDtypeStruct((1, 80, 3), jnp.float32))
    assert total == network.count_params(network.init_params(lstm))
    assert [r[0] for r in rows][:2] == ["lstm1", "lstm2"] and sum(r[3] for r in rows) == total


def test_trained_checkpoint_has_its_metadata_and_curves(trained):
    meta = json.loads((trained / "meta.json").read_text())
    assert meta["classes"] == ["walking", "jogging", "stairs", "sitting", "standing", "kicking"]
    assert meta["training"]["split"] == {
        "train": ["1602", "1603", "1604", "1605"], "val": ["1601"], "test": ["1600"],
    }  # fmt: skip
    assert len(meta["normalization"]["mean"]) == 3 and meta["hop"] == 40
    assert meta["name"] == "har-cnn" and meta["version"] == "test"
    losses = [h["loss"] for h in meta["training"]["history"]]
    assert losses[-1] < losses[0]
    assert meta["metrics"]["test"]["windows"] > 0
    assert (trained / "curves.png").stat().st_size > 1000


def test_a_one_epoch_run_warns_of_nothing_draws_its_point_and_writes_like_its_siblings(
    generated, tmp_path, caplog
):
    """The shortest training: no optax note about a 0-step warm-up, a curve that shows
    its one epoch, and checkpoint files that all honour the umask."""
    import logging

    caplog.set_level(logging.INFO)
    out = tmp_path / "one-epoch"
    old_umask = os.umask(0o022)
    try:
        code = main(
            [
                "train", "har", "--data", str(generated), "--epochs", "1", "--out", str(out),
                "--test-subjects", "1600", "--no-progress", "--version", "test",
            ]
        )  # fmt: skip
    finally:
        os.umask(old_umask)
    assert code == 0
    assert "transition_steps" not in caplog.text
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == dict.fromkeys(["params.safetensors", "meta.json", "curves.png"], 0o644)
    # a line through one point draws nothing: the epoch's point needs a marker
    history = json.loads((out / "meta.json").read_text())["training"]["history"]
    figure = training.curves_figure(history)
    assert len(history) == 1 and figure.axes[0].lines
    assert all(line.get_marker() not in ("None", None, "") for line in figure.axes[0].lines)
    pyplot().close(figure)


def test_evaluate_command_writes_report(trained, generated, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["evaluate", "har", "--data", str(generated), "--model", str(trained),
                 "--json", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion", "windows"} <= set(report)
    assert report["accuracy"] > 0.5  # separable synthetic classes, 3 epochs
    assert (tmp_path / "report-confusion.png").is_file()
    assert "har-cnn@test on 1 subject(s): 1600" in capsys.readouterr().out
    predictor = load_predictor(trained, max_batch=1)
    assert predictor.predict(np.zeros((2, 240), np.float32)).shape == (2, 6)


def test_evaluate_reads_a_csv_of_other_column_names_with_columns(trained, generated, tmp_path):
    """The same recording as a CSV with its own column names scores exactly as the WISDM
    file does, once --columns maps them."""
    rows = (generated / "data_1600_accel_watch.txt").read_text().split()
    csv = tmp_path / "phone.csv"
    body = [",".join([*r.rstrip(";").split(",")[2:], r.split(",")[1], "1600"]) for r in rows]
    csv.write_text("\n".join(["AX,AY,AZ,activity,person", *body]) + "\n")
    reports = {}
    for name, data, extra in [
        ("wisdm", generated / "data_1600_accel_watch.txt", []),
        ("csv", csv, ["--columns", "x=ax,y=ay,z=az,label=activity,subject=person"]),
    ]:
        out = tmp_path / f"{name}.json"
        argv = ["evaluate", "har", "--data", str(data), "--model", str(trained), *extra]
        assert main([*argv, "--json", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["csv"]["windows"] == reports["wisdm"]["windows"] > 0
    assert reports["csv"]["confusion"] == reports["wisdm"]["confusion"]


def test_evaluate_command_errors_are_clear(trained, tmp_path, caplog):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,a,b\n1,2,3\n")
    assert main(["evaluate", "har", "--data", str(bad), "--model", str(trained)]) == 2
    assert "unknown layout" in caplog.text
    assert main(["evaluate", "har", "--data", str(bad), "--model", str(tmp_path)]) == 2
    assert "not a harstream checkpoint" in caplog.text


def test_fixed_epochs_without_validation(generated, tmp_path, capsys):
    out = tmp_path / "fixed"
    assert main(["train", "har", "--data", str(generated), "--epochs", "2", "--batch-size", "64",
                 "--out", str(out), "--test-subjects", "1600", "--val-subjects", "none",
                 "--no-progress", "--ema", "0.9", "--scale", "0.1",
                 "--warp", "0.1"]) == 0  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["training"]["split"]["val"] == [] and len(meta["training"]["split"]["train"]) == 5
    assert meta["training"]["epochs_run"] == 2 and meta["training"]["best_epoch"] == 2
    assert meta["metrics"]["validation_accuracy"] is None
    assert meta["training"]["config"]["ema"] == 0.9
    assert "no validation" in capsys.readouterr().out


@pytest.fixture(scope="module")
def cnn_cv(generated, tmp_path_factory) -> Path:
    cv = tmp_path_factory.mktemp("cv") / "cv"
    assert main(["train", "har", "--data", str(generated), "--epochs", "2", "--batch-size", "64",
                 "--out", str(cv), "--test-subjects", "1600", "--folds", "2",
                 "--no-progress", "--augment", "none", "--lr", "3e-3"]) == 0  # fmt: skip
    return cv


def test_cross_validation(cnn_cv):
    cv = cnn_cv
    report = json.loads((cv / "cv.json").read_text())
    assert [len(f["val"]) for f in report["folds"]] == [3, 2]
    assert sorted(sum((f["val"] for f in report["folds"]), [])) == [
        str(s) for s in range(1601, 1606)
    ]
    assert report["test_subjects_left_out"] == ["1600"]
    assert all(len(f["val_accuracy"]) == 2 for f in report["folds"])
    assert len(report["mean_val_accuracy"]) == 2 and 1 <= report["best_mean_epoch"] <= 2
    assert not (cv / "meta.json").exists()
    # each fold's model, its validation subjects as its test subjects: the blend's folds
    for fold in report["folds"]:
        meta = json.loads((cv / fold["checkpoint"] / "meta.json").read_text())
        assert meta["training"]["split"]["test"] == fold["val"]
        assert "1600" not in meta["training"]["split"]["train"] + fold["val"]


def test_blend_cross_validation(cnn_cv, generated, tmp_path, capsys):
    cnn_folds = [fold["val"] for fold in json.loads((cnn_cv / "cv.json").read_text())["folds"]]
    blend_cv = tmp_path / "blend-cv"
    assert main(["train", "har", "--data", str(generated), "--model", "blend", "--cnn",
                 str(cnn_cv), "--folds", "2", "--orders", "1",
                 "--out", str(blend_cv)]) == 0  # fmt: skip
    report = json.loads((blend_cv / "cv.json").read_text())
    assert report["cnn_weight"] in report["weight_grid"]
    assert [f["val"] for f in report["folds"]] == cnn_folds
    for part in ("cnn", "boosting", "blend"):
        figures = report["models"][part]
        assert figures["windows"] > 0 and 0 <= figures["accuracy"] <= 1
        assert {"accuracy", "delay_s", "missed_changes"} <= set(figures["stream"])
        assert {"accuracy", "stream_accuracy", "plain_accuracy"} <= set(figures["calibrated"])
    # a fold's blend scores its held-out subjects as the report says
    fold = report["folds"][0]
    out = tmp_path / "fold.json"
    assert main(["evaluate", "har", "--data", str(generated), "--model",
                 str(blend_cv / "fold-1"), "--json", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(fold["accuracy"]["blend"])
    assert "CNN weight chosen on all folds" in capsys.readouterr().out


def test_blend_of_a_trained_cnn(trained, generated, tmp_path, capsys, caplog):
    out = tmp_path / "har-blend"
    assert main(["train", "har", "--data", str(generated), "--model", "blend",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "needs --cnn" in caplog.text
    assert main(["train", "har", "--data", str(generated), "--model", "blend", "--cnn",
                 str(trained), "--out", str(out)]) == 2  # fmt: skip
    assert "needs --blend-weight" in caplog.text
    assert main(["train", "har", "--data", str(generated), "--model", "blend", "--cnn",
                 str(trained), "--blend-weight", "0.7", "--out", str(out),
                 "--version", "test"]) == 0  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["name"] == "har-blend" and meta["arch_config"]["cnn_weight"] == 0.7
    assert meta["training"]["split"]["test"] == ["1600"] and meta["training"]["cnn"] == (
        "har-cnn@test"
    )
    assert {"test", "test_cnn", "test_boosting"} <= set(meta["metrics"])
    assert "saved har-blend" in capsys.readouterr().out
    assert main(["train", "har", "--data", str(generated), "--model", "blend", "--cnn",
                 str(out), "--blend-weight", "0.7", "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "a blend already" in caplog.text
    report = tmp_path / "eval.json"
    assert main(["evaluate", "har", "--data", str(generated), "--model", str(out),
                 "--stream", "--orders", "1", "--json", str(report)]) == 0  # fmt: skip
    scored = json.loads(report.read_text())
    assert scored["accuracy"] == pytest.approx(meta["metrics"]["test"]["accuracy"])
    assert "stream" in scored


def test_real_data_smoke(shared_data, tmp_path):
    """Few real subjects, one epoch: the pipeline runs end to end on the real layout."""
    from harstream.models.har.training import HarTrainConfig, train_har

    folder = tmp_path / "few"
    folder.mkdir()
    for subject in (1600, 1601, 1602, 1603):
        name = f"data_{subject}_accel_watch.txt"
        (folder / name).symlink_to(shared_data / "wisdm2019-watch-accel-6" / name)
    # a seeded validation share (the shipped recipe has none) at hop 20
    config = HarTrainConfig(
        data=str(folder), epochs=1, batch_size=200, hop=20, val_subjects=None, version="smoke"
    )
    meta = train_har(config, tmp_path / "out", progress=False)
    split = meta["training"]["split"]
    assert len(split["train"]) == 2 and len(split["val"]) == 1 and len(split["test"]) == 1
    assert meta["training"]["windows"]["train"] > 600
    assert 0.0 <= meta["metrics"]["test"]["accuracy"] <= 1.0


def test_baseline_features_and_fit():
    from harstream.models.har.baseline import predict_baseline, train_baseline, window_features

    rng = np.random.default_rng(0)
    t = np.arange(80) / 20.0
    x = rng.normal(0, 0.5, (120, 80, 3)).astype(np.float32)
    y = np.repeat(np.array(["slow", "fast"]), 60)
    x[60:, :, 0] += 4 * np.sin(2 * np.pi * 3 * t)
    features = window_features(x)
    assert features.shape[0] == 120 and np.isfinite(features).all()
    model, seconds = train_baseline(x[::2], y[::2])
    assert (predict_baseline(model, x[1::2]) == y[1::2]).mean() > 0.9 and seconds >= 0


def test_evaluate_as_the_wearer_sees_it(trained, tmp_path, capsys):
    """Streams and calibration through the command line, on 50 s activities of subject 1600."""
    folder = tmp_path / "long"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for subject in (1600, 1601):
        write_subject(folder, subject, rng, per_class=1000)
    out = tmp_path / "wearer.json"
    assert main(["evaluate", "har", "--data", str(folder), "--model", str(trained),
                 "--stream", "--orders", "2", "--seed", "4", "--calibrate-seconds", "10",
                 "--json", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    stream, cal = report["stream"], report["calibrated"]
    assert stream["orders"] == 2 and stream["streams"] == 3  # the test subject only
    assert stream["changes"] == 3 * 5 and stream["windows"] == 3 * (300 - 4 + 1)
    assert 0.5 < stream["raw_accuracy"] <= 1 and 0.5 < stream["accuracy"] <= 1
    assert 0 < stream["macro_f1"] <= 1 and 0 <= stream["missed_changes"] <= 0.5
    assert stream["missed_changes_count"] == round(stream["missed_changes"] * 15)
    assert 1.0 <= stream["delay_s"]["median"] <= stream["delay_s"]["p90"] <= 50
    assert cal["seconds"] == 10 and cal["windows"] == 6 * 7  # starts at 40..46 s of 50 s
    for key in ("accuracy", "stream_accuracy", "plain_accuracy"):
        assert 0.5 < cal[key] <= 1, key
    assert "as the wearer sees it" in capsys.readouterr().out
    assert main(["evaluate", "har", "--data", str(folder), "--model", str(trained),
                 "--calibrate-seconds", "2"]) == 2  # fmt: skip
