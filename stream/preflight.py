"""The broker check before anything slow: what is wrong with the broker, in one line, fast.

``harstream serve`` loads and compiles its models for tens of seconds before it connects,
and paho retries a failed connection quietly: a wrong host name once cost 37.5 s and ended
in "is it running?", a wrong password 33 s of ``Not authorized`` lines. :func:`check_broker`
goes through the connection step by step, each with a short timeout, and raises
:class:`BrokerError` naming the first step that fails:

1. resolve the host name (``name_resolution``);
2. open a TCP connection (``refused``, ``timed_out``, ``unreachable``);
3. with ``mqtts://``, the TLS handshake with the connection's own settings
   (:func:`~harstream.stream.connection.tls_context`): the broker's certificate that does
   not verify, with its subject, issuer and the reason (``tls_verify``), a plain MQTT
   port (``tls_not_spoken``), a client certificate the broker wants or refuses
   (``tls_client_certificate``);
4. a bare MQTT CONNECT (3.1.1, no client id, no login): any CONNACK shows an MQTT broker
   answers; a TLS answer to it, or a port that takes TLS, means ``mqtts://`` was needed
   (``tls_expected``); silence or a closed connection, no MQTT broker (``timed_out``,
   ``not_mqtt``);
5. the login, with paho and the configured protocol version, user and password, as
   ``<client id>-check`` with a clean session (so the service's persistent session is not
   touched), and if that is refused as the service's own id: ``not_authorized``, or the
   broker's other refusals (``refused_by_broker``).

Each kind has an exit status for ``harstream serve`` (:data:`EXIT_CODES`, documented in
docs/configuration.md): 4 for what may pass by itself (a broker that is down or not yet
reachable: a supervisor may restart), 5 for credentials and 6 for TLS (configuration: a
restart does not help).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from harstream.stream.connection import BrokerConfig, make_client, session_kwargs, tls_context

CHECK_TIMEOUT_S = 5.0  # per step; a broker on a LAN answers each in milliseconds
EXIT_UNREACHABLE = 4
EXIT_NOT_AUTHORIZED = 5
EXIT_TLS = 6
EXIT_CODES = {
    "name_resolution": EXIT_UNREACHABLE,
    "refused": EXIT_UNREACHABLE,
    "timed_out": EXIT_UNREACHABLE,
    "unreachable": EXIT_UNREACHABLE,
    "not_mqtt": EXIT_UNREACHABLE,
    "refused_by_broker": EXIT_UNREACHABLE,
    "not_authorized": EXIT_NOT_AUTHORIZED,
    "tls_verify": EXIT_TLS,
    "tls_expected": EXIT_TLS,
    "tls_not_spoken": EXIT_TLS,
    "tls_client_certificate": EXIT_TLS,
}
# MQTT 3.1.1 CONNECT: protocol "MQTT" level 4, clean session, keepalive 10 s, no login,
# a client id of its own (some brokers refuse an empty one by closing the connection)
_BARE_ID = b"harstream-check"
BARE_CONNECT = (
    bytes([0x10, 12 + len(_BARE_ID)])
    + bytes.fromhex("0004 4d515454 04 02 000a")
    + len(_BARE_ID).to_bytes(2, "big")
    + _BARE_ID
)
DISCONNECT = bytes.fromhex("e0 00")
CONNACK = 0x20
# how openssl and certificate tools spell a name's parts (Python spells them out)
SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
}
TLS_RECORD_TYPES = (0x15, 0x16)  # a TLS alert or handshake record: the port speaks TLS
# CONNACK reasons (paho's names, MQTT 5 and 3.1.1) that mean the login was refused
LOGIN_REFUSED = ("Not authorized", "Bad user name or password", "Banned")
# A broker that restricts client ids may refuse <client id>-check and accept the real one
ID_REFUSED = "Client identifier not valid"


class BrokerError(ConnectionError):
    """The broker cannot be used; ``kind`` names why (a key of :data:`EXIT_CODES`)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = EXIT_CODES[kind]


def check_broker(cfg: BrokerConfig, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Return when ``cfg``'s broker accepts a login, else raise :class:`BrokerError`."""
    where = f"{cfg.host}:{cfg.port}"
    addresses = _resolve(cfg.host, cfg.port, timeout)
    sock = _tcp_connect(addresses, where, timeout)
    peer = sock.getpeername()  # the address that answered, for the diagnoses below
    try:
        if cfg.tls:
            sock = _tls_handshake(sock, cfg, peer, timeout)
        _bare_connect(sock, cfg, peer, timeout)
    finally:
        sock.close()
    _login(cfg, timeout)


def _resolve(host: str, port: int, timeout: float) -> list[Any]:
    """The socket addresses of ``host``; getaddrinfo has no timeout of its own, so it runs
    in a thread that is left behind when the resolver takes longer than ``timeout``."""
    found: list[Any] = []
    failed: list[OSError] = []
    done = threading.Event()

    def resolve() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            failed.append(exc)
        done.set()

    threading.Thread(target=resolve, name="harstream-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise BrokerError(
            "name_resolution",
            f"name resolution failed: no answer for {host!r} within {timeout:g} s "
            "(is a DNS server reachable?)",
        )
    if failed or not found:
        why = failed[0].strerror if failed and failed[0].strerror else "no address"
        raise BrokerError(
            "name_resolution",
            f"name resolution failed: {host!r} is not a known host name ({why}); check the "
            "host in --broker",
        )
    return [info[4] for info in found]


def _tcp_connect(addresses: list[Any], where: str, timeout: float) -> socket.socket:
    last: OSError | None = None
    for address in addresses:
        try:
            return _connect(address, timeout)
        except OSError as exc:
            last = exc
    if isinstance(last, ConnectionRefusedError):
        raise BrokerError(
            "refused",
            f"connection refused: nothing listens on {where} (is the broker running, on "
            "this port?)",
        )
    if isinstance(last, TimeoutError):
        raise BrokerError(
            "timed_out",
            f"timed out: {where} did not answer a TCP connection within {timeout:g} s (a "
            "firewall dropping it, or the wrong address?)",
        )
    raise BrokerError("unreachable", f"cannot reach {where}: {last}")


def _tls_handshake(
    sock: socket.socket, cfg: BrokerConfig, address: Any, timeout: float
) -> ssl.SSLSocket:
    where = f"{cfg.host}:{cfg.port}"
    try:
        return tls_context(cfg).wrap_socket(sock, server_hostname=cfg.host)
    except ssl.SSLCertVerificationError as exc:
        raise BrokerError("tls_verify", _verify_failure(exc, cfg, address, timeout)) from None
    except TimeoutError:
        raise BrokerError(
            "timed_out", f"timed out: {where} did not complete a TLS handshake in {timeout:g} s"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        if _client_certificate_alert(exc):
            raise _client_certificate_error(cfg, exc) from None
        if _answers_plain_mqtt(address, timeout):
            raise BrokerError(
                "tls_not_spoken",
                f"TLS expected but not spoken: {where} answers plain MQTT; use "
                f"mqtt://{where} (or the broker's TLS port, usually 8883)",
            ) from None
        raise BrokerError(
            "tls_not_spoken", f"TLS handshake with {where} failed: {_why(exc)}"
        ) from None


def _verify_failure(
    exc: ssl.SSLCertVerificationError, cfg: BrokerConfig, address: Any, timeout: float
) -> str:
    """Which certificate did not verify, and why, with the fix."""
    trusted = f"--ca-file {cfg.ca_file}" if cfg.ca_file else "the system's trusted CAs"
    why = (exc.verify_message or _why(exc)).rstrip(".")
    peer = _describe_peer(cfg, address, timeout)
    text = f"TLS verification failed: the broker's certificate{peer}: {why}"
    code = exc.verify_code
    if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        return f"{text}; connect by a name the certificate lists, or reissue it for {cfg.host}"
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return f"{text}; the broker needs a renewed certificate"
    return f"{text} (checked against {trusted}); give --ca-file the CA certificate that signed it"


def _describe_peer(cfg: BrokerConfig, address: Any, timeout: float) -> str:
    """`` (subject ..., issuer ..., valid until ...)`` of the broker's certificate, or ""
    when it cannot be read. Python decodes a certificate only once it is verified, so it
    is fetched again and verified against itself (a partial chain), host name unchecked."""
    try:
        context = _unverified()
        with (
            _connect(address, timeout) as sock,
            context.wrap_socket(sock, server_hostname=cfg.host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.load_verify_locations(cadata=der)
        with (
            _connect(address, timeout) as sock,
            context.wrap_socket(sock, server_hostname=cfg.host) as tls,
        ):
            cert = tls.getpeercert()
    except (OSError, ValueError):
        return ""
    if not cert:
        return ""

    def name(field: str) -> str:
        return ", ".join(
            f"{SHORT_NAMES.get(k, k)}={v}" for rdn in cert.get(field, ()) for k, v in rdn
        )

    names = ", ".join(v for _k, v in cert.get("subjectAltName", ()))
    parts = [f"subject {name('subject')}", f"issuer {name('issuer')}"]
    if names:
        parts.append(f"names {names}")
    parts.append(f"valid until {cert.get('notAfter')}")
    return " (" + "; ".join(parts) + ")"


def _bare_connect(sock: socket.socket, cfg: BrokerConfig, address: Any, timeout: float) -> None:
    """Send :data:`BARE_CONNECT` and read the first bytes of the answer."""
    where = f"{cfg.host}:{cfg.port}"
    try:
        sock.sendall(BARE_CONNECT)
        first = sock.recv(8)
        with contextlib.suppress(OSError):
            sock.sendall(DISCONNECT)
            # let the broker close first: amqtt logs a traceback for a client gone before
            sock.settimeout(0.2)
            while sock.recv(64):
                pass
    except TimeoutError:
        raise BrokerError(
            "timed_out",
            f"timed out: {where} took the connection but did not answer MQTT within "
            f"{timeout:g} s; is it an MQTT broker's port?",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        if cfg.tls:
            raise _client_certificate_error(cfg, exc) from None
        first = b""
    if first and first[0] == CONNACK:
        return
    if cfg.tls and not first:
        raise _client_certificate_error(cfg, None)
    if first.startswith(b"HTTP/"):
        # A web server, or a proxy that intercepts outgoing connections (which often takes
        # TLS as well, so this comes before the TLS probe).
        raise BrokerError(
            "not_mqtt",
            f"not an MQTT broker: {where} answered HTTP (a web server or an intercepting "
            "proxy) instead of MQTT CONNECT; check the host and port in --broker",
        )
    if not cfg.tls and (
        (first and first[0] in TLS_RECORD_TYPES) or _takes_tls(cfg, address, timeout)
    ):
        raise BrokerError(
            "tls_expected",
            f"TLS expected: {where} speaks TLS, not plain MQTT; use mqtts://{where} (with "
            "--ca-file unless a public CA signed the broker's certificate)",
        )
    answer = f"answered {first[:1].hex()}" if first else "closed the connection"
    raise BrokerError(
        "not_mqtt",
        f"not an MQTT broker: {where} {answer} instead of answering MQTT CONNECT; check "
        "the port in --broker",
    )


def _login(cfg: BrokerConfig, timeout: float) -> None:
    """Log in with paho as the service would (protocol, user, password, TLS) and read the
    broker's answer: first as ``<client id>-check`` with a clean session, which leaves the
    service's persistent session alone; when that is refused, once more as the service's
    own client id with its persistent session (a broker may allow only that id), taking
    no message from it (unacknowledged, the broker keeps them for the service)."""
    where = f"{cfg.host}:{cfg.port}"
    reason = _answer(dataclasses.replace(cfg, client_id=f"{cfg.client_id}-check"), False, timeout)
    if reason.is_failure and str(reason) in (*LOGIN_REFUSED, ID_REFUSED):
        reason = _answer(cfg, True, timeout)
    if not reason.is_failure:
        return
    if str(reason) in LOGIN_REFUSED:
        who = f"as user {cfg.username!r}" if cfg.username else "without a user name"
        raise BrokerError(
            "not_authorized",
            f"not authorized: {where} refused the login {who} ({reason}); check the "
            "credentials (--username, --password-file or the password in --broker), and "
            f"whether the broker lets this user take client id {cfg.client_id}",
        )
    raise BrokerError("refused_by_broker", f"{where} refused the login: {reason}")


def _answer(cfg: BrokerConfig, persistent: bool, timeout: float) -> Any:
    """The broker's CONNACK reason for one login as ``cfg`` describes it."""
    client = make_client(cfg, persistent=persistent, manual_ack=True)
    client.connect_timeout = timeout
    answers: list[Any] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.append(reason)
    where = f"{cfg.host}:{cfg.port}"
    rc = mqtt.MQTT_ERR_SUCCESS
    try:
        client.connect(cfg.host, cfg.port, cfg.keepalive, **session_kwargs(cfg, persistent))
        deadline = time.monotonic() + timeout
        while not answers and rc == mqtt.MQTT_ERR_SUCCESS and time.monotonic() < deadline:
            rc = client.loop(timeout=0.05)
    except (ssl.SSLError, OSError) as exc:
        raise BrokerError("refused_by_broker", f"{where} dropped the login: {_why(exc)}") from None
    finally:
        client.disconnect()  # sends DISCONNECT and closes the socket, if still open
    if answers:
        return answers[0]
    # it answered the bare 3.1.1 CONNECT: the protocol version is the likely cause
    other = "3.1.1" if cfg.mqtt_version == "5" else "5"
    hint = f"; if the broker speaks only MQTT {other}, give --mqtt-version {other}"
    if rc == mqtt.MQTT_ERR_SUCCESS:
        raise BrokerError(
            "timed_out",
            f"timed out: {where} did not answer the MQTT {cfg.mqtt_version} login within "
            f"{timeout:g} s{hint}",
        )
    raise BrokerError(
        "refused_by_broker",
        f"{where} closed the connection without answering the MQTT {cfg.mqtt_version} login{hint}",
    )


def _connect(address: Any, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if len(address) == 4 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def _answers_plain_mqtt(address: Any, timeout: float) -> bool:
    """Whether the port answers a plain :data:`BARE_CONNECT` with a CONNACK."""
    try:
        with _connect(address, timeout) as sock:
            sock.sendall(BARE_CONNECT)
            first = sock.recv(1)
    except OSError:
        return False
    return first[:1] == bytes([CONNACK])


def _takes_tls(cfg: BrokerConfig, address: Any, timeout: float) -> bool:
    """Whether the port completes a TLS handshake (any certificate: only the protocol is
    in question here)."""
    context = _unverified()
    try:
        with (
            _connect(address, timeout) as sock,
            context.wrap_socket(sock, server_hostname=cfg.host),
        ):
            return True
    except (ssl.SSLError, OSError):
        return False


def _unverified() -> ssl.SSLContext:
    """A TLS client context that takes any certificate: for questions about the protocol
    or the certificate itself, never for a connection that carries data."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _client_certificate_alert(exc: BaseException) -> bool:
    """A TLS alert about the client's certificate (missing, unknown CA, refused)."""
    reason = getattr(exc, "reason", None) or ""
    return "CERTIFICATE" in reason or reason.endswith(("UNKNOWN_CA", "HANDSHAKE_FAILURE"))


def _client_certificate_error(cfg: BrokerConfig, exc: BaseException | None) -> BrokerError:
    """The broker closed the connection over the client's certificate: during the TLS 1.2
    handshake with an alert, or (TLS 1.3 checks it after the handshake) at the first read,
    where Mosquitto's close reads as a bare EOF, so only the moment names the cause."""
    where = f"{cfg.host}:{cfg.port}"
    what = f" ({_why(exc)})" if exc is not None else ""
    if cfg.cert_file is None:
        message = (
            f"TLS client certificate required: {where} closed the connection after the "
            f"TLS handshake, before any MQTT{what}, as a broker that requires a client "
            "certificate does; give --cert-file and --key-file"
        )
    else:
        message = (
            f"TLS client certificate refused: {where} closed the connection after the TLS "
            f"handshake{what}; it must trust the CA that signed --cert-file {cfg.cert_file}"
        )
    return BrokerError("tls_client_certificate", message)


def _why(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc) or type(exc).__name__
