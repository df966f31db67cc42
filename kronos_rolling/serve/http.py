"""The predictor's HTTP server: uvicorn, with time limits on reading a request.

uvicorn limits how long an idle keep-alive connection stays open, but not how long a
request may take to arrive: a client that sends one header line every few seconds, or
announces a body it never sends, holds its connection (and a slot of the concurrency
limit) for as long as it likes. `TimedH11Protocol` is uvicorn's h11 protocol with two more
limits: a request's head must arrive within `header_timeout_s` of its first byte (of the
connection, for the first request), its body within `body_timeout_s` of the head. A
request over either limit is answered 408 when no response has started, and its
connection is closed.

`max_connections` is uvicorn's `limit_concurrency`: beyond that many open connections or
requests in progress, a request is answered 503 at once.
"""

from __future__ import annotations

import functools
import logging
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from kronos_rolling.settings import ServeSettings

log = logging.getLogger(__name__)

ARRIVED = "kronos.arrived"  # scope key: time.monotonic() of a request's first byte
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                   b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing requests whose head or body arrives too slowly."""

    def __init__(self, *args, header_timeout_s: float, body_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self._limit = None  # the armed timer
        self._phase: str | None = None  # "head" or "body": what the timer waits for
        self._first_byte: float | None = None  # of the request being read (time.monotonic())

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm("head")

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._first_byte is None:
            self._first_byte = time.monotonic()
            if self._phase is None:
                self._arm("head")  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.scope is not None and self._first_byte is not None and self.conn.their_state is not h11.IDLE:
            # When the request began to arrive: the forecast queue's limit is on its whole wait.
            self.scope.setdefault(ARRIVED, self._first_byte)
            self._first_byte = None
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Move the timer along with the request: head, then body, then none."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body")
        elif state is not h11.IDLE:
            self._disarm()  # the whole request has arrived (or the connection is done)

    def _arm(self, phase: str) -> None:
        self._disarm()
        seconds = self.header_timeout_s if phase == "head" else self.body_timeout_s
        self._phase = phase
        self._limit = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._limit is not None:
            self._limit.cancel()
        self._limit, self._phase = None, None

    def _expired(self, phase: str, seconds: float) -> None:
        self._limit, self._phase = None, None
        if self.transport.is_closing():
            return
        what = "headers" if phase == "head" else "body"
        log.warning("closing the connection of %s: the request's %s did not arrive within %gs",
                    "%s:%d" % self.client if self.client else "a client", what, seconds)
        if self.cycle is None or not self.cycle.response_started:
            message = f"request {what} not received within {seconds:g}s\n".encode()
            self.transport.write(REQUEST_TIMEOUT % (len(message), message))
        self.transport.close()


def server_config(app, settings: ServeSettings, *, host: str, port: int, log_level: str = "info",
                  log_config=None) -> uvicorn.Config:
    """uvicorn's configuration for the predictor: time limits, the concurrency limit, the protocol above."""
    protocol = functools.partial(TimedH11Protocol, header_timeout_s=settings.header_timeout_s,
                                 body_timeout_s=settings.body_timeout_s)
    return uvicorn.Config(app, host=host, port=port, http=protocol, log_level=log_level, log_config=log_config,
                          timeout_keep_alive=settings.keep_alive_s, limit_concurrency=settings.max_connections,
                          timeout_graceful_shutdown=10, lifespan="on")
