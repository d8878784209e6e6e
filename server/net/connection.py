"""One client's TCP connection: websockets' Sans-I/O `ServerProtocol` parses the HTTP handshake and the frames;
this class only moves bytes between it and the transport, and hands each data message to a callback.

websockets' own asyncio connection costs a few hundred µs of CPU per connection (a handler task, a
keepalive task, futures, timeouts, an async context manager per send), about five times what the
kernel and the event loop spend. A lobby connection lives for one join, so that cost is most of a
join. Here a connection is one `asyncio.Protocol` and one task (handshake, then the session), and
`Listener` drives keepalive pings and every deadline from one timer for all connections.

Every complete data message (text or binary, whole or reassembled from fragments) goes synchronously
to `on_message`, in arrival order; messages that come before the session attaches wait in a short list
that the session drains first. The common frame, a small final masked text frame starting right at a
frame boundary, is cut out of the bytes directly: websockets' generator-based parser costs more than
the rest of handling an input. Anything else (partial frames, longer or fragmented or binary messages,
control frames, the closing handshake) goes through websockets' parser unchanged, which then sees a
stream that starts at a frame boundary, exactly as if the frames we took had never been there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event, Protocol, State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets without its C extension
    from websockets.utils import apply_mask

from server.net.auth import Identity
from server.net.requesthead import HeadRefused, RequestHead

if TYPE_CHECKING:
    from server.net.listener import Listener

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_DATA = (_TEXT, _BINARY, _CONT)
_CONNECTING = State.CONNECTING
_OPEN = State.OPEN
_CLOSED = State.CLOSED
_FIN_TEXT = 0x81  # FIN, no RSV bits, opcode 1
_MASKED = 0x80
_SHORT = 126  # payload lengths below this fit in the second header byte
_AT_EOF = StreamReader.at_eof.__code__


def at_frame_boundary(protocol: Protocol) -> bool:
    """True when websockets' parser waits for the first byte of a new frame, and holds no bytes.

    Its parser is a chain of generators; between frames the innermost one is `StreamReader.at_eof`.
    An empty buffer alone is not enough: after a frame's header the parser waits for the payload with
    an empty buffer too. Any other shape (a future websockets) reads as "not at a boundary", which
    only turns the fast path off.
    """
    if protocol.reader.buffer or protocol.current_size is not None:
        return False
    generator: Any = protocol.parser
    while True:
        inner = getattr(generator, "gi_yieldfrom", None)
        if inner is None:
            return getattr(generator, "gi_code", None) is _AT_EOF
        generator = inner


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """What the handshake established: who connects, and to which room."""

    identity: Identity
    room_id: str
    mode: str
    # A lobby match: the players the lobby seated in the room (None: a development room, open to anyone).
    roster: frozenset[str] | None = None
    spectator: bool = False  # watches the room's broadcast and sends nothing (`spectate=1`)


Payload = bytes | bytearray | memoryview
# (payload, is_binary)
MessageHandler = Callable[[Payload, bool], None]
# Messages that may wait for the session to attach; more than that is a flood the session will refuse.
EARLY_LIMIT = 256
# Bytes we may owe a client that does not read. Rooms skip states long before this; what else can pile
# up is the protocol's automatic answers (a pong per ping), which a client controls.
MAX_UNSENT_BYTES = 1 << 20


def game_conn_id(conn: GameConnection) -> str:
    """How the lobby names a player's game connection (the `conn` of their record in Redis)."""
    return f"game-{conn.id}"


class GameConnection(asyncio.Protocol):
    """A client connection, from the opening handshake to the TCP close (`/game`, `/lobby` and plain HTTP)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.protocol = ServerProtocol(max_size=listener.max_size, logger=listener.logger)
        self.id = listener.next_id()  # unique among all nodes' connections (a random prefix per process)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.request: Request | None = None
        # The first request's head until it is whole (None from then on), and its method and body: websockets reads
        # GET requests only (server/net/requesthead.py).
        self.head: RequestHead | None = RequestHead()
        self.method = "GET"
        self.body = b""
        self.join_request: JoinRequest | None = None  # set for /game
        self.identity: Identity | None = None  # set for /lobby
        # A refused handshake that the client asked to be told over WebSocket (`refusal=close`, for browsers, which
        # never see an HTTP refusal's body): the close code, the error code, and the `error` frame to send first.
        self.refusal: tuple[int, str, bytes] | None = None
        self.on_message: MessageHandler | None = None
        self._early: list[tuple[Payload, bool]] = []
        self._fragments: list[Payload] = []
        self._fragments_binary = False
        self._at_boundary = False  # known to be at a frame boundary (see `data_received`)
        # Keepalive and deadlines, read by the listener's sweep (see `Listener.sweep`).
        self.heard = True  # bytes arrived since the last sweep
        self.silent_since = 0.0
        self.ping_sent = False
        self.deadline: float | None = None  # the opening or closing handshake must end by then
        self._lost: asyncio.Future[None] = listener.loop.create_future()
        self._probe: asyncio.Future[bool] | None = None  # set while a probe waits for the client's answer

    # -- the session's side --------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.protocol.state

    def attach(self, handler: MessageHandler) -> None:
        """Route messages to `handler` from now on, after those that arrived before."""
        early, self._early = self._early, []
        for payload, binary in early:
            handler(payload, binary)
        self.on_message = handler

    def detach(self) -> None:
        self.on_message = None

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "", *, last: bytes = b"") -> None:
        """Start the closing handshake (once), after the frames `last` (in the same write); the TCP connection
        ends when the client answers, or at the close timeout."""
        if self.protocol.state is not _OPEN:
            return
        self.protocol.send_close(code, reason)
        if last:
            self.transport.write(b"".join((last, *self.protocol.data_to_send())))
        else:
            self._flush()
        self.deadline = self._in(self.listener.timeouts.close_s)

    def abort(self) -> None:
        self.transport.abort()

    async def probe(self, timeout_s: float) -> bool:
        """Whether the client still answers: a ping, then any bytes within `timeout_s`. A client that does not
        (a half-open TCP connection: the device went away without closing) is dropped with 1011, at once
        instead of at the keepalive timeout, and the answer is False."""
        if self.protocol.state is not _OPEN:
            return False
        if self._probe is None:
            self._probe = self.listener.loop.create_future()
            self.protocol.send_ping(b"probe")
            self._flush()
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(self._probe)
        except TimeoutError:
            self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return False

    def _answered(self, alive: bool) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and not probe.done():
            probe.set_result(alive)

    async def wait_closed(self) -> None:
        """Until the TCP connection is gone."""
        if not self._lost.done():
            await asyncio.shield(self._lost)

    @property
    def closed(self) -> bool:
        return self._lost.done()

    def _in(self, seconds: float) -> float:
        return self.listener.loop.time() + seconds

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        self.deadline = self._in(self.listener.timeouts.open_s)
        self.listener.connected(self)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        self.listener.traffic.bytes_in += len(data)
        if self._probe is not None:
            self._answered(True)
        protocol = self.protocol
        if protocol.state is _CONNECTING:
            head = self.head
            if head is not None:
                try:
                    whole = head.feed(data)
                except HeadRefused as refused:
                    self.listener.traffic.errors[refused.code] += 1
                    self.transport.write(refused.response)
                    self.transport.close()
                    return
                if whole is None:
                    return
                self.head = None
                self.method, self.body = head.method, head.body
                data = whole
            self._receive(data)
            return
        if self.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self.listener.logger.warning("dropping a client that sends but does not read (%d unsent bytes)",
                                         self.transport.get_write_buffer_size())
            self.transport.abort()
            return
        handler = self.on_message
        if handler is None or protocol.state is not _OPEN:
            self._receive(data)
            return
        if not self._at_boundary:  # asked of websockets' parser only after it was fed: the answer is not cheap
            if not at_frame_boundary(protocol):
                self._receive(data)
                return
            self._at_boundary = True
        pos = 0
        end = len(data)
        while end - pos >= 6:
            second = data[pos + 1]
            if data[pos] != _FIN_TEXT or second < _MASKED:
                break
            length = second - _MASKED
            if length >= _SHORT:
                break
            start = pos + 6
            stop = start + length
            if stop > end:
                break
            payload = apply_mask(data[start:stop], data[pos + 2:start])
            pos = stop
            self.listener.traffic.messages_in += 1
            handler(payload, False)
        if pos < end:
            self._receive(data[pos:] if pos else data)
        # else: every byte was whole frames taken here; websockets' parser, untouched, is still at a boundary

    def eof_received(self) -> bool:
        self.protocol.receive_eof()
        self._flush()
        # The WebSocket closing handshake ends in a TCP close; nothing is written after the peer's EOF.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent; the protocol's state is CLOSED from here on
        self.on_message = None
        self.listener.disconnected(self)
        self._answered(False)
        if not self._lost.done():
            self._lost.set_result(None)

    # -- bytes in, events out, bytes to send ---------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        self._at_boundary = False
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._flush()
        if self.deadline is None and protocol.close_expected():
            self.deadline = self._in(self.listener.timeouts.close_s)
        for event in events:
            self._process(event)

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            else:
                # The WebSocket is closed and the server ends TCP first (RFC 6455 7.1.1). A full close, not a
                # half-close: nothing more is read, and the transport still sends what it holds first; a client
                # that does not read that is cut at the close timeout.
                if self.deadline is None:
                    self.deadline = self._in(self.listener.timeouts.close_s)
                self.transport.close()

    def _process(self, event: Event) -> None:
        if isinstance(event, Request):
            if self.request is None:
                self.request = event
                self.listener.handshake(self, event)
            return
        if not isinstance(event, Frame) or event.opcode not in _DATA:
            return  # pings are answered by the protocol itself; pongs only show the client is alive
        if event.opcode is _CONT:
            self._fragments.append(event.data)
            if event.fin:
                payload = b"".join(self._fragments)
                self._fragments = []
                self._deliver(payload, self._fragments_binary)
        elif event.fin:
            self._deliver(event.data, event.opcode is _BINARY)
        else:
            self._fragments = [event.data]
            self._fragments_binary = event.opcode is _BINARY

    def _deliver(self, payload: Payload, binary: bool) -> None:
        self.listener.traffic.messages_in += 1
        handler = self.on_message
        if handler is not None:
            handler(payload, binary)
            return
        if len(self._early) < EARLY_LIMIT:
            self._early.append((payload, binary))

    def respond(self, response: Response) -> None:
        """Send the handshake's answer: 101 opens the WebSocket, anything else ends the connection."""
        if self.protocol.state is not _CONNECTING or self.closed:
            return
        self.protocol.send_response(response)
        self._flush()
        if self.protocol.state is _OPEN:
            self.deadline = None
            self.silent_since = self.listener.loop.time()
        else:
            self.deadline = self._in(self.listener.timeouts.close_s)

    def send_ping(self) -> None:
        self.protocol.send_ping(b"")
        self._flush()
        self.ping_sent = True

    def fail(self, code: int, reason: str) -> None:
        """Close at once with `code`, without waiting for the client's answer."""
        if self.protocol.state is _OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
        self.transport.abort()
