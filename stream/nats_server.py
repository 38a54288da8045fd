"""A private ``nats-server`` on free loopback ports, from ``examples/nats/nats-server.conf``.

The tests and ``harstream bench e2e --engine nats`` run the example configuration itself,
with its ports, its MQTT listener address and its JetStream folder replaced, so that what
they check is what the documentation tells operators to run (docs/scale-out.md).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harstream.stream.broker import LOOPBACK, end_process, free_port, is_listening

EXAMPLE_CONF = Path(__file__).resolve().parent.parent / "examples" / "nats" / "nats-server.conf"
# the lines of the example that a private copy replaces
_REPLACED = {
    "port: 4222": "port: {nats}",
    "http_port: 8222": "http_port: {http}",
    "host: 0.0.0.0": "host: {host}",
    "port: 1883": "port: {mqtt}",
    '"/var/lib/nats/harstream"': '"{store}"',
}


def nats_server_binary() -> str | None:
    """Path of ``nats-server`` on PATH or in the usual sbin directories, or None."""
    return shutil.which("nats-server") or shutil.which(
        "nats-server", path="/usr/sbin:/usr/local/sbin:/opt/homebrew/bin"
    )


class NatsServer:
    """``nats-server -c <copy of the example>`` on free loopback ports: ``.url`` (NATS),
    ``.mqtt_url`` and ``.mqtt_port`` (its MQTT listener). ``kill()`` and ``start()`` again
    keep the JetStream folder (the stream, leases and buckets survive)."""

    def __init__(self, binary: str, conf: Path = EXAMPLE_CONF, host: str = LOOPBACK) -> None:
        self.binary = binary
        self.host = host
        self.port = free_port(host)
        self.mqtt_port = free_port(host)
        self.http_port = free_port(host)
        self._dir = tempfile.TemporaryDirectory(prefix="harstream-nats-")
        self.config_path = Path(self._dir.name) / "nats-server.conf"
        text = conf.read_text()
        values = {
            "nats": self.port,
            "http": self.http_port,
            "mqtt": self.mqtt_port,
            "host": host,
            "store": Path(self._dir.name) / "js",
        }
        for old, new in _REPLACED.items():
            if old not in text:
                raise ValueError(f"{conf} has no line {old!r} to replace")
            text = text.replace(old, new.format(**values))
        self.config_path.write_text(text)
        self.log_path = Path(self._dir.name) / "nats-server.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.mqtt_port}"

    @property
    def pid(self) -> int | None:
        """The running server's process id (for CPU accounting), None when stopped."""
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and return once both listeners accept connections."""
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not (
            is_listening(self.host, self.port, 0.2) and is_listening(self.host, self.mqtt_port, 0.2)
        ):
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self._proc.returncode}: {self.log()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not listen: {self.log()[-2000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            end_process(self._proc, timeout)
        self._proc = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()
