"""The HTTP server under the API: uvicorn (h11) with limits on request headers and on slow clients.

- A request line and headers may total `MAX_HEADER_BYTES` (128 KiB; h11's default is 16 KiB, too small for
  long bearer tokens and tracing headers); past it the connection gets 431 and is closed. h11's own limit
  (`h11_max_incomplete_event_size`, set to the same) only bounds headers that arrive in several reads: a
  larger block that arrives at once would pass it, so the protocol below counts the bytes itself.
- A client has `HEADER_TIMEOUT_S` from connecting (or from the first byte of its next request on a kept-alive
  connection) to finish its request line and headers; past it the connection gets 408 and is closed. uvicorn
  has no such timeout of its own, so a client dripping headers a byte at a time would hold its connection (and
  its file descriptor) forever. It never blocks the worker: the event loop serves others meanwhile.
- An idle kept-alive connection is closed after `KEEP_ALIVE_S` (uvicorn's `timeout_keep_alive`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 128 * 1024
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
END_OF_HEADERS = b"\r\n\r\n"


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers are too large (431) or do not arrive
    within the timeout (408)."""

    header_timeout_s = HEADER_TIMEOUT_S
    max_header_bytes = MAX_HEADER_BYTES

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._head = bytearray()  # what arrived of the current request's line and headers
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the first bytes of a request on a kept-alive connection
            searched = max(len(self._head) - len(END_OF_HEADERS) + 1, 0)
            self._head += data
            end = self._head.find(END_OF_HEADERS, searched)
            if (end < 0 and len(self._head) > self.max_header_bytes) or end > self.max_header_bytes:
                self.logger.warning("refused a request whose headers exceed %d bytes", self.max_header_bytes)
                return self._refuse(b"431 Request Header Fields Too Large")
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_timer()  # the headers are in (or the connection failed)
            self._head.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.warning("closed a connection whose request headers took over %g s", self.header_timeout_s)
            self._refuse(b"408 Request Timeout")

    def _refuse(self, status: bytes) -> None:
        """Answer before any request was parsed (h11 has no request to answer), and close."""
        self._disarm_header_timer()
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()


def uvicorn_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn settings `niche serve` runs with (options override them, e.g. log_level)."""
    settings: dict[str, Any] = {
        "http": LimitedH11Protocol,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "log_level": "warning",
    }
    return uvicorn.Config(app, host=host, port=port, **(settings | options))


def serve_http(app: Any, host: str, port: int) -> None:
    """Run the app until interrupted, with `uvicorn_config`'s limits."""
    uvicorn.Server(uvicorn_config(app, host, port)).run()
