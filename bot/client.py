"""One headless bot: its WebSocket sessions over a run (picows), what it sends, and what it counts.

In a game a bot's phase goes IDLE → CONNECTING → JOINING (hello sent) → PLAYING (welcomed) → LEAVING
(match_end or end of run; `leave` sent) → IDLE. With --lobby each game is preceded by a wait in the lobby:
IDLE → LOBBY_CONNECTING → QUEUED (join sent) → MATCHED (match_found: its URL is kept in `game_url`, and the
server closes) → IDLE, then the game at that URL; LOBBY_LEAVING is the lobby's LEAVING (end of run, or a
refusal after which the bot backs off and queues again). Frames of either connection arrive in the same
`on_ws_frame`, told apart by the phase. `on_ws_frame` is the hot path: one orjson decode per message and a
few counters. What to send in the game is the game's own bot policy's (`GameDefinition.bot`): it hears every
game message, and is asked when the swarm's input task calls `act`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from bot.plan import BotSettings, BotSpec, room_id
from game.api import BotPolicy
from server.net.wire import StateDecoder

log = logging.getLogger("tickroom.bot")

PENDING_MAX = 256  # unacknowledged inputs remembered; older ones are dropped unmeasured
CONNECT_TIMEOUT_S = 5.0
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 5.0
LEAVE_TIMEOUT_S = 2.0  # after `leave`, how long the server has to close before we close ourselves
REJOIN_PAUSE_S = 0.05  # after match_end, so that the server has released the old seat first

HELLO = b'{"type":"hello","v":1}'  # JSON states, the default
LEAVE = b'{"type":"leave"}'
# Lobby errors that mean "not now": the bot closes, backs off and joins the queue again.
LOBBY_RETRY_CODES = frozenset({"lobby_unavailable", "already_connected", "already_in_match", "ticket_invalid"})
_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_loads = orjson.loads
_dumps = orjson.dumps


class Phase(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    JOINING = "joining"
    PLAYING = "playing"
    LEAVING = "leaving"
    # The lobby connection before each game (--lobby).
    LOBBY_CONNECTING = "lobby_connecting"
    QUEUED = "queued"
    MATCHED = "matched"
    LOBBY_LEAVING = "lobby_leaving"


_PLAYING = Phase.PLAYING
_LOBBY_PHASES = frozenset({Phase.LOBBY_CONNECTING, Phase.QUEUED, Phase.MATCHED, Phase.LOBBY_LEAVING})


@dataclass(slots=True)
class Tally:
    """Counters shared by all bots of one process."""

    acks_ms: array[float] = field(default_factory=lambda: array("d"))
    errors: Counter[str] = field(default_factory=Counter)
    matches: set[str] = field(default_factory=set)
    disconnects: int = 0
    reconnects: int = 0  # a bot back in the room whose connection it lost (a node crashed, or shut down)
    matched: int = 0  # match_found messages from the lobby
    capacity: int = 0  # joins refused `capacity` (every node full): tried again, not errors
    rooms: set[str] = field(default_factory=set)  # the rooms they named
    waits_ms: array[float] = field(default_factory=lambda: array("d"))  # join sent -> first match_found
    reported_exception: bool = False


class Group:
    """The bots that share one room; after each match they move on to the next room id together."""

    __slots__ = ("generation", "number", "settings")

    def __init__(self, settings: BotSettings, number: int) -> None:
        self.settings = settings
        self.number = number
        self.generation = 0

    def room(self, generation: int) -> str:
        return room_id(self.settings, self.number, generation)

    def advance(self, generation: int) -> None:
        """The room of `generation - 1` is over (match_end or room_closed): join later ones from now on."""
        if generation > self.generation:
            self.generation = generation


def handshake_error_code(exc: WSHandshakeError) -> str:
    """The protocol code of a refused handshake (`{"error": CODE}` body), else `http_STATUS`."""
    response = exc.response
    body = exc.raw_body or (response.body if response is not None else None)
    if body:
        try:
            decoded = _loads(body)
        except orjson.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
            return str(decoded["error"])
    if response is not None:
        return f"http_{int(response.status)}"
    return "handshake_failed"


class BotClient(WSListener):
    """One bot, the listener of each of its connections in turn.

    Its `group` picks its rooms; without one (--lobby), the lobby does.
    """

    __slots__ = ("clock", "connected_s", "disconnected", "game_url", "generation", "group", "headers", "hello",
                 "inputs", "join", "joined_at", "lost_room", "mode", "pending", "phase", "policy", "received_bytes",
                 "refused", "rng", "room", "spec", "state_decoder", "states", "tally", "ticket",
                 "transport", "url", "welcomed", "window_start", "you")

    def __init__(self, spec: BotSpec, url: str, token: str, group: Group | None, tally: Tally,
                 rng: random.Random, policy: BotPolicy, clock: Callable[[], float] = time.monotonic,
                 mode: str = "arena", encoding: str = "json") -> None:
        self.spec = spec
        # A hello without `encoding` is the default (JSON states), byte for byte what older bots sent.
        self.hello = HELLO if encoding == "json" else orjson.dumps({"type": "hello", "v": 1, "encoding": encoding})
        self.state_decoder = StateDecoder()
        self.received_bytes = 0  # every frame received while in a room, WebSocket header included
        self.policy = policy
        self.mode = mode
        self.join = orjson.dumps({"type": "join", "v": 1, "mode": mode})
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.group = group
        self.tally = tally
        self.rng = rng
        self.clock = clock
        self.phase = Phase.IDLE
        self.transport: WSTransport | None = None
        self.disconnected: asyncio.Future[None] | None = None
        self.room = ""
        self.generation = 0
        self.refused = False
        # Lobby: when the current join was sent (None once matched), and the game it matched us to.
        self.joined_at: float | None = None
        self.game_url: str | None = None
        self.lost_room: str | None = None  # the room whose connection dropped (or was told to reconnect)
        self.ticket: str | None = None  # the seat ticket of the last match_found
        # Session: who we are in the room.
        self.you = 0
        # Sending and measuring.
        self.inputs = 0
        self.pending: deque[tuple[int, float]] = deque()
        self.states = 0
        self.welcomed = False
        self.connected_s = 0.0
        self.window_start = 0.0

    # -- picows callbacks (the hot path) --------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.phase is Phase.LOBBY_CONNECTING:
            self.phase = Phase.QUEUED
            self.joined_at = self.clock()
            # Back after losing a match's connection: the match's ticket lets the lobby wait for its recovery
            # when it has lost the match (Redis lost everything) instead of matching this bot anew.
            transport.send(_TEXT, self.join if self.lost_room is None or self.ticket is None else orjson.dumps(
                {"type": "join", "v": 1, "mode": self.mode, "ticket": self.ticket}))
        else:
            self.phase = Phase.JOINING
            self.state_decoder = StateDecoder()  # a new connection starts with a keyframe
            transport.send(_TEXT, self.hello)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is _TEXT:
            payload = frame.get_payload_as_bytes()
            msg = _loads(payload)
        elif msg_type is _BINARY:  # a state in the `delta` encoding (server/net/wire.py)
            payload = frame.get_payload_as_bytes()
            msg = self.state_decoder.decode(payload)
        else:
            if msg_type is _CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            return
        if self.phase is _PLAYING:
            size = len(payload)
            self.received_bytes += size + (2 if size < 126 else 4 if size < 65536 else 10)
        if msg["type"] == "state":
            if self.phase is _PLAYING:
                self.states += 1
                pending = self.pending
                if pending:  # a game whose state acknowledges each player's `seq` (the arena)
                    you = self.you
                    for entry in msg.get("players", ()):
                        if entry.get("p") == you:
                            if entry.get("seq", -1) >= pending[0][0]:
                                self._acknowledge(entry["seq"])
                            break
                self._send(transport, self.policy.on_message(msg, self._now_ms()))
            return
        self._on_message(transport, msg)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _send(self, transport: WSTransport, messages: list[dict[str, Any]]) -> None:
        """The policy's messages; those with a `seq` are timed until a state acknowledges them."""
        for message in messages:
            seq = message.get("seq")
            if type(seq) is int:
                pending = self.pending
                if len(pending) >= PENDING_MAX:
                    pending.popleft()
                pending.append((seq, self.clock()))
            transport.send(_TEXT, _dumps(message))

    def _acknowledge(self, seq: int) -> None:
        now = self.clock()
        pending = self.pending
        acks = self.tally.acks_ms
        while pending and pending[0][0] <= seq:
            acks.append((now - pending.popleft()[1]) * 1000.0)

    def _on_message(self, transport: WSTransport, msg: dict[str, Any]) -> None:
        if self.phase in _LOBBY_PHASES:
            self._on_lobby_message(transport, msg)
            return
        kind = msg.get("type")
        if kind == "welcome":
            if self.lost_room is not None and self.lost_room == msg.get("room"):
                self.tally.reconnects += 1
            self.lost_room = None
            self.you = msg["you"]
            self.phase = Phase.PLAYING
            self.welcomed = True
            self.window_start = self.clock()
            self._send(transport, self.policy.on_message(msg, self._now_ms()))
        elif kind == "reconnect":
            # The node is going away (it closes next): back through the lobby, into the same match.
            self.lost_room = self.room
        elif kind == "match_end":
            self.policy.on_message(msg, self._now_ms())
            self.tally.matches.add(self.room)
            if self.group is not None:
                self.group.advance(self.generation + 1)
            self._begin_leaving(transport)
        elif kind == "error":
            code = str(msg.get("code"))
            self.tally.errors[code] += 1
            if code == "ticket_invalid":
                self.ticket = None  # the next join goes without it
            if self.phase is Phase.JOINING:
                self.refused = True
            if code == "room_closed" and self.group is not None:
                self.group.advance(self.generation + 1)
            if self.phase is _PLAYING:
                self._send(transport, self.policy.on_message(msg, self._now_ms()))
        elif self.phase is _PLAYING:  # events, pongs...: the policy may act on them
            self._send(transport, self.policy.on_message(msg, self._now_ms()))

    def _on_lobby_message(self, transport: WSTransport, msg: dict[str, Any]) -> None:
        # `lobby` (queue status), `event`, `countdown` and `pong` say nothing the bot acts on.
        kind = msg.get("type")
        if kind == "match_found":
            tally = self.tally
            tally.matched += 1
            room = str(msg["room"])
            tally.rooms.add(room)
            if self.joined_at is not None:
                tally.waits_ms.append((self.clock() - self.joined_at) * 1000.0)
                self.joined_at = None
            if self.phase is Phase.QUEUED or self.phase is Phase.MATCHED:
                # The server closes the lobby connection now; the run loop then connects to this URL.
                self.phase = Phase.MATCHED
                self.room = room
                self.game_url = str(msg["url"])
                self.ticket = str(msg.get("ticket", "")) or None
                self._expect_close()
        elif kind == "error":
            code = str(msg.get("code"))
            if code == "capacity":  # every node is full: a normal answer under overload, tried again later
                self.tally.capacity += 1
                retry_ms = msg.get("retry_ms")
                delay = retry_ms / 1000 if isinstance(retry_ms, int) and 0 < retry_ms <= 60_000 else BACKOFF_MAX_S
                if self.phase is Phase.QUEUED:
                    # Not in line, and the connection stays: join again on it later (cheaper for the full
                    # nodes than a new connection).
                    asyncio.get_running_loop().call_later(delay * self.rng.uniform(0.5, 1.5), self._join_again,
                                                          transport)
                return
            self.tally.errors[code] += 1
            if code == "ticket_invalid":
                self.ticket = None  # the next join goes without it
            if self.phase is Phase.QUEUED:
                self.refused = True
                if code in LOBBY_RETRY_CODES:
                    self.phase = Phase.LOBBY_LEAVING
                    transport.send_close(WSCloseCode.OK, b"retry later")
                    transport.disconnect()

    def _join_again(self, transport: WSTransport) -> None:
        if self.transport is transport and self.phase is Phase.QUEUED:
            transport.send(_TEXT, self.join)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.phase is Phase.PLAYING:
            # Closed by the server without match_end and without our leave: in lobby mode the bot goes back
            # through the lobby, which sends it into the same match if it goes on (restored elsewhere).
            self._close_window()
            self.tally.disconnects += 1
            self.lost_room = self.room
        elif self.phase is Phase.JOINING and not self.refused:
            self.tally.errors["closed_before_welcome"] += 1
        elif self.phase is Phase.QUEUED and not self.refused:
            self.tally.errors["closed_before_match"] += 1
        self.phase = Phase.IDLE
        self.transport = None
        self.pending.clear()
        if self.disconnected is not None and not self.disconnected.done():
            self.disconnected.set_result(None)

    # -- driven by the swarm ------------------------------------------------------------------------

    def act(self) -> None:
        """Send what the game's policy wants to send now (the arena: an input, and a fire every so often)."""
        transport = self.transport
        if transport is None:
            return
        sent = self.policy.on_tick(self._now_ms())
        if sent:
            self.inputs += 1
            self._send(transport, sent)

    def leave(self) -> None:
        """End of the run: send `leave` (to the game, or to the lobby while queued); the server answers
        with a 1000 close. Once matched, the lobby is closing by itself."""
        if self.transport is not None and self.phase in (Phase.JOINING, Phase.PLAYING, Phase.QUEUED):
            self._begin_leaving(self.transport)

    def force_close(self) -> None:
        """The server did not close in time: close with 1000 ourselves."""
        transport = self.transport
        if transport is not None:
            if self.phase is Phase.PLAYING:
                self._close_window()
            self.phase = Phase.LOBBY_LEAVING if self.phase in _LOBBY_PHASES else Phase.LEAVING
            transport.send_close(WSCloseCode.OK, b"run over")
            transport.disconnect()

    def _begin_leaving(self, transport: WSTransport) -> None:
        if self.phase is Phase.PLAYING:
            self._close_window()
        self.phase = Phase.LOBBY_LEAVING if self.phase in _LOBBY_PHASES else Phase.LEAVING
        transport.send(_TEXT, LEAVE)
        self._expect_close()

    def _expect_close(self) -> None:
        """The server closes next (after our leave, or the lobby's match_found): close ourselves if it is late."""
        disconnected = self.disconnected
        if disconnected is not None:
            disconnected.get_loop().call_later(LEAVE_TIMEOUT_S, self._leave_overdue, disconnected)

    def _leave_overdue(self, disconnected: asyncio.Future[None]) -> None:
        if disconnected is self.disconnected and not disconnected.done():
            self.force_close()

    def _close_window(self) -> None:
        self.connected_s += self.clock() - self.window_start

    # -- the bot's life over the run ----------------------------------------------------------------

    def _self_factory(self) -> WSListener:
        return self

    async def run(self, start_at: float, stop: asyncio.Event) -> None:
        """Connect at `start_at` and play, from room to room, until `stop` is set; retry with back-off.

        Without a group, each room is the one the lobby matches this bot to.
        """
        await asyncio.sleep(max(0.0, start_at - self.clock()))
        backoff = BACKOFF_MIN_S
        try:
            while not stop.is_set():
                if self.group is None:
                    url = await self._wait_in_lobby(stop)
                    if url is None:
                        backoff = await self._back_off(backoff)
                        continue
                    backoff = BACKOFF_MIN_S
                else:
                    self.generation = self.group.generation
                    self.room = self.group.room(self.generation)
                    url = f"{self.url}/game?room={self.room}"
                if not await self._session(url, Phase.CONNECTING, stop) or self.refused:
                    backoff = await self._back_off(backoff)
                else:
                    backoff = BACKOFF_MIN_S
                    await asyncio.sleep(REJOIN_PAUSE_S * self.rng.uniform(1.0, 2.0))
        finally:
            # Cancelled at the hard end of the run while still connected.
            self.force_close()

    async def _wait_in_lobby(self, stop: asyncio.Event) -> str | None:
        """Join the lobby's queue and wait for match_found: the URL (with its ticket) of the game it names,
        or None when there is none (refused, closed by the server, or the run is over)."""
        self.game_url = None
        if not await self._session(f"{self.url}/lobby", Phase.LOBBY_CONNECTING, stop) or stop.is_set():
            return None
        return self.game_url

    async def _session(self, url: str, phase: Phase, stop: asyncio.Event) -> bool:
        """One connection, from `phase` until it is closed; False when it did not open (an error is counted)."""
        self.refused = False
        self.disconnected = asyncio.get_running_loop().create_future()
        transport = await self._connect(url, phase)
        if transport is None:
            return False
        if stop.is_set():
            self.leave()
        await self.disconnected
        await self._check_dropped(transport)
        return True

    async def _back_off(self, backoff: float) -> float:
        """Wait about `backoff` seconds (jittered); the next back-off, doubled up to BACKOFF_MAX_S."""
        await asyncio.sleep(backoff * self.rng.uniform(0.5, 1.5))
        return min(BACKOFF_MAX_S, backoff * 2)

    async def _check_dropped(self, transport: WSTransport) -> None:
        """Count (and report once per process) a connection picows dropped because of an exception,
        in our own callbacks or in the server's frames."""
        try:
            await transport.wait_disconnected()
        except Exception as exc:
            self.tally.errors[f"dropped_{type(exc).__name__}"] += 1
            if not self.tally.reported_exception:
                self.tally.reported_exception = True
                log.error("bot %s: connection dropped after an exception: %r", self.spec.name, exc)

    async def _connect(self, url: str, phase: Phase) -> WSTransport | None:
        """Open a connection to `url` in `phase` (CONNECTING to a game, LOBBY_CONNECTING to the lobby);
        on failure count an error and return None."""
        self.phase = phase
        try:
            # picows bounds the handshake itself; this bounds the TCP connect too.
            async with asyncio.timeout(CONNECT_TIMEOUT_S + 1.0):
                transport, _ = await ws_connect(self._self_factory, url,
                                                extra_headers=self.headers, max_redirects=0,
                                                websocket_handshake_timeout=CONNECT_TIMEOUT_S,
                                                logger_name="tickroom-bot")
        except WSHandshakeError as exc:
            code = handshake_error_code(exc)
        except TimeoutError:
            code = "connect_timeout"
        except (OSError, WSError) as exc:
            code = f"connect_{type(exc).__name__}"
        else:
            return transport
        self.phase = Phase.IDLE
        self.tally.errors[code] += 1
        return None
