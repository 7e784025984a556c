"""HTTP connections with deadlines: an idle or slow client (a slowloris) is closed instead of holding a socket for ever.

uvicorn closes a keep-alive connection that stays idle after a response, but not a connection that never sends a
request, nor one that sends its request a byte at a time: hundreds of those hold as many file descriptors, and at the
process's limit nobody else can connect. `leadscore serve` runs uvicorn with this protocol (httptools, as uvicorn's
`auto` picks, plus two deadlines): a new connection must start a request within LEADSCORE_TIMEOUT_IDLE seconds, and a
started request must arrive whole (headers and body) within LEADSCORE_TIMEOUT_REQUEST seconds. A request that misses
its deadline before its headers are in gets a 408; one whose body is late is cut off (the app sees a disconnect).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.settings import Settings

log = logging.getLogger(__name__)

IMPORT_STRING = "serving.connections:DeadlineHttpToolsProtocol"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: 40\r\n\r\nthe request did not arrive whole in time"
)
# Closed connections are reported at most this often: a slowloris opens thousands, and so would the log lines.
REPORT_SECONDS = 60.0


@functools.cache
def _deadlines() -> tuple[float, float]:
    """(idle, request) seconds, from the service's settings (each worker reads them once)."""
    settings = Settings()
    return settings.timeout_idle, settings.timeout_request


class _Closures:
    """How many connections missed a deadline since the last report, reported once a minute at most."""

    def __init__(self) -> None:
        self.count = 0
        self.reported_at = 0.0

    def add(self, peer: object, what: str) -> None:
        self.count += 1
        log.debug("closed the connection of %s: %s", peer, what)
        now = time.monotonic()
        if now - self.reported_at >= REPORT_SECONDS:
            log.warning("closed %d connection(s) that missed a deadline (last: %s, %s)", self.count, peer, what)
            self.count, self.reported_at = 0, now


_closures = _Closures()


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline to start a request and a deadline to send it whole."""

    _deadline: asyncio.TimerHandle | None = None
    _headers_in = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: it has the idle deadline to start its first request."""
        super().connection_made(transport)
        idle, _ = _deadlines()
        self._arm(idle, "no request started in time")

    def on_message_begin(self) -> None:
        """The first byte of a request: it has the request deadline to arrive whole."""
        super().on_message_begin()
        _, request = _deadlines()
        self._headers_in = False
        self._arm(request, "the request did not arrive whole in time")

    def on_headers_complete(self) -> None:
        """The headers are in; the body's deadline runs on."""
        self._headers_in = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The whole request is in: no deadline until the next one (uvicorn's keep-alive timeout runs after it)."""
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone: its deadline with it."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        _closures.add(self.client, what)
        if not self._headers_in:
            self.transport.write(_TIMEOUT_RESPONSE)  # nothing reached the app yet: the client may learn why
        self.transport.close()
