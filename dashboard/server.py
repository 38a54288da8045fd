"""The dashboard's web side: the page's files, server-sent events, a detail API, actions.

The standard library's threaded HTTP server; one thread per open page holds its
``/events`` stream. A flusher thread takes a :meth:`Board.delta` every ``push_interval_s``
(0.25 s: four batches a second, so a new prediction shows within about a third of a
second), encodes it once and wakes every page's thread, which writes the deltas it has not
sent yet; a page that fell more than :data:`DELTA_LOG` deltas behind gets a fresh snapshot.

Every response carries a Content-Security-Policy that allows scripts, styles and
connections from the dashboard's own address only, so even a device id or text that
slipped past the page's escaping could not run a script or reach another host.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from harstream.dashboard.board import Board
from harstream.stream.contract import is_valid_id

log = logging.getLogger(__name__)

DELTA_LOG = 64  # 16 s of deltas at 4 a second: a page that paused briefly catches up
HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
MAX_PAGES = 32  # open event streams (one thread each); more get 503
MAX_BODY = 4096  # an action's JSON body
LABEL_SECONDS = (4.0, 600.0)  # a label spans at least one window and at most 600 s (contract)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),  # browsers ask for it anyway
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Pusher:
    """Takes the board's deltas on a timer and hands them to the open pages."""

    def __init__(self, board: Board, interval_s: float) -> None:
        self.board = board
        self.interval_s = interval_s
        self._cond = threading.Condition()
        self._seq = 0
        self._log: deque[tuple[int, bytes]] = deque(maxlen=DELTA_LOG)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dashboard-push", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            # under the same lock as snapshot(): a page's snapshot is either before this
            # delta (and gets it) or after it (and skips it), never fresher than a delta
            # it then applies
            with self._cond:
                doc = self.board.delta()
                data = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
                self._seq += 1
                self._log.append((self._seq, data))
                self._cond.notify_all()

    def snapshot(self, extra: dict[str, Any]) -> tuple[int, bytes]:
        """A snapshot and the sequence of the last delta it includes."""
        with self._cond:
            doc = {**self.board.snapshot(), **extra}
            return self._seq, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)

    def after(self, seq: int, timeout: float) -> tuple[int, list[bytes] | None]:
        """Wait up to ``timeout`` for deltas after ``seq``; ``None`` when they are gone."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq != seq or self._stop.is_set(), timeout)
            if self._seq == seq:
                return seq, []
            if not self._log or self._log[0][0] > seq + 1:
                return self._seq, None
            return self._seq, [data for s, data in self._log if s > seq]


class DashboardServer(ThreadingHTTPServer):
    """The HTTP server: ``handler`` reads the board, pusher and actions from here."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        board: Board,
        pusher: Pusher,
        *,
        label: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.board = board
        self.pusher = pusher
        self.label = label
        self.pages = threading.BoundedSemaphore(MAX_PAGES)
        self.loopback = _is_loopback(address[0])
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def allow_actions(self) -> bool:
        return self.label is not None


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"
    # a socket timeout: a page that stops reading its event stream for this long (a frozen
    # tab, a dead link) frees its thread and its place among MAX_PAGES
    timeout = 60

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    # ------------------------------------------------------------------ responses

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
        self._send(status, body, "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        """On a loopback address, only loopback host names: a web site that points its own
        name at 127.0.0.1 (DNS rebinding) cannot read the page's data through it."""
        if not self.server.loopback:
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        return _is_loopback(host)

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        url = urlsplit(self.path)
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            body = resources.files("harstream.dashboard").joinpath("static", name).read_bytes()
            return self._send(HTTPStatus.OK, body, content_type)
        if url.path == "/events":
            return self._events()
        if url.path == "/api/device":
            device = parse_qs(url.query).get("id", [""])[0]
            detail = self.server.board.detail(device) if is_valid_id(device) else None
            if detail is None:
                return self._error(HTTPStatus.NOT_FOUND, "no such device")
            return self._json(HTTPStatus.OK, detail)
        if url.path == "/api/snapshot":
            return self._send(HTTPStatus.OK, self._snapshot()[1], "application/json")
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    def _snapshot(self) -> tuple[int, bytes]:
        return self.server.pusher.snapshot({"allow_actions": self.server.allow_actions})

    def _events(self) -> None:
        if not self.server.pages.acquire(blocking=False):
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, "too many open pages")
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self.close_connection = True
            pusher = self.server.pusher
            seq, data = self._snapshot()
            self._write([data])
            while not pusher.stopped:
                seq, batch = pusher.after(seq, HEARTBEAT_S)
                if batch is None:
                    seq, data = self._snapshot()
                    batch = [data]
                if batch:
                    self._write(batch)
                else:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the page was closed
        finally:
            self.server.pages.release()

    def _write(self, batch: list[bytes]) -> None:
        self.wfile.write(b"".join(b"data: " + data + b"\n\n" for data in batch))
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        if urlsplit(self.path).path != "/api/label":
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        if self.server.label is None:
            return self._error(HTTPStatus.FORBIDDEN, "actions are off (start with --allow-actions)")
        # A JSON content type cannot be sent cross-site without a CORS preflight, which
        # this server never grants: only the dashboard's own page can post here.
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
        declared = self.headers.get("Content-Length", "")
        length = int(declared) if declared.isdigit() else 0
        if not 0 < length <= MAX_BODY:
            return self._error(HTTPStatus.BAD_REQUEST, "body missing or too long")
        try:
            doc = orjson.loads(self.rfile.read(length))
            device, message = self._label_message(doc)
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            return self._error(HTTPStatus.BAD_REQUEST, str(exc))
        self.server.label(device, message)
        return self._json(HTTPStatus.OK, {"published": message, "device": device})

    def _label_message(self, doc: Any) -> tuple[str, dict[str, Any]]:
        """``{"device", "activity", "seconds"}`` or ``{"device", "reset": true}``."""
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object")
        device = doc.get("device")
        if not isinstance(device, str) or not is_valid_id(device):
            raise ValueError("invalid device id")
        if doc.get("reset") is True:
            return device, {"reset": True}
        activity, seconds = doc.get("activity"), doc.get("seconds")
        if activity not in self.server.board.classes():
            raise ValueError("unknown activity")
        low, high = LABEL_SECONDS
        if not isinstance(seconds, int | float) or not low <= seconds <= high:
            raise ValueError(f"seconds must be between {low:g} and {high:g}")
        return device, {"activity": activity, "seconds": float(seconds)}
