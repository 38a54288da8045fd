"""The service's HTTP endpoints for supervisors and scrapers: ``/healthz``, ``/readyz`` and,
where metrics are served, ``/metrics``; anything else is 404.

Requests are answered on threads of the HTTP server, never on the MQTT thread, so
``/healthz`` still answers (503) while a message handler is stuck there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# (HTTP status, content type, body) of one endpoint, computed per request
Response = tuple[int, str, bytes]
Endpoint = Callable[[], Response]


def probe(ok: bool, body: dict[str, object]) -> Response:
    """A probe's answer: 200 when ``ok``, else 503; ``body`` as JSON either way."""
    return (200 if ok else 503), "application/json", orjson.dumps(body)


def metrics_endpoint(registry: CollectorRegistry) -> Endpoint:
    """``/metrics`` in the Prometheus text format, from ``registry``."""
    return lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry))


class HttpEndpoints:
    """A ``ThreadingHTTPServer`` on ``host:port`` (``port=0`` picks one) in a daemon thread,
    answering GET for each path of ``endpoints``."""

    def __init__(self, host: str, port: int, endpoints: dict[str, Endpoint]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                endpoint = endpoints.get(self.path.split("?", 1)[0])
                if endpoint is None:
                    status, ctype, body = 404, "text/plain", b"not found\n"
                else:
                    status, ctype, body = endpoint()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # a probe every few seconds would fill the log with access lines

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="harstream-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
