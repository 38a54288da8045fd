"""Configuration precedence, broker URLs, families and the serve command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from harstream.cli import build_parser
from harstream.stream.cli import config_from_args
from harstream.stream.config import ConfigError, ServeConfig, default_state_file
from harstream.stream.connection import (
    BrokerConfig,
    broker_config,
    default_client_id,
    parse_broker_url,
)
from harstream.stream.service import Service, build_routes


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_flags_beat_environment_beat_toml(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text('hop = 40\nmax_batch = 8\nmax_wait_ms = 7.5\nbroker = "mqtt://b:1884"\n')
    env = {"HARSTREAM_MAX_BATCH": "32", "HARSTREAM_HOP": "10"}
    cfg = config_from_args(serve_args("--config", str(toml), "--hop", "5"), env)
    assert (cfg.hop, cfg.max_batch, cfg.max_wait_ms) == (5, 32, 7.5)
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.explicit) == ("b", 1884, True)
    cfg = config_from_args(serve_args("--no-embedded-broker", "--families", "har,text"), {})
    assert cfg.embedded_broker is False and cfg.families == ["har", "text"]
    assert cfg.broker.explicit is False and cfg.broker.client_id.startswith("harstream-serve-")


def test_the_state_file_defaults_to_a_per_user_path_and_empty_turns_it_off(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path)}
    cfg = config_from_args(serve_args("--client-id", "svc/1"), env)
    assert cfg.state_file == tmp_path / "harstream" / "svc_1.state"
    assert cfg.state_max_age == 300.0
    assert config_from_args(serve_args("--state-file", ""), env).state_file is None
    assert config_from_args(serve_args(), {**env, "HARSTREAM_STATE_FILE": ""}).state_file is None
    cfg = config_from_args(serve_args("--state-file", "s.state", "--state-max-age", "60"), env)
    assert (cfg.state_file, cfg.state_max_age) == (Path("s.state"), 60.0)
    home = default_state_file("c", {}).parts[-4:]
    assert home == (".local", "state", "harstream", "c.state")
    assert ServeConfig().state_file is None  # in-process services save nothing unless asked


def test_the_default_client_id_differs_per_prefix_and_families_and_is_stable(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path)}

    def client_id(*argv: str) -> str:
        return config_from_args(serve_args(*argv), env).broker.client_id

    plain = client_id()  # the default prefix and families keep the id of earlier versions
    assert plain == default_client_id("serve")
    ids = {
        plain,
        client_id("--prefix", "lab"),
        client_id("--prefix", "lab", "--families", "har"),
        client_id("--families", "har"),
    }
    assert len(ids) == 4
    assert client_id("--prefix", "lab", "--families", "text,har") == client_id(
        "--prefix", "lab", "--families", "har,text"
    )
    lab = client_id("--prefix", "lab")
    assert lab.startswith(plain + "-") and len(lab) == len(plain) + 7
    assert all(c.isalnum() or c in "-_." for c in lab)
    state = config_from_args(serve_args("--prefix", "lab"), env).state_file
    assert state == tmp_path / "harstream" / f"{lab}.state"
    assert client_id("--prefix", "lab", "--client-id", "mine") == "mine"


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["serve"], "INFO"),
        (["-v", "serve"], "DEBUG"),
        (["serve", "-v"], "DEBUG"),
        (["serve", "--log-level", "warning"], "WARNING"),
        (["--log-level", "error", "serve"], "ERROR"),
        (["train", "har", "--data", "d", "--verbose"], "DEBUG"),
    ],
)
def test_log_flags_work_before_and_after_the_subcommand(argv, level):
    assert build_parser().parse_args(argv).log_level == level


def test_log_level_sets_the_root_logger(tmp_path, monkeypatch):
    import logging

    from harstream import cli

    seen = {}
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: seen.update(kw))
    # an invalid configuration: serve returns 2 before it connects anywhere
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_key = 1\n")
    assert cli.main(["serve", "--log-level", "debug", "--config", str(bad)]) == 2
    assert seen["level"] == "DEBUG"
    assert cli.main(["serve", "-v", "--config", str(bad)]) == 2 and seen["level"] == "DEBUG"
    with pytest.raises(SystemExit):
        cli.main(["serve", "--log-level", "loud"])


def test_serve_help_accepts_verbose_after_the_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "-v", "--help"])
    assert exc.value.code == 0
    assert "--log-level LEVEL" in capsys.readouterr().out


def test_the_calibration_store_defaults_beside_the_state_files_and_empty_turns_it_off(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path)}
    cfg = config_from_args(serve_args(), env)
    assert cfg.calibration_store == tmp_path / "harstream" / "calibrations.sqlite"
    assert config_from_args(serve_args("--calibration-store", ""), env).calibration_store is None
    off = {**env, "HARSTREAM_CALIBRATION_STORE": ""}
    assert config_from_args(serve_args(), off).calibration_store is None
    cfg = config_from_args(serve_args("--calibration-store", "c.sqlite"), env)
    assert cfg.calibration_store == Path("c.sqlite")
    assert ServeConfig().calibration_store is None  # in-process: calibrations in memory only


@pytest.mark.parametrize(
    ("argv", "env", "toml", "match"),
    [
        (["--hop", "x"], {}, "", "--hop"),
        ([], {"HARSTREAM_MAX_BATCH": "many"}, "", "HARSTREAM_MAX_BATCH"),
        ([], {}, 'hop = "fast"', "hop in the config file"),
        ([], {}, "hopp = 3", "unknown keys"),
        ([], {}, "hop = [", "not valid TOML"),
        (["--families", "har,video"], {}, "", "video"),
        (["--hop", "0"], {}, "", "hop must be"),
        ([], {"HARSTREAM_INFERENCE_THREADS": "0"}, "", "inference_threads must be"),
        (["--broker", "http://x"], {}, "", "mqtt://"),
        (["--ca-file", "/nonexistent.pem", "--broker", "mqtts://b"], {}, "", "does not exist"),
        (["--password", "p"], {}, "", "user name"),
        (["--prefix", "har/#"], {}, "", "prefix"),
        (["--device-rate-margin", "-1"], {}, "", "device_rate_margin must be"),
        ([], {"HARSTREAM_DEVICE_BURST": "0"}, "", "device_burst must be"),
        (["--state-max-age", "0"], {}, "", "state_max_age must be"),
        (["--metrics-port", "9108", "--health-port", "9108"], {}, "", "health_port must differ"),
    ],
)
def test_bad_settings_name_their_source(tmp_path, argv, env, toml, match):
    path = tmp_path / "s.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=match):
        config_from_args(serve_args("--config", str(path), *argv), env)


def test_broker_urls():
    assert parse_broker_url("mqtt://h") == ("h", 1883, False, None, None)
    assert parse_broker_url("mqtts://u%40x:p%3A@h:9") == ("h", 9, True, "u@x", "p:")
    # host:port, the form the README and --help show for the default, means mqtt://
    assert parse_broker_url("127.0.0.1:1883") == ("127.0.0.1", 1883, False, None, None)
    assert parse_broker_url("broker.lan") == ("broker.lan", 1883, False, None, None)
    cfg = broker_config(
        {"broker": "mqtts://u:p@h", "mqtt_version": "3.1.1"}, default_client_id="c", env={}
    )
    assert (cfg.tls, cfg.port, cfg.username, cfg.mqtt_version, cfg.client_id) == (
        True,
        8883,
        "u",
        "3.1.1",
        "c",
    )
    assert BrokerConfig().url == "mqtt://127.0.0.1:1883"


def test_password_file_is_read_and_excludes_a_second_password(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret pass\n")
    args = {"username": "harstream", "password_file": str(secret)}
    assert broker_config(args, default_client_id="c", env={}).password == "s3cret pass"
    env = {"HARSTREAM_USERNAME": "u", "HARSTREAM_PASSWORD_FILE": str(secret)}
    assert broker_config({}, default_client_id="c", env=env).password == "s3cret pass"
    toml = {"username": "u", "password_file": str(secret)}
    assert broker_config({}, default_client_id="c", toml=toml, env={}).password == "s3cret pass"
    secret.write_text("windows\r\n\n")  # only one line ending is stripped
    assert broker_config(args, default_client_id="c", env={}).password == "windows\r\n"
    for both in (
        {**args, "password": "p"},
        {**args, "broker": "mqtt://u:p@h"},
    ):
        with pytest.raises(ConfigError, match="password once"):
            broker_config(both, default_client_id="c", env={})
    with pytest.raises(ConfigError, match="password once"):
        broker_config(args, default_client_id="c", env={"HARSTREAM_PASSWORD": "p"})
    with pytest.raises(ConfigError, match="--password-file .*No such file"):
        missing = {**args, "password_file": str(tmp_path / "none")}
        broker_config(missing, default_client_id="c", env={})
    with pytest.raises(ConfigError, match="user name"):
        broker_config({"password_file": str(secret)}, default_client_id="c", env={})
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        broker_config(args, default_client_id="c", env={})


def test_the_device_rate_limit_follows_its_options_and_the_hop(har_predictor):
    cfg = config_from_args(serve_args("--device-rate-margin", "0", "--device-burst", "30"), {})
    assert (cfg.device_rate_margin, cfg.device_burst) == (0.0, 30.0)
    (route,) = build_routes(ServeConfig(families=["har"], hop=5), predictors={"har": har_predictor})
    assert route.real_rate == 4.0  # a window every 5 samples at 20 Hz
    assert Service(cfg)._rate_limit(route) is None  # 0 turns it off
    limit = Service(ServeConfig(device_burst=30))._rate_limit(route)
    assert (limit.rate, limit.capacity) == (25 * 4.0, 30 * 4.0)


def test_serve_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        serve_args("--help")
    out = capsys.readouterr().out
    for flag in (
        "--families",
        "--no-embedded-broker",
        "--hop",
        "--max-batch",
        "--max-wait-ms",
        "--metrics-port",
        "--health-port",
        "--config",
        "--model",
        "--broker",
        "--ca-file",
        "--mqtt-version",
        "--password-file",
        "--device-rate-margin",
        "--device-burst",
    ):
        assert flag in out
    assert "process list" in out  # --password warns where a flag shows


def test_every_serve_option_is_a_config_field_with_the_same_default():
    import dataclasses

    from harstream import families
    from harstream.stream.config import SERVE_OPTIONS, ServeConfig

    fields = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    model_options = {f.model_option for f in families.FAMILIES}
    assert set(fields) == {o.name for o in SERVE_OPTIONS} - model_options | {"broker", "models"}
    for opt in SERVE_OPTIONS:
        if opt.name not in model_options:
            assert fields[opt.name] == opt.default, opt.name
