"""paho's MQTT client with fewer system calls per message, for the service and the tools.

:func:`stream.connection.make_client` builds a :class:`BufferedClient`; nothing else in
harstream needs to know it is not a stock ``paho.mqtt.client.Client``. (The benchmark's
load generator is the exception that uses neither: ``harstream.bench.mqtt_wire``.)
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

READ_CHUNK = 65536  # bytes taken from the socket per recv()
MIN_PACKETS_PER_READ = 64  # packets handled per wake-up before writes get their turn


class BufferedClient(mqtt.Client):
    """paho's client with buffered, draining reads and coalesced writes.

    Stock paho 2.x handles one incoming packet per ``select()`` wake-up (unless QoS 1
    messages of its own are in flight), reads each packet with three or more ``recv()``
    calls (type byte, length byte by byte, body), writes every outgoing packet, each
    PUBACK included, with its own ``send()``, and wakes its own loop through a socket
    pair for every packet it queues, even from the loop thread. At a few thousand messages
    per second py-spy put most of the service's MQTT thread in those calls (much of it
    waiting to get the GIL back after them). Here:

    - one ``recv()`` takes up to 64 KiB and every packet in it is handled in the same
      wake-up; the read buffer is always empty when a read returns, so ``select()`` on
      the socket stays a true "is there more?" test;
    - packets queued while reading (the PUBACKs owed) do not wake the loop; they are
      written right after the read, with everything else queued, in one ``send()``.

    Measured with ``bench e2e`` at 1,500 devices: 4-5% less service CPU than the stock
    client. Only private paho methods with their stock signatures and error mapping are
    overridden; the paho version is pinned in ``pyproject.toml`` for that reason.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rbuf_sock: Any = None
        self._wbuf: list[bytes] = []  # packets "sent" by paho, written at the end of a turn
        self._wbuf_sock: Any = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rbuf_sock is not self._sock:  # a new connection: drop the old bytes
            self._rbuf, self._rpos, self._rbuf_sock = b"", 0, self._sock
        if self._rpos >= len(self._rbuf):
            chunk = super()._sock_recv(READ_CHUNK)  # BlockingIOError when nothing waits
            if not chunk:
                return chunk  # the broker closed the connection
            self._rbuf, self._rpos = chunk, 0
        end = self._rpos + bufsize
        data = self._rbuf[self._rpos : end]
        self._rpos = min(end, len(self._rbuf))
        return data

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Handle packets until the socket is dry, or until at least
        ``MIN_PACKETS_PER_READ`` are done and the buffer is empty (so writes are never
        starved and no buffered byte waits for a ``select()`` that will not fire); then
        write what is queued."""
        handled = 0
        wake, self._sockpairW = self._sockpairW, None  # the write below replaces the wake-up
        try:
            while self._sock is not None:
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
                    break
                handled += 1
                if handled >= MIN_PACKETS_PER_READ and self._rpos >= len(self._rbuf):
                    break
        finally:
            self._sockpairW = wake
        if self._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
        return self.loop_write()

    def want_write(self) -> bool:
        return bool(self._wbuf) or super().want_write()

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._wbuf_sock is not self._sock:  # a new connection: drop the old bytes
            self._wbuf, self._wbuf_sock = [], self._sock
        self._wbuf.append(bytes(buf))
        return len(buf)

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        rc = super()._packet_write()  # hands each packet to _sock_send, i.e. to _wbuf
        if self._sock is None:
            return rc
        flushed = self._flush()
        return rc if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS else flushed

    def _flush(self) -> mqtt.MQTTErrorCode:
        """Write the collected packets with as few ``send()`` calls as the socket allows."""
        if not self._wbuf or self._wbuf_sock is not self._sock:
            self._wbuf = []
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        data = b"".join(self._wbuf)
        self._wbuf = []
        while data:
            try:
                sent = super()._sock_send(data)
            except BlockingIOError:
                self._wbuf = [data]  # want_write() now asks select() for writability
                return mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                log.debug("send failed: %s", err)
                return mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST
            data = data[sent:]
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_close(self) -> None:
        with contextlib.suppress(Exception):  # a DISCONNECT may still wait in the buffer
            self._flush()
        super()._sock_close()
