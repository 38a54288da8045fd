"""The broker check: each way a broker can be unusable is named in one line, fast, by real
servers on loopback (a closed port, a silent server, Mosquitto with TLS or passwords)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from bus_client import make_certificates

from harstream.stream.broker import LOOPBACK, MosquittoBroker, free_port, mosquitto_binary
from harstream.stream.config import ServeConfig
from harstream.stream.connection import BrokerConfig
from harstream.stream.preflight import (
    EXIT_TLS,
    EXIT_UNREACHABLE,
    BrokerError,
    check_broker,
)
from harstream.stream.service import Service

needs_tls = pytest.mark.skipif(
    mosquitto_binary() is None or shutil.which("openssl") is None,
    reason="needs the mosquitto and openssl binaries",
)


def failure(cfg: BrokerConfig, timeout: float = 5.0) -> BrokerError:
    """The check's error for ``cfg``; it must come well within two timeouts."""
    began = time.monotonic()
    with pytest.raises(BrokerError) as err:
        check_broker(cfg, timeout)
    assert time.monotonic() - began < 2 * timeout
    assert "\n" not in str(err.value), "one line"
    return err.value


def test_a_broker_that_answers_passes(broker):
    check_broker(BrokerConfig(host=broker.host, port=broker.port, client_id="check-ok"))


def test_an_unknown_host_name_is_a_name_resolution_failure():
    err = failure(BrokerConfig(host="no-such-host.invalid", client_id="c"))
    assert err.kind == "name_resolution" and err.exit_code == EXIT_UNREACHABLE
    assert "name resolution failed" in str(err) and "no-such-host.invalid" in str(err)


def test_a_closed_port_is_connection_refused():
    err = failure(BrokerConfig(host=LOOPBACK, port=free_port(), client_id="c"))
    assert err.kind == "refused" and "connection refused" in str(err)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says anything."""
    server = socket.create_server((LOOPBACK, 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_server_that_never_answers_times_out(silent_server):
    err = failure(BrokerConfig(host=LOOPBACK, port=silent_server, client_id="c"), timeout=0.5)
    assert err.kind == "timed_out" and "timed out" in str(err)


def test_a_web_server_is_named_as_http_not_mqtt():
    # what a web server or an intercepting proxy answers to bytes it cannot parse
    server = socket.create_server((LOOPBACK, 0))

    def answer() -> None:
        conn = server.accept()[0]
        conn.recv(64)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        err = failure(BrokerConfig(host=LOOPBACK, port=server.getsockname()[1], client_id="c"))
    finally:
        thread.join(5)
        server.close()
    assert err.kind == "not_mqtt" and "answered HTTP" in str(err)


def test_serve_with_an_unreachable_broker_fails_before_loading_models(prefix):
    # no predictors given: reaching the model loading would fail differently, and slowly
    cfg = BrokerConfig(host="no-such-host.invalid", client_id=f"serve-{prefix}", explicit=True)
    with pytest.raises(BrokerError, match="name resolution failed"):
        Service(ServeConfig(broker=cfg, prefix=prefix, families=["har"])).start()


@pytest.fixture(scope="module")
def certificates() -> Iterator[dict[str, Path]]:
    """Two throwaway CAs: the broker's (``ca.pem``, with server and client certificates)
    and another (``other/ca.pem``) that signed nothing the broker has."""
    # mosquitto started as root reads its certificates as the "mosquitto" user: a private
    # but world-readable directory, not pytest's root-only tmp_path
    tmp = Path(tempfile.mkdtemp(prefix="harstream-tls-"))
    tmp.chmod(0o755)
    (tmp / "other").mkdir()
    files = make_certificates(tmp)
    files["other"] = make_certificates(tmp / "other")["ca.pem"]
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield files
    shutil.rmtree(tmp)


def tls_broker(files: dict[str, Path], client_certificates: bool = False) -> MosquittoBroker:
    extra = (
        f"cafile {files['ca.pem']}\ncertfile {files['server.pem']}\nkeyfile {files['server.key']}\n"
    )
    if client_certificates:
        extra += "require_certificate true\n"
    broker = MosquittoBroker(free_port(), extra=extra)
    broker.start()
    return broker


@needs_tls
def test_tls_problems_are_named(certificates, broker):
    own = tls_broker(certificates)
    try:
        tls = BrokerConfig(
            host=own.host, port=own.port, tls=True, ca_file=certificates["ca.pem"], client_id="c"
        )
        check_broker(tls)
        # a CA that did not sign the broker's certificate: which certificate, and why
        err = failure(replace(tls, ca_file=certificates["other"]))
        assert err.kind == "tls_verify" and err.exit_code == EXIT_TLS
        text = str(err)
        assert text.startswith(
            "TLS verification failed: the broker's certificate (subject CN=server"
        )
        assert "issuer CN=t; names 127.0.0.1; valid until" in text
        assert "self-signed certificate in certificate chain" in text  # the CA it sent
        assert f"checked against --ca-file {certificates['other']}" in text
        # the right CA, a name the certificate does not list
        err = failure(replace(tls, host="localhost"))
        assert err.kind == "tls_verify" and "not valid for 'localhost'" in str(err)
        # plain MQTT to the TLS port
        err = failure(BrokerConfig(host=own.host, port=own.port, client_id="c"))
        assert err.kind == "tls_expected" and f"use mqtts://{own.host}:{own.port}" in str(err)
        # TLS to a plain MQTT port
        err = failure(replace(tls, port=broker.port))
        assert err.kind == "tls_not_spoken" and f"use mqtt://{own.host}:{broker.port}" in str(err)
    finally:
        own.close()


@needs_tls
def test_a_missing_client_certificate_is_named(certificates):
    own = tls_broker(certificates, client_certificates=True)
    try:
        tls = BrokerConfig(
            host=own.host, port=own.port, tls=True, ca_file=certificates["ca.pem"], client_id="c"
        )
        err = failure(tls)
        assert err.kind == "tls_client_certificate" and "give --cert-file" in str(err)
        check_broker(
            replace(tls, cert_file=certificates["client.pem"], key_file=certificates["client.key"])
        )
        # a client certificate from a CA the broker does not trust
        other = certificates["other"].parent
        stranger = replace(tls, cert_file=other / "client.pem", key_file=other / "client.key")
        err = failure(stranger)
        assert err.kind == "tls_client_certificate" and err.exit_code == EXIT_TLS
        assert f"--cert-file {other / 'client.pem'}" in str(err)
    finally:
        own.close()
