"""Connections for `stentor serve`: a slow or silent client cannot hold a socket, or crowd others out.

uvicorn's keep-alive timeout closes a connection that sits idle after a response, but nothing
bounds the wait for a request: a socket that never sends, or sends half its headers or half its
body, stays open, and enough of them make uvicorn answer everyone with 503. This protocol (uvicorn's
h11 one, chosen explicitly so an installed httptools does not bypass it) gives each request
`request_timeout_s` to arrive whole, headers and body, and refuses connections beyond
`max_connections` at once, so idle sockets are reaped instead of counted against real work.
"""

from __future__ import annotations

import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

WAITING_ON_CLIENT = (h11.IDLE, h11.SEND_BODY)  # the request has not fully arrived


def guarded_protocol(request_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with these bounds (a class, as uvicorn's `http` setting takes)."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._waiting_since: float | None = time.monotonic()
            self._tick = None
            if len(self.connections) > max_connections:
                transport.close()  # over the cap: this one waits its turn, the others keep working
                return
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._tick is not None:
                self._tick.cancel()
            super().connection_lost(exc)

        def _watch(self) -> None:
            """Once a second: close the connection if its request has been arriving for too long."""
            if self.transport.is_closing():
                return
            if self.conn.their_state in WAITING_ON_CLIENT:
                now = time.monotonic()
                if self._waiting_since is None:
                    self._waiting_since = now  # a new request is due (after a response, on keep-alive)
                elif now - self._waiting_since > request_timeout_s:
                    self.transport.close()
                    return
            else:
                self._waiting_since = None  # the request is in: the response may take as long as it takes
            self._tick = self.loop.call_later(min(1.0, request_timeout_s), self._watch)

    return GuardedH11Protocol
