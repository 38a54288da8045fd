"""One running dashboard: the MQTT feed, the board, the pusher and the HTTP server together.

``harstream dashboard`` runs one until Ctrl-C; ``harstream demo`` runs one beside its
service for the demo's lifetime.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from harstream.dashboard.board import Board
from harstream.dashboard.feed import Feed
from harstream.dashboard.server import DashboardServer, Pusher
from harstream.stream.connection import BrokerConfig


@dataclass(frozen=True)
class DashboardSettings:
    """The page's address and the board's bounds (see ``harstream dashboard --help``)."""

    host: str = "127.0.0.1"
    port: int = 8050
    allow_actions: bool = False
    history_s: float = 300.0
    evict_after_s: float = 600.0
    max_devices: int = 10_000
    push_interval_s: float = 0.25


class Dashboard:
    """Start with :meth:`start` (binds the port, connects in the background); :meth:`stop`."""

    def __init__(self, broker: BrokerConfig, prefix: str, settings: DashboardSettings) -> None:
        self.board = Board(
            history_s=settings.history_s,
            evict_after_s=settings.evict_after_s,
            max_devices=settings.max_devices,
        )
        self.feed = Feed(broker, prefix, self.board)
        self.pusher = Pusher(self.board, settings.push_interval_s)
        self.server = DashboardServer(
            (settings.host, settings.port),
            self.board,
            self.pusher,
            label=self.feed.label if settings.allow_actions else None,
        )
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="dashboard-http", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        if shown in ("0.0.0.0", "[::]"):
            shown = "127.0.0.1"
        return f"http://{shown}:{port}/"

    def start(self) -> Dashboard:
        self.feed.start()
        self.pusher.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.pusher.stop()
        self.server.shutdown()
        self.server.server_close()
        self.feed.stop()

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
