"""The node's listening sockets: each connection's handshake and session run as one task, and one timer a second
keeps every connection's time (keepalive pings, opening and closing handshake deadlines) instead of a task or
timer per connection. A worker of several listens twice: on the port it shares with its siblings, and its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import http
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from server.net.connection import GameConnection
from server.ops.logs import CONN
from server.ops.metrics import Traffic

ProcessRequest = Callable[[GameConnection, Request], Awaitable[Response | None]]
Handler = Callable[[GameConnection], Awaitable[None]]

_OPEN = State.OPEN


@dataclass(frozen=True, slots=True)
class Timeouts:
    open_s: float = 10.0  # from TCP accept to the end of the opening handshake
    close_s: float = 2.0  # for the client to answer a close frame (or a refused handshake)
    ping_interval_s: float = 20.0  # a ping after this much silence from the client,
    ping_timeout_s: float = 20.0  # and the connection is dropped after this much more
    sweep_s: float = 1.0  # how often all of the above is checked (each deadline may be late by this much)


class Listener:
    """`await Listener(...).start(host, port)` (again for each further port); `close()` then `await wait_closed()`
    to stop."""

    def __init__(self, process_request: ProcessRequest, handler: Handler, *, max_size: int, timeouts: Timeouts,
                 logger: logging.Logger, traffic: Traffic | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.traffic = traffic or Traffic()  # what passes through the connections, for the node's metrics
        self.max_size = max_size
        self.logger = logger
        self.timeouts = timeouts
        self._process_request = process_request
        self._handler = handler
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.connections: set[GameConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._all_gone: asyncio.Future[None] | None = None
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)

    async def start(self, host: str, port: int, *, backlog: int, reuse_port: bool = False,
                    serving: bool = True) -> None:
        """Listen on `port` too (the first port started is `port`). `reuse_port`: share it with other processes
        that do (SO_REUSEPORT), the kernel spreading new connections over those that listen. `serving=False`:
        only bind it (no connection comes in) until `serve()`, once whatever answers connections is ready."""
        server = await self.loop.create_server(lambda: GameConnection(self), host, port, backlog=backlog,
                                               reuse_port=reuse_port or None, start_serving=serving)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.timeouts.sweep_s, self.sweep)

    async def serve(self) -> None:
        """Listen on every port that was only bound."""
        for server in self._servers:
            if not server.is_serving():
                await server.start_serving()

    @property
    def port(self) -> int:
        """The port bound by the first `start`."""
        return self.ports[0]

    @property
    def ports(self) -> list[int]:
        """Every port listened on, in the order started (port 0 asked the kernel for a free one)."""
        return [server.sockets[0].getsockname()[1] for server in self._servers]

    # -- connections ---------------------------------------------------------------------------------

    def next_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    def connected(self, conn: GameConnection) -> None:
        if self._closing:
            conn.abort()
            return
        self.connections.add(conn)

    def disconnected(self, conn: GameConnection) -> None:
        self.connections.discard(conn)
        if self._all_gone is not None and not self.connections and not self._all_gone.done():
            self._all_gone.set_result(None)

    def handshake(self, conn: GameConnection, request: Request) -> None:
        # The connection's task logs with its id (and, once authenticated, its player's: server/ops/logs.py).
        context = contextvars.Context()
        context.run(CONN.set, conn.id)
        task = self.loop.create_task(self._serve(conn, request), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: GameConnection, request: Request) -> None:
        try:
            try:
                response = await self._process_request(conn, request)
            except Exception:
                self.logger.error("process_request failed", exc_info=True)
                response = conn.protocol.reject(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                                                "Failed to open a WebSocket connection.\nSee server log for more "
                                                "information.\n")
            if response is None:
                response = conn.protocol.accept(request)
            if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS and self._closing:
                response = conn.protocol.reject(http.HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n")
            conn.respond(response)
            if conn.state is not _OPEN:
                return
            failed = False
            try:
                await self._handler(conn)
            except Exception:
                failed = True
                self.logger.error("connection handler failed", exc_info=True)
            finally:
                conn.close(CloseCode.INTERNAL_ERROR if failed else CloseCode.NORMAL_CLOSURE)
        except Exception:
            self.logger.error("connection failed", exc_info=True)
            conn.abort()

    # -- time ----------------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Abort connections past their handshake deadline; ping those silent for `ping_interval_s`, and drop
        those silent for `ping_interval_s + ping_timeout_s` (a pong, like any bytes, counts as heard)."""
        try:
            self._sweep(self.loop.time())
        except Exception:  # never let one bad connection stop the keepalive of all the others
            self.logger.exception("connection sweep failed")
        finally:
            self._sweeper = self.loop.call_later(self.timeouts.sweep_s, self.sweep)

    def _sweep(self, now: float) -> None:
        interval = self.timeouts.ping_interval_s
        limit = interval + self.timeouts.ping_timeout_s
        for conn in list(self.connections):
            deadline = conn.deadline
            if deadline is not None:
                if now >= deadline:
                    conn.abort()
                continue
            if conn.state is not _OPEN:
                # Closing or closed without a deadline yet (should not happen): bound it all the same.
                conn.deadline = now + self.timeouts.close_s
                continue
            if conn.heard:
                conn.heard = False
                conn.silent_since = now
                conn.ping_sent = False
                continue
            silent = now - conn.silent_since
            if silent >= limit:
                conn.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            elif silent >= interval and not conn.ping_sent:
                conn.send_ping()

    # -- shutdown ------------------------------------------------------------------------------------

    def broadcast(self, frames: bytes) -> int:
        """Write already framed bytes to every open connection; how many got them."""
        sent = 0
        for conn in list(self.connections):
            if conn.state is _OPEN and not conn.transport.is_closing():
                conn.transport.write(frames)
                sent += 1
        return sent

    def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Stop accepting; close open connections with `code`; refuse handshakes still being answered (503)."""
        if self._closing:
            return
        self._closing = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.state is _OPEN:
                conn.close(code, reason)
            elif conn.request is None:
                conn.abort()  # no request yet: nothing to answer

    async def wait_closed(self) -> None:
        """Until every connection is gone and every session has returned (the close timeout bounds the wait)."""
        for server in self._servers:
            await server.wait_closed()
        if self.connections:
            if self._all_gone is None:
                self._all_gone = self.loop.create_future()
            await asyncio.shield(self._all_gone)
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
