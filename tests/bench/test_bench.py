"""The benchmarks in tiny configurations: well-formed reports, and peers that must agree.

No assertion here is about speed: the machine running the suite is shared and noisy.
"""

from __future__ import annotations

import copy
import json
import math

import jax
import numpy as np
import pytest

from harstream.bench import peers
from harstream.cli import main
from harstream.models.runtime import default_cpu_threads
from harstream.stream.nats_server import nats_server_binary

RESULT_KEYS = {"family", "runtime", "batch", "p50_ms", "p99_ms", "items_per_s"}
E2E_KEYS = {
    "devices",
    "latency_ms",
    "windows_expected",
    "windows_received",
    "msgs_per_s",
    "samples_per_s",
}


def _installed_runtimes() -> tuple[str, ...]:
    return tuple(r for r in peers.RUNTIMES if r not in peers.missing_runtimes((r,)))


def test_bench_model_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "model.json"
    argv = ["bench", "model", "--family", "har-cnn", "--batches", "1,2", "--seconds", "0.05"]
    argv += ["--min-calls", "2", "--threads", "1", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert {(r["runtime"], r["batch"]) for r in rows} == {
        (runtime, b) for runtime in ("jax", *_installed_runtimes()) for b in (1, 2)
    }
    for row in rows:
        assert row.keys() >= RESULT_KEYS
        assert row["family"] == "har-cnn"
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["items_per_s"] > 0
        assert row["threads"] == 1  # JAX too: in a child process where it has more cores
        if row["runtime"] != "jax":
            assert row["p50_ratio_vs_jax"] > 0
    assert {(r["runtime"], r["batch"]) for r in report["ratios"]} == {
        (runtime, b) for runtime in _installed_runtimes() for b in (1, 2)
    }
    (model,) = report["models"]
    assert set(model["compile_s"]) == {"1", "2"} and model["load_s"] >= 0
    if default_cpu_threads() > 1:  # the 1-thread JAX child computed the same probabilities
        assert model["peer_max_abs_diff"]["jax/1t"] <= 2e-4
    for runtime in peers.RUNTIMES:
        assert (runtime in report["skipped"]) != (runtime in _installed_runtimes())
    assert "har-cnn" in capsys.readouterr().out


def test_bench_model_times_the_har_cnn_stepped_beside_the_full_path(tmp_path, capsys):
    out = tmp_path / "model.json"
    argv = ["bench", "model", "--family", "har-cnn", "--batches", "1,2", "--seconds", "0.05"]
    threads = str(default_cpu_threads())
    assert (
        main([*argv, "--min-calls", "2", "--threads", threads, "--no-peers", "--json", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    stepped = [r for r in report["results"] if "hop" in r]
    assert {(r["hop"], r["batch"]) for r in stepped} == {(h, b) for h in (20, 40) for b in (1, 2)}
    assert {(r["hop"], r["batch"]) for r in report["incremental"]} == {
        (h, b) for h in (20, 40) for b in (1, 2)
    }
    for row in report["incremental"]:
        assert row["speedup"] > 0 and row["full_items_per_s"] > 0 and row["cpu_speedup"] > 0
    assert "jax hop 20" in capsys.readouterr().out


def test_bench_model_times_a_family_without_peers(tmp_path):
    out = tmp_path / "model.json"
    argv = ["bench", "model", "--family", "text", "--batches", "1", "--seconds", "0.05"]
    assert main([*argv, "--min-calls", "2", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(r["runtime"], r["threads"]) for r in report["results"]] == [("jax", 1)]
    assert report["ratios"] == []


def test_agreement_check_rejects_different_outputs(har_predictor):
    x = np.random.default_rng(0).normal(0, 4, size=(6, 80, 3)).astype(np.float32)
    reference = har_predictor.predict(x)
    assert peers.check_agreement(reference, reference + 1e-6, "same") < 2e-6
    shuffled = reference[:, ::-1]
    with pytest.raises(peers.PeerMismatchError, match="differ from harstream's by up to"):
        peers.check_agreement(reference, shuffled, "reversed")
    with pytest.raises(peers.PeerMismatchError, match="shape"):
        peers.check_agreement(reference, reference[:, :5], "truncated")


@pytest.mark.parametrize("runtime", peers.RUNTIMES)
def test_installed_peer_agrees_and_a_mismatched_one_fails_loudly(har_predictor, runtime):
    if runtime not in _installed_runtimes():
        pytest.skip(peers.missing_runtimes((runtime,))[runtime])
    matching = peers.build_peers(har_predictor, threads=(1,), runtimes=(runtime,))
    assert max(peers.check_peers(har_predictor, matching).values()) < 1e-4
    wrong = copy.copy(har_predictor)
    wrong.params = jax.tree_util.tree_map(np.asarray, har_predictor.params)
    wrong.params["dense"] = {**wrong.params["dense"], "bias": np.arange(6, dtype=np.float32)}
    mismatched = peers.build_peers(wrong, threads=(1,), runtimes=(runtime,))
    with pytest.raises(peers.PeerMismatchError, match=f"{runtime}/1t: outputs differ"):
        peers.check_peers(har_predictor, mismatched)


def test_bench_train_writes_json(tmp_path):
    out = tmp_path / "train.json"
    argv = ["bench", "train", "--batch", "8", "--steps", "2", "--epochs", "2"]
    argv += ["--torch-threads", "1", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    expected = {"jax"} | ({"torch"} if "torch" in _installed_runtimes() else set())
    assert {r["runtime"] for r in rows} == expected
    for row in rows:
        assert row["family"] == "har-cnn" and row["batch"] == 8
        assert row["samples_per_s"] > 0 and row["epochs_timed"] == 1


def test_bench_train_rejects_a_single_epoch(capsys):
    assert main(["bench", "train", "--epochs", "1"]) == 2
    assert "epochs" in capsys.readouterr().err


def test_bench_e2e_sweeps_batched_full_path_and_naive_services(broker, har_model_path, tmp_path):
    from harstream.bench import e2e_bench, plots

    config = e2e_bench.E2EConfig(
        devices=2,
        duration_s=1.5,
        publishers=1,
        drain_s=5.0,
        warmup_s=0.5,
        max_batch=4,
        model=har_model_path,
        prefix="benchtest",
        sweep=True,
        sweep_factor=2.0,
        max_devices=4,
        bound_ms=60_000.0,  # a sweep that only stops at max_devices: nothing here is timed
        compare_full=True,
    )
    report = e2e_bench.run(config, e2e_bench.client_settings(broker), log_line=lambda _: None)
    json.loads(json.dumps(report))
    sweep = report["sweep"]
    assert [p["devices"] for p in sweep["points"]] == [2, 4]
    assert [p["devices"] for p in sweep["naive_points"]] == [2, 4]
    assert [p["devices"] for p in sweep["full_points"]] == [2, 4]
    assert sweep["capacity_devices"] == sweep["naive_capacity_devices"] == 4
    assert sweep["full_capacity_devices"] == 4 and report["settings"]["incremental"]
    assert report["devices"] == report["naive"]["devices"] == report["full"]["devices"] == 4
    for result in (*sweep["points"], *sweep["naive_points"], *sweep["full_points"]):
        assert result.keys() >= E2E_KEYS
        assert result["windows_expected"] > 0
        assert result["windows_received"] == result["windows_expected"]
        assert result["unmatched"] == 0 and result["error_messages"] == []
        lat = result["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert result["msgs_per_s"] > 0 and result["samples_per_s"] == result["msgs_per_s"]
        assert result["service_cpu_percent"] is None or result["service_cpu_percent"] >= 0
    series = {"batched": sweep["points"], "naive": sweep["naive_points"]}
    png = plots.e2e_curves(series, tmp_path / "e2e.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(nats_server_binary() is None, reason="nats-server is not installed")
def test_bench_e2e_through_nats_reports_each_worker(har_model_path):
    from harstream.bench import e2e_bench

    config = e2e_bench.E2EConfig(
        devices=4,
        duration_s=1.5,
        publishers=1,
        drain_s=5.0,
        warmup_s=0.5,
        max_batch=4,
        model=har_model_path,
        engine="nats",
        workers=2,
        bound_ms=60_000.0,
    )
    report = e2e_bench.run(config, log_line=lambda _: None)
    json.loads(json.dumps(report))
    assert report["broker"] == "nats-server" and "naive" not in report
    assert report["windows_received"] == report["windows_expected"] > 0
    workers = report["workers"]
    assert [w["name"] for w in workers] == ["w1", "w2"]
    # every window published by one of the workers, each counted from its /metrics (a
    # straggler of the warm-up on a busy machine may count too)
    assert sum(w["windows"] for w in workers) >= report["windows_received"], workers
    assert all(w["cpu_percent"] is None or w["cpu_percent"] >= 0 for w in workers)
    assert report["broker_cpu_percent"] >= 0  # the nats-server process, measured too


def test_bench_e2e_engine_settings_are_checked():
    from harstream.bench.e2e_bench import E2EConfig

    with pytest.raises(ValueError, match="engine nats"):
        E2EConfig(workers=2)
    with pytest.raises(ValueError, match="har prefix"):
        E2EConfig(engine="nats", prefix="other")


def test_windows_are_counted_from_prefill_and_live_samples():
    from harstream.bench.loadgen import LoadSpec

    spec = LoadSpec(None, "har", ("a", "b"), samples_per_message=20, duration_s=2.0, hop=20)
    assert spec.prefill(0) == 60  # the first window ends on the first live message
    assert spec.windows(0) == 2  # 60 + 40 samples: windows end at samples 80 and 100
    one = LoadSpec(None, "har", ("a", "b"), samples_per_message=1, duration_s=1.5, hop=20)
    assert [one.prefill(j) for j in (0, 1)] == [79, 69]  # the 2nd device is half a hop later
    assert [one.windows(j) for j in (0, 1)] == [2, 1]


def test_e2e_compare_full_needs_the_incremental_path():
    from harstream.bench.e2e_bench import E2EConfig

    with pytest.raises(ValueError, match="compare-full"):
        E2EConfig(incremental=False, compare_full=True)


def test_e2e_summary_marks_loss_and_missed_bound():
    from harstream.bench.e2e_bench import E2EConfig, format_point, summarize
    from harstream.bench.loadgen import LoadResult

    config = E2EConfig(devices=2, duration_s=1.0, bound_ms=50.0)
    rates = {"messages": 41, "samples": 41, "last_s": 1.0, "elapsed_s": 2.0, "windows_expected": 2}
    fast = LoadResult([0.001, 0.002], [0.5, 0.5], windows_received=2, **rates)
    slow = LoadResult([0.001, 0.2], [0.5, 150.0], windows_received=1, **rates)
    alone = summarize(config, 2, [fast], None)
    assert alone["held"] and alone["msgs_per_s"] == alone["target_msgs_per_s"] == 40
    merged = summarize(config, 2, [fast, slow], 12.5)
    assert merged["windows_lost"] == 1 and not merged["held"]
    assert merged["latency_ms"]["max"] == pytest.approx(200.0)
    assert merged["service_latency_ms"]["p50"] == pytest.approx(0.5)
    empty = summarize(config, 2, [LoadResult(windows_expected=2)], None)
    assert math.isnan(empty["latency_ms"]["p50"]) and not empty["held"]
    assert format_point("batched", alone, 50.0).endswith("  held")
    assert format_point("batched", merged, 50.0).endswith(
        "NOT held: 1 windows lost, p99 above 50 ms"
    )
    assert format_point("batched", empty, 50.0).endswith(
        "NOT held: 2 windows lost, the load generator fell behind its schedule, "
        "no prediction arrived"
    )
