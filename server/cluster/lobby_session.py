"""One player's `/lobby` connection: `join`, then the room's changes pushed as they happen, then `match_found`
with the game URL and a seat ticket, and the close. The seating itself is the hub's (lobby/hub.py).

A session's phase is a table: connected → joining → waiting → matched, with `joining` falling back to
`connected` when Redis is unreachable (the client may send `join` again).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence

import asyncpg

from game.api import Message
from lobby.hub import LobbyHub, LobbyRefused
from lobby.outage import LobbyUnavailable
from lobby.seating import RoomView
from lobby.tickets import TicketError, lost_match_ticket
from server.cluster.postgres_recovery import MISSING_SCANS
from server.net.auth import Identity
from server.net.broadcast import send_frames, text_frame
from server.net.connection import GameConnection
from server.net.link import ClientLink, TokenBucket
from server.net.protocol import (
    PROTOCOL_VERSION,
    CloseCode,
    ErrorCode,
    Join,
    Leave,
    Ping,
    ProtocolError,
    capacity_retry_ms,
    encode,
    error_message,
    parse_lobby_message,
)
from server.ops.settings import Settings

# A player back for a match the lobby lost waits for recovery from Postgres: another node claims a missing
# node's matches once it has been missing for MISSING_SCANS dead-after times (server/cluster/postgres_recovery.py),
# found by a scan that runs once every dead-after time, plus slack.
RECOVERY_MISSING_TIMES = MISSING_SCANS + 1
RECOVERY_SLACK_S = 5.0


class LobbyPhase(enum.StrEnum):
    CONNECTED = "connected"
    JOINING = "joining"
    WAITING = "waiting"
    MATCHED = "matched"
    CLOSED = "closed"


class IllegalLobbyTransition(RuntimeError):
    def __init__(self, current: LobbyPhase, new: LobbyPhase) -> None:
        super().__init__(f"a lobby connection cannot go from {current.value} to {new.value}")
        self.current = current
        self.new = new


LOBBY_TRANSITIONS: dict[LobbyPhase, frozenset[LobbyPhase]] = {
    LobbyPhase.CONNECTED: frozenset({LobbyPhase.JOINING, LobbyPhase.CLOSED}),
    LobbyPhase.JOINING: frozenset({LobbyPhase.CONNECTED, LobbyPhase.WAITING, LobbyPhase.MATCHED,
                                   LobbyPhase.CLOSED}),
    LobbyPhase.WAITING: frozenset({LobbyPhase.CONNECTED, LobbyPhase.MATCHED, LobbyPhase.CLOSED}),
    LobbyPhase.MATCHED: frozenset({LobbyPhase.CLOSED}),
    LobbyPhase.CLOSED: frozenset(),
}


def check_lobby_transition(current: LobbyPhase, new: LobbyPhase) -> LobbyPhase:
    if new not in LOBBY_TRANSITIONS[current]:
        raise IllegalLobbyTransition(current, new)
    return new


class LobbySession:
    """Runs one lobby connection; it is the hub's `Waiter` for its player."""

    def __init__(self, hub: LobbyHub, ws: GameConnection, identity: Identity, settings: Settings,
                 logger: logging.Logger, clock: Callable[[], float],
                 on_matched: Callable[[float], None] | None = None) -> None:
        self.hub = hub
        self._on_matched = on_matched  # told each wait from `join` to `match_found`, in seconds (metrics)
        self._joined_at: float | None = None
        self.ws = ws
        self.identity = identity
        self.settings = settings
        self.log = logger
        self.phase = LobbyPhase.CONNECTED
        self.mode = ""
        self._conn_id = f"lobby-{ws.id}"
        self._loop = asyncio.get_running_loop()
        self._clock = clock
        self.link = ClientLink(ws, TokenBucket(settings.rate_per_s, settings.rate_burst, clock()), clock)
        self._joining: asyncio.Task[None] | None = None
        self._shown: tuple[str, str, int | None, tuple[str, ...]] | None = None
        self._members: dict[str, str] = {}
        self._left = False  # the client sent `leave`: give the place up at once
        self._tried = False  # a join was sent to Redis at least once
        self._capacity_refusals = 0  # `capacity` errors sent on this connection (each says to wait longer)
        self._recovering: str | None = None  # the room this connection was told `recovering` for

    # -- the Waiter interface ------------------------------------------------------------------------

    @property
    def player_id(self) -> str:
        return self.identity.player_id

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def conn_id(self) -> str:
        return self._conn_id

    @property
    def active(self) -> bool:
        return self.phase is not LobbyPhase.CLOSED

    def show(self, view: RoomView, now_ms: int) -> None:
        if self.phase is LobbyPhase.JOINING:
            self._to(LobbyPhase.WAITING)
        elif self.phase is not LobbyPhase.WAITING:
            return
        shown = (view.room_id, view.state, view.countdown_ends_ms, tuple(view.player_ids))
        if shown == self._shown:
            return
        previous_room = self._shown[0] if self._shown is not None else None
        self._shown = shown
        members = {member.player_id: member.name for member in view.players}
        frames = []  # the events and the new status go out in one write
        if previous_room == view.room_id and view.room_id:
            for player_id, name in members.items():
                if player_id not in self._members:
                    frames.append(text_frame(encode({"type": "event", "kind": "join", "id": player_id,
                                                     "name": name})))
            for player_id in self._members:
                if player_id not in members:
                    frames.append(text_frame(encode({"type": "event", "kind": "leave", "id": player_id})))
        self._members = members
        countdown = None if view.countdown_ends_ms is None else max(0, view.countdown_ends_ms - now_ms)
        frames.append(text_frame(encode({
            "type": "lobby", "status": view.state, "mode": self.mode, "room": view.room_id or None,
            "players": [member.wire() for member in view.players], "countdown_ms": countdown,
            **self._seat_counts()})))
        send_frames(self.ws, b"".join(frames))

    def countdown(self, room_id: str, remaining_ms: int) -> None:
        if self.phase is LobbyPhase.WAITING:
            self.link.send(encode({"type": "countdown", "room": room_id, "ms": remaining_ms}))

    def matched(self, view: RoomView, url: str, ticket: str) -> None:
        if self.phase not in (LobbyPhase.JOINING, LobbyPhase.WAITING):
            return
        self._to(LobbyPhase.MATCHED)
        if self._on_matched is not None and self._joined_at is not None:
            self._on_matched(self._clock() - self._joined_at)
        self.link.close(CloseCode.NORMAL, "match found", last=encode({
            "type": "match_found", "room": view.room_id, "mode": self.mode, "node": view.node,
            "url": f"{url}/game?room={view.room_id}&ticket={ticket}", "ticket": ticket,
            "players": [member.wire() for member in view.players]}))

    def dropped(self, reason: str) -> None:
        if self.phase in (LobbyPhase.JOINING, LobbyPhase.WAITING):
            self._to(LobbyPhase.CONNECTED)
            self._shown = None
            self._recovering = None
            self.link.send(error_message(ErrorCode.SEAT_LOST, reason))

    async def probe(self, timeout_s: float) -> bool:
        return await self.ws.probe(timeout_s)

    def results_saved(self, match_ids: Sequence[str]) -> None:
        if self.phase is not LobbyPhase.CLOSED:
            events = (encode({"type": "event", "kind": "result_saved", "match": match_id}) for match_id in match_ids)
            send_frames(self.ws, b"".join(text_frame(event) for event in events))

    def hold(self, room_id: str) -> None:
        if self.phase in (LobbyPhase.JOINING, LobbyPhase.WAITING):
            self._say_recovering(room_id)
            self.log.info("player %s is back for room %s, whose host stopped heart-beating: waiting for a live "
                          "host", self.player_id, room_id)

    def _seat_counts(self) -> dict[str, int]:
        """`min` and `max` of the mode's rooms, as the lobby forms them."""
        rules = self.hub.seatings[self.mode].rules
        return {"min": rules.min_players, "max": rules.max_players}

    def _say_recovering(self, room_id: str) -> None:
        if self._recovering == room_id:
            return  # said already (the wait for recovery, then the hold for a live host): once is enough
        self._recovering = room_id
        self.link.send(encode({"type": "lobby", "status": "recovering", "mode": self.mode, "room": room_id,
                               "players": [], "countdown_ms": None, **self._seat_counts()}))

    # -- the connection --------------------------------------------------------------------------------

    async def run(self) -> None:
        ws = self.ws
        try:
            ws.attach(self._on_message)
            await ws.wait_closed()
        finally:
            ws.detach()
            if self._joining is not None:
                self._joining.cancel()
            phase, self.phase = self.phase, LobbyPhase.CLOSED
            if phase is LobbyPhase.MATCHED:
                self.hub.forget(self._conn_id)  # the match released this connection in Redis already
            elif self._left and phase is not LobbyPhase.CONNECTED:
                self.hub.forget(self._conn_id)
                self.hub.submit(f"{self.player_id} leaves the lobby", self._leave)
            elif phase is not LobbyPhase.CONNECTED:
                self.hub.dropped(self)
            elif self._tried:
                # A join that timed out may have seated the player all the same: give that seat up, if this
                # connection holds it (the leave is guarded by the connection id, so it is harmless if not).
                self.hub.submit(f"{self.player_id} leaves the lobby", self._leave)
            await self.link.closed()

    async def _leave(self) -> None:
        await self.hub.leave(self)

    def _to(self, phase: LobbyPhase) -> None:
        self.phase = check_lobby_transition(self.phase, phase)

    def _on_message(self, data: bytes | bytearray | memoryview, binary: bool) -> None:
        if self.link.closing:
            return
        try:
            self.link.admit(binary)
            self._handle(parse_lobby_message(data))
        except ProtocolError as error:
            self.link.refuse(error)
        except Exception:
            self.log.exception("lobby session of player %s failed on a message", self.player_id)
            self.link.refuse(ProtocolError(ErrorCode.INTERNAL_ERROR, "the server failed to handle a message",
                                       CloseCode.INTERNAL))

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Ping):
            self.link.send(encode({"type": "pong", "t": msg.t, "st": self.hub.wall_ms()}))
        elif isinstance(msg, Join):
            if self.phase is not LobbyPhase.CONNECTED:
                raise ProtocolError(ErrorCode.ALREADY_JOINED, "join was already received on this connection")
            if msg.v != PROTOCOL_VERSION:
                raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {msg.v} is not supported; "
                                    f"this server speaks {PROTOCOL_VERSION}", CloseCode.POLICY)
            if msg.mode not in self.hub.seatings:
                raise ProtocolError(ErrorCode.UNKNOWN_MODE, f"unknown mode {msg.mode!r}; this lobby has "
                                    f"{sorted(self.hub.seatings)}")
            lost = self._lost_room(msg.ticket, msg.mode) if msg.ticket is not None else None
            self.mode = msg.mode
            self._tried = True
            self._to(LobbyPhase.JOINING)
            self._joined_at = self._clock()
            self._joining = self._loop.create_task(self._join(lost))
        elif isinstance(msg, Leave):
            self._left = True
            self.link.close(CloseCode.NORMAL, "left")

    def _lost_room(self, ticket: str, mode: str) -> str | None:
        """The room of the match this player lost (the ticket of its `match_found`), if recent enough to matter."""
        settings = self.settings
        try:
            seat = lost_match_ticket(settings.jwt_secret, ticket, player_id=self.player_id,
                                     max_age_s=settings.join_window_s + settings.match_time_s
                                     + settings.reconnect_grace_s + RECOVERY_SLACK_S)
        except TicketError as error:
            raise ProtocolError(ErrorCode(error.code), error.message) from None
        return None if seat is None or seat.mode != mode else seat.room_id  # another mode's match: no wait

    async def _wait_for_recovery(self, room_id: str) -> None:
        """The lobby lost both the player and the room they come back to (Redis lost everything): wait, saying
        `recovering`, until recovery from Postgres places them back in it (then `join` finds them there), or
        the time recovery takes has passed (then they join afresh)."""
        settings = self.settings
        deadline = self._clock() + RECOVERY_MISSING_TIMES * settings.node_dead_after_s + RECOVERY_SLACK_S
        told = False
        while self.phase is LobbyPhase.JOINING and self._clock() < deadline:
            if not await self.hub.lost_to_recovery(self.mode, self.player_id, room_id):
                return
            if not told and await self._ended_for_good(room_id):
                # Its match is over and its result durable (its guards in Redis went with it): nothing will come
                # back. The join goes on as a new one, and hands over the results saved for the player.
                self.log.info("player %s is back for room %s, whose match is over: joining afresh", self.player_id,
                              room_id)
                return
            if not told:
                told = True
                self._say_recovering(room_id)
                self.log.info("player %s is back for room %s, which the lobby lost: waiting for its recovery",
                              self.player_id, room_id)
            await asyncio.sleep(settings.node_heartbeat_s)

    async def _ended_for_good(self, room_id: str) -> bool:
        """Whether Postgres has the room's match as over (False when it cannot say: then recovery is waited for)."""
        room_ended = self.hub.room_ended
        if room_ended is None:
            return False
        try:
            return await room_ended(room_id)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            self.log.warning("could not ask Postgres whether room %s is over (%s); waiting for its recovery",
                             room_id, error)
            return False

    async def _join(self, lost_room: str | None = None) -> None:
        try:
            if lost_room is not None:
                await self._wait_for_recovery(lost_room)
                if self.phase is not LobbyPhase.JOINING:
                    return
            await self.hub.join(self)
        except LobbyUnavailable:
            if self.phase is LobbyPhase.JOINING:
                self._to(LobbyPhase.CONNECTED)
            self.link.refuse(ProtocolError(ErrorCode.LOBBY_UNAVAILABLE,
                                       "matchmaking is unavailable right now; send join again in a few seconds"))
        except LobbyRefused as refusal:
            if not refusal.close and self.phase is LobbyPhase.JOINING:
                self._to(LobbyPhase.CONNECTED)
            retry_ms = None
            if refusal.retry:
                self._capacity_refusals += 1
                retry_ms = capacity_retry_ms(self._capacity_refusals)
            self.link.refuse(ProtocolError(ErrorCode(refusal.code), refusal.message,
                                           CloseCode.POLICY if refusal.close else None, retry_ms=retry_ms))
        except Exception:
            self.log.exception("lobby join of player %s failed", self.player_id)
            self.link.refuse(ProtocolError(ErrorCode.INTERNAL_ERROR, "the server failed to seat you",
                                       CloseCode.INTERNAL))
