"""One room of any game: its seats, its phase, its clock, and the step that moves it on.

`Room.tick` is synchronous: advance the phase and the game, encode the state once for everyone, and write it
with the events to every player. Messages reach the game as they arrive (`Room.handle`). The runner
(`server/rooms/runner.py`) owns the timing: every tick for a fixed-tick game, on demand for an event-driven one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.protocol import State

from game.api import Event, Forming, Game, Message, Refused
from server.net.auth import Identity
from server.net.broadcast import send_frames, text_frame
from server.net.connection import GameConnection
from server.net.protocol import PROTOCOL_VERSION, CloseCode, ErrorCode, ProtocolError, encode, error_message
from server.net.wire import Encoding, StateFrames, WireView
from server.ops.settings import Settings
from server.rooms.catalog import HostedGame
from server.rooms.lifecycle import RoomPhase, check_transition
from server.rooms.tickstats import TickStats

SNAPSHOT_VERSION = 2  # the layout of `Room.snapshot` (2: any game; its room clock and event count)
# Takes a write for Postgres (persistence/writebehind.py); the future resolves once it is durable.
Recorder = Callable[[dict[str, Any]], "asyncio.Future[None]"]
# Adds points to a player's total on the leaderboard: (mode, match id, player id, points).
Scorer = Callable[[str, str, str, int], None]


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def _nothing() -> None:
    return None


MAX_SPECTATORS = 64  # per room
# A finished event-driven room whose result is not durable yet looks again this often (the runner's limit).
RESULT_POLL_S = 0.5
# The keys of a ranking line that are the host's; the rest are the game's figures.
_RANKING_KEYS = frozenset({"p", "id", "name", "rank", "score"})


COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c")
_OPEN = State.OPEN


class RoomFailed(RuntimeError):
    """The room's game raised between ticks (in a join, a leave or a phase change)."""


@dataclass(slots=True, eq=False)
class Seat:
    """A player's place in a room; kept after they leave a running match, for the ranking and a rejoin."""

    pid: int
    player_id: str
    name: str
    color: str
    conn: GameConnection | None = None
    slow_since: float | None = None
    roster: dict[str, object] = field(default_factory=dict)
    joined_ms: int = 0  # wall clock, for the match's record in Postgres
    left_ms: int | None = None
    view: WireView = field(default_factory=WireView)  # the state encoding asked for in `hello`


class Room:
    """A room. With a `roster` it is a lobby match: only those players may join, and the match starts as soon
    as all of them are in, or when the join window ends with at least `min_players` of them (else it is
    cancelled). Without one it is a development room that anyone may join by id, with its own countdown."""

    def __init__(self, room_id: str, hosted: HostedGame, game: Game, settings: Settings, now: float,
                 logger: logging.Logger, roster: frozenset[str] | None = None, *, node_id: str = "",
                 recorder: Recorder | None = None, scorer: Scorer | None = None,
                 wall_ms: Callable[[], int] = wall_clock_ms, match_id: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.room_id = room_id
        self._clock = clock  # monotonic seconds, as `now` everywhere here
        self.hosted = hosted
        self.mode = hosted.mode
        self.seats_rule = hosted.seats
        self.event_driven = hosted.event_driven
        # The room clock (game/api.py): ms since the room was created, carried over by a restore.
        self.room_ms = 0
        self._clock_origin = now  # event-driven: the monotonic time at which the room clock read 0
        self._interval_ms = hosted.tick_ms or 0.0
        self._recorded_events = 0  # events the game asked to record (`Event.record`), numbered from 1
        self._epoch = 0  # how many times this match was restored: its recorded events carry it
        self._last_state: StateFrames | None = None  # event-driven: the latest state, for whoever joins next
        self._sent: dict[str, Any] | None = None  # the last state message sent: what a delta applies to
        self._need_state: list[Seat] = []  # event-driven: joined since the last step, not sent a state yet
        self.poke: Callable[[], None] = _nothing  # the runner's: step this (event-driven) room soon
        # The match's record in Postgres (persistence/writebehind.py): opened now, started, then its result.
        self.match_id = match_id or str(uuid.uuid4())
        self.restored_from: int | None = None  # the wall ms of the snapshot this room was restored from
        self.node_id = node_id
        self._recorder = recorder
        self._scorer = scorer
        self._scored: dict[int, int] = {}  # by pid: the score the leaderboard has been told of
        self._wall_ms = wall_ms
        self.created_ms = wall_ms()
        self.started_ms: int | None = None
        self.result_saved = recorder is None  # with nothing to record, nothing to wait for
        self.result_recorded = False  # a result (or a cancellation) went to the recorder
        self.roster: set[str] | None = set(roster) if roster is not None else None
        self.join_deadline: float | None = now + settings.join_window_s if roster is not None else None
        self.cancelled = False
        self.evicted = False  # the lobby gave this room's players back while its node stalled
        self.released = False  # the lobby has been told the room is over
        # Told which players had dropped out of the room before its match ended and were still away when its
        # result became durable (the lobby tells them later). Those there at `match_end` had the result with it,
        # and those who left by choice (`leave`) walked out of it.
        self.saved_while_away: Callable[[Room, list[str]], None] | None = None
        self._away_at_end: list[str] = []
        self._quit: set[str] = set()  # players who left the match by choice (`leave`)
        self._end_message: bytes | None = None  # the match's `match_end`, once it ended
        self._empty_since: float | None = None  # when the last connected player left
        self.game = game
        self.settings = settings
        self.log = logger
        self.phase = RoomPhase.WAITING
        self.created_at = now
        self.countdown_ends: float | None = None
        self.finished_at: float | None = None
        self.end_reason: str | None = None
        self.tick_no = 0
        self.stats = TickStats(now)
        self._seats: dict[str, Seat] = {}  # by player id, in join order
        self._connected: list[Seat] = []
        self._spectators: dict[GameConnection, WireView] = {}
        self._next_pid = 1
        self._pids: dict[str, int] = {}
        self.failed: str | None = None
        self._frames: list[bytes] = []  # events for everyone since the last flush
        # Once a step has an event for one player only: every event of the step in order, with its player (None:
        # everyone), so that each player gets theirs in the order the game made them.
        self._ordered: list[tuple[int | None, bytes]] | None = None
        if match_id is None:
            self._record("match_opened")

    @classmethod
    def restored(cls, document: dict[str, Any], hosted: HostedGame, game: Game, settings: Settings, now: float,
                 logger: logging.Logger,
                 *, node_id: str = "", recorder: Recorder | None = None, scorer: Scorer | None = None,
                 wall_ms: Callable[[], int] = wall_clock_ms, told: dict[str, int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> Room:
        """The running match a snapshot (`Room.snapshot`) describes, on a game just built: the same match id,
        seats (in join order), roster, clock, positions and scores; nobody is connected yet, and the players
        have the reconnect grace to come back. Raises ValueError for a snapshot it cannot read."""
        if document.get("v") not in (1, SNAPSHOT_VERSION):  # 1: an arena room of an older node (no room clock)
            raise ValueError(f"room snapshot version {document.get('v')!r} is not {SNAPSHOT_VERSION}")
        roster = document.get("roster")
        if document.get("mode") != hosted.mode:
            raise ValueError(f"room snapshot of mode {document.get('mode')!r} is not {hosted.mode!r}")
        room = cls(str(document["room"]), hosted, game, settings, now, logger,
                   roster=frozenset(roster) if roster is not None else None, node_id=node_id, recorder=recorder,
                   scorer=scorer, wall_ms=wall_ms, match_id=str(document["match"]), clock=clock)
        room.created_ms = int(document["created_ms"])
        room.started_ms = int(document["started_ms"]) if document.get("started_ms") is not None else None
        game.restore(document["game"])
        for entry in document["seats"]:
            pid = int(entry["pid"])
            seat = Seat(pid, str(entry["id"]), str(entry["name"]), COLORS[(pid - 1) % len(COLORS)],
                        joined_ms=int(entry.get("joined_ms", 0)), left_ms=int(document.get("taken_ms", 0)))
            seat.roster = {"p": pid, "id": seat.player_id, "name": seat.name, "color": seat.color}
            room._seats[seat.player_id] = seat
            room._pids[seat.player_id] = pid
            room._next_pid = max(room._next_pid, pid + 1)
        room.room_ms = int(document.get("room_ms", 0))
        room._clock_origin = now - room.room_ms / 1000
        room._recorded_events = int(document.get("events", 0))
        room._epoch = int(document.get("epoch", 0)) + 1
        # What the leaderboard was told of this match (by the previous host, possibly after this snapshot):
        # from here on it is told the difference, so its total ends at the match's final scores.
        if told is None:
            room._scored = {entry.pid: entry.score for entry in game.standings()}
        else:
            room._scored = {pid: told.get(player_id, 0) for player_id, pid in room._pids.items()}
        if room.roster is not None:  # seats given up before the snapshot stay given up
            for seat in room._seats.values():
                if seat.player_id not in room.roster:
                    game.release(seat.pid, room.room_ms)
        room.tick_no = int(document.get("tick", 0))
        room.phase = RoomPhase.RUNNING
        room.join_deadline = None
        room._empty_since = now
        room.restored_from = int(document.get("taken_ms", 0))
        room._record("match_moved")  # Postgres names this node as the match's host from now on
        # Events a crashed host recorded past this snapshot are of a timeline that did not go on.
        room._record("events_rewound", after=room._recorded_events, epoch=room._epoch)
        return room

    # -- seats -------------------------------------------------------------------------------------

    @property
    def player_count(self) -> int:
        return len(self._connected)

    def connections(self) -> list[GameConnection]:
        """Every connection of the room: its players', then its spectators'."""
        return [seat.conn for seat in self._connected if seat.conn is not None] + list(self._spectators)

    # -- spectators ------------------------------------------------------------------------------------

    def watch(self, conn: GameConnection, now: float, encoding: Encoding = Encoding.JSON) -> None:
        """A spectator: it gets the welcome, then what everyone in the room gets (never what one player alone
        gets), and sends nothing; it holds no seat and keeps no room alive."""
        if self.phase in (RoomPhase.FINISHED, RoomPhase.CLOSED):
            raise ProtocolError(ErrorCode.ROOM_CLOSED, f"room {self.room_id} is over", CloseCode.POLICY)
        if len(self._spectators) >= MAX_SPECTATORS:
            raise ProtocolError(ErrorCode.ROOM_FULL, f"room {self.room_id} has {MAX_SPECTATORS} spectators already",
                                CloseCode.POLICY)
        welcome = encode({
            "type": "welcome", "v": PROTOCOL_VERSION, "room": self.room_id, "mode": self.mode, "you": None,
            "spectator": True, "state": self.phase.value, "tick_ms": self.hosted.tick_ms,
            "countdown_ms": self._countdown_ms(now),
            "players": [s.roster for s in self._seats.values() if s.conn is not None]})
        view = WireView(encoding)
        last = self._last_state if self.event_driven else None
        if send_frames(conn, text_frame(welcome) + (last.for_view(view) if last is not None else b"")):
            view.synced = last is not None
        self._spectators[conn] = view

    def unwatch(self, conn: GameConnection) -> None:
        self._spectators.pop(conn, None)

    def join(self, identity: Identity, conn: GameConnection, now: float, encoding: Encoding = Encoding.JSON) -> Seat:
        """Seat a player (or take a returning one back); raise `ProtocolError` when refused."""
        if self.phase in (RoomPhase.FINISHED, RoomPhase.CLOSED):
            raise ProtocolError(ErrorCode.ROOM_CLOSED, f"room {self.room_id} is over", CloseCode.POLICY)
        if self.roster is not None and identity.player_id not in self.roster:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you hold no seat in room {self.room_id}", CloseCode.POLICY)
        seat = self._seats.get(identity.player_id)
        if seat is not None and seat.conn is not None:
            raise ProtocolError(ErrorCode.ALREADY_CONNECTED, "you are already in this room", CloseCode.POLICY)
        if seat is None:
            capacity = self.seats_rule.capacity
            if len(self._connected) >= capacity or (self.roster is None and len(self._seats) >= capacity):
                raise ProtocolError(ErrorCode.ROOM_FULL, f"room {self.room_id} is full", CloseCode.POLICY)
            # The lobby may give a running match's free seat to a newcomer (backfill); nobody else gets in,
            # unless the game takes newcomers while it runs (a line, a relay room).
            if self.phase is RoomPhase.RUNNING and self.roster is None and not self.seats_rule.backfill:
                raise ProtocolError(ErrorCode.ROOM_IN_PROGRESS,
                                    f"room {self.room_id} is playing a match you are not in", CloseCode.POLICY)
            # A player who leaves a waiting room and comes back keeps their pid, so the game's table
            # holds each player once however often they come and go.
            pid = self._pids.get(identity.player_id)
            if pid is None:
                pid = self._pids[identity.player_id] = self._next_pid
                self._next_pid += 1
            seat = Seat(pid, identity.player_id, identity.name, COLORS[(pid - 1) % len(COLORS)],
                        joined_ms=self._wall_ms())
            seat.roster = {"p": pid, "id": seat.player_id, "name": seat.name, "color": seat.color}
            self._seats[identity.player_id] = seat
        if self.event_driven:
            self._advance_clock()
        try:
            self.game.join(seat.pid, seat.name, self.room_ms)
        except Exception:
            if self.phase is not RoomPhase.RUNNING:
                del self._seats[identity.player_id]
            self._fail("add_player")
            raise ProtocolError(ErrorCode.ROOM_CRASHED, "the room's game failed; the room is closed",
                                CloseCode.INTERNAL) from None
        seat.conn = conn
        seat.slow_since = None
        seat.left_ms = None
        seat.view = WireView(encoding)  # a keyframe first
        self._connected.append(seat)
        self._post({"type": "event", "kind": "join", **seat.roster})
        self._advance_phase(now)
        try:
            welcome = text_frame(self._welcome(seat, now))
        except Exception:  # the game's welcome failed: the player is not seated, the room closes
            seat.conn = None
            self._connected.remove(seat)
            self._fail("welcome")
            raise ProtocolError(ErrorCode.ROOM_CRASHED, "the room's game failed; the room is closed",
                                CloseCode.INTERNAL) from None
        send_frames(conn, welcome)
        if self.event_driven:
            # A game on events sends its state only when it changes: the newcomer gets it at the step this join
            # causes, the new state if the join changed it, else the latest one.
            self._need_state.append(seat)
            self.poke()
        return seat

    def disconnect(self, seat: Seat, now: float) -> None:
        """The player's connection is gone (leave, drop or kick)."""
        if seat.conn is None:
            return
        seat.conn = None
        seat.left_ms = self._wall_ms()
        self._connected.remove(seat)
        if not self._connected:
            self._empty_since = now
        self.poke()
        if self.event_driven:
            self._advance_clock()
        if self.phase is RoomPhase.CLOSED:
            return
        if self.phase in (RoomPhase.WAITING, RoomPhase.COUNTDOWN):
            # Before the match a seat is only a place in the queue: give it up.
            del self._seats[seat.player_id]
        self._post({"type": "event", "kind": "leave", "p": seat.pid})
        try:
            self.game.away(seat.pid, self.room_ms)
            if self.roster is None and self.phase is RoomPhase.RUNNING:
                # No lobby, no reconnect grace: a direct-join player who drops gives the seat up.
                self.game.release(seat.pid, self.room_ms)
        except Exception:
            self._fail("remove_player")
            return
        self._advance_phase(now)

    def _fail(self, where: str) -> None:
        """The game raised outside the tick: the runner closes the room at its next tick."""
        self.log.exception("room %s: the game failed in %s", self.room_id, where)
        if self.failed is None:
            self.failed = where
        self.poke()  # a room on events closes now, not at its next message

    def _welcome(self, seat: Seat, now: float) -> bytes:
        return encode({
            "type": "welcome", "v": PROTOCOL_VERSION, "room": self.room_id, "mode": self.mode,
            "you": seat.pid, "id": seat.player_id, "state": self.phase.value,
            "tick_ms": self.hosted.tick_ms, "countdown_ms": self._countdown_ms(now),
            "players": [s.roster for s in self._seats.values() if s.conn is not None],
            **self.game.welcome(seat.pid),
        })

    def admit(self, player_ids: frozenset[str]) -> None:
        """The lobby seated more players in this room (backfill): let them in too."""
        if self.roster is not None:
            self.roster |= player_ids
            self.poke()

    def ended_for(self, player_id: str) -> bytes | None:
        """The `match_end` of this room's match for a player who held a seat in it and arrives after it ended (the
        lobby sent them here just before it heard of the end); None for anyone else, or a match not over."""
        if self._end_message is None or player_id not in self._seats:
            return None
        return self._end_message

    def walked_out(self, player_id: str) -> None:
        """The player left by choice (`leave`): not told later of the result of the match they walked out of."""
        self._quit.add(player_id)

    def dismiss(self, player_id: str, *, quit: bool = False) -> None:
        """The player gave their lobby seat up (left, or never came back in time): they may not come back. In a
        running match the game hears it too (`release_seat`): a match in which one player still holds a seat
        ends with that player first, also a restored one. `quit`: they left by choice (`leave`), and are not
        told later of the result of the match they walked out of."""
        if quit:
            self.walked_out(player_id)
        if self.roster is not None:
            self.roster.discard(player_id)
        seat = self._seats.get(player_id)
        if seat is not None and seat.conn is None and self.phase is RoomPhase.RUNNING and self.failed is None:
            if self.event_driven:
                self._advance_clock()
            try:
                self.game.release(seat.pid, self.room_ms)
            except Exception:
                self._fail("release")
            self.poke()

    def seats(self) -> list[Seat]:
        """Every seat, in join order (the admin view)."""
        return list(self._seats.values())

    def is_connected(self, player_id: str) -> bool:
        seat = self._seats.get(player_id)
        return seat is not None and seat.conn is not None

    # -- messages (handled as they arrive, between ticks) ---------------------------------------------

    def handle(self, seat: Seat, message: Message) -> None:
        """A game message from a seated player: to the game at once (a fixed-tick game keeps, say, the latest
        move for its next step). A refusal by the game's rules goes back to that player only. Messages that
        cross the end of the match are dropped quietly: the client could not have known."""
        phase = self.phase
        if phase is RoomPhase.FINISHED or phase is RoomPhase.CLOSED or self.failed is not None:
            return
        if self.event_driven:
            self._advance_clock()
        try:
            self.game.handle(seat.pid, message, self.room_ms)
        except Refused as refusal:
            if seat.conn is not None:
                send_frames(seat.conn, text_frame(encode({"type": "error", "code": refusal.code,
                                                          "message": refusal.message})))
            return
        except Exception:
            self._fail("handle")
            self.poke()
            return
        if self.event_driven:
            self.poke()

    def post_chat(self, pid: int, text: str) -> None:
        self._post({"type": "event", "kind": "chat", "p": pid, "text": text})
        self.poke()

    def _post(self, event: dict[str, object]) -> None:
        frame = text_frame(encode(event))
        self._frames.append(frame)
        if self._ordered is not None:
            self._ordered.append((None, frame))

    # -- phase -------------------------------------------------------------------------------------

    def _set_phase(self, phase: RoomPhase, now: float) -> None:
        self.phase = check_transition(self.phase, phase)
        if phase is not RoomPhase.CLOSED:
            self._post({"type": "event", "kind": "phase", "state": phase.value,
                        "countdown_ms": self._countdown_ms(now)})

    def _countdown_ms(self, now: float) -> int | None:
        if self.phase is not RoomPhase.COUNTDOWN or self.countdown_ends is None:
            return None
        return max(0, round((self.countdown_ends - now) * 1000))

    def _advance_phase(self, now: float) -> None:
        if self.failed is not None:
            return
        try:
            self._next_phase(now)
        except Exception:
            self._fail("a phase change")

    def _next_phase(self, now: float) -> None:
        players = len(self._connected)
        seats = self.seats_rule
        forming = self.hosted.definition.forming
        if self.phase is RoomPhase.WAITING and self.roster is not None:
            # Everyone the lobby matched is in (and they are enough: a player who left shrinks the roster).
            if self.roster <= {seat.player_id for seat in self._connected} and players >= seats.min:
                self._start(now)
            elif self.join_deadline is not None and now >= self.join_deadline:
                if players >= seats.min:
                    self._start(now)
                else:
                    self.cancelled = True
                    self.record_unfinished("cancelled")
        elif self.phase is RoomPhase.WAITING:
            if players >= seats.max or (forming is Forming.AT_ONCE and players >= seats.min):
                self._start(now)
            elif players >= seats.min and forming is Forming.COUNTDOWN:
                self.countdown_ends = now + self.settings.countdown_s
                self._set_phase(RoomPhase.COUNTDOWN, now)
        elif self.phase is RoomPhase.COUNTDOWN:
            if players < seats.min:
                self.countdown_ends = None
                self._set_phase(RoomPhase.WAITING, now)
            elif players >= seats.max or (self.countdown_ends is not None and now >= self.countdown_ends):
                self._start(now)
        elif self.phase is RoomPhase.RUNNING:
            reason = self.game.end_reason
            if reason is not None:
                self._finish(reason, now)

    def _start(self, now: float) -> None:
        self.countdown_ends = None
        self.game.start(self.room_ms)
        self._set_phase(RoomPhase.RUNNING, now)
        self.started_ms = self._wall_ms()
        self._record("match_started", started_ms=self.started_ms)
        if self._recorder is not None:
            # Positions from the first tick on: Postgres alone can restore the match from then on.
            self._record_positions(self.game.snapshot(), self.started_ms)

    def _finish(self, reason: str, now: float) -> None:
        self.end_reason = reason
        self.finished_at = now
        self._set_phase(RoomPhase.FINISHED, now)
        self._away_at_end = [seat.player_id for seat in self._seats.values() if seat.conn is None]
        seats_by_pid = {seat.pid: seat for seat in self._seats.values()}
        ranking: list[dict[str, Any]] = []
        for entry in self.game.standings():
            seat = seats_by_pid.get(entry.pid)
            if seat is None:
                continue
            ranking.append({"p": entry.pid, "id": seat.player_id, "name": seat.name, "rank": entry.rank,
                            "score": entry.score, **entry.figures})
        end = {"type": "match_end", "reason": reason, "duration_ms": self.game.clock_ms, "ranking": ranking,
               "match": self.match_id}
        self._post(end)
        self._end_message = encode(end)
        self.log.info("room %s finished (%s) after %d ms", self.room_id, reason, self.game.clock_ms)
        self._score(final=True)
        lines = {str(line["id"]): line for line in ranking}
        self.result_recorded = True
        durable = self._record("match_result", started_ms=self.started_ms, ended_ms=self._wall_ms(), reason=reason,
                               players=self._result_lines(lines))
        if durable is not None:
            durable.add_done_callback(self._result_durable)

    def record_unfinished(self, reason: str) -> None:
        """The room closes without a result (cancelled, abandoned, crashed): its match is recorded as cancelled,
        so that no match row stays live for ever. Not for a room that closes because its match goes on
        elsewhere (shutdown, eviction): that node records its end."""
        if self.result_recorded:
            return
        self.result_recorded = True
        self._record("match_result", started_ms=self.started_ms, ended_ms=self._wall_ms(), reason=reason,
                     cancelled=True, players=self._result_lines({}))

    def _score(self, *, final: bool = False) -> None:
        """Tell the leaderboard the points each player made since the last time (at each kill, and at the end).
        At the end every ranked player is told, 0 points too: the board lists each player of a finished match,
        as its rebuild from Postgres (the totals of their result lines) does."""
        if self._scorer is None:
            return
        seats = {seat.pid: seat for seat in self._seats.values()}
        for entry in self.game.standings():
            points = entry.score - self._scored.get(entry.pid, 0)
            seat = seats.get(entry.pid)
            if (points or final) and seat is not None:
                self._scored[entry.pid] = entry.score
                try:
                    self._scorer(self.mode, self.match_id, seat.player_id, points)
                except Exception:
                    self.log.exception("room %s: the leaderboard refused points", self.room_id)

    def _result_lines(self, ranking: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Every player who took a seat, in join order, with their line of the ranking (none: left before
        the match began)."""
        lines = []
        for order, seat in enumerate(self._seats.values(), start=1):
            line: dict[str, Any] = {"id": seat.player_id, "name": seat.name, "order": order,
                                    "joined_ms": seat.joined_ms, "left_ms": seat.left_ms}
            ranked = ranking.get(seat.player_id)
            if ranked is not None:
                figures = {key: value for key, value in ranked.items() if key not in _RANKING_KEYS}
                line.update(rank=ranked["rank"], score=ranked["score"], figures=figures)
            lines.append(line)
        return lines

    def _result_durable(self, durable: asyncio.Future[None]) -> None:
        if durable.cancelled() or durable.exception() is not None:
            return
        self.result_saved = True
        self._post({"type": "event", "kind": "result_saved", "match": self.match_id})
        self.poke()
        # (A `leave` that ends the match, its last player's, is dismissed only after the step that ended it.)
        away = [player_id for player_id in self._away_at_end
                if player_id not in self._quit and not self.is_connected(player_id)]
        if away and self.saved_while_away is not None:
            try:
                self.saved_while_away(self, away)
            except Exception:
                self.log.exception("room %s: telling the lobby of a saved result failed", self.room_id)

    def _record(self, op: str, **fields: Any) -> asyncio.Future[None] | None:
        if self._recorder is None:
            return None
        write = {"op": op, "match": self.match_id, "room": self.room_id, "mode": self.mode, "node": self.node_id,
                 "created_ms": self.created_ms, **fields}
        try:
            return self._recorder(write)
        except Exception:  # the match goes on; its record is what is lost, and the log says so
            self.log.exception("room %s: recording %s failed", self.room_id, op)
            return None

    def abandoned(self, now: float) -> bool:
        """Nobody is connected in a phase where nobody can come back to an unfinished match. The players of a
        lobby match may come back: before it starts the join window decides, once it runs the room waits
        for the reconnect grace after its last player dropped."""
        if self._connected or self.phase is RoomPhase.FINISHED:
            return False
        if self.roster is None:
            return True
        if self.phase is RoomPhase.WAITING:
            return False
        return self._empty_since is not None and now - self._empty_since >= self.settings.reconnect_grace_s

    def close(self) -> None:
        if self.phase is not RoomPhase.CLOSED:
            self._set_phase(RoomPhase.CLOSED, 0.0)

    # -- the tick ----------------------------------------------------------------------------------

    def _advance_clock(self) -> None:
        """Event-driven: the room clock follows monotonic time (a fixed-tick room's moves by ticks)."""
        room_ms = int((self._clock() - self._clock_origin) * 1000)
        if room_ms > self.room_ms:
            self.room_ms = room_ms

    def next_wake(self) -> float | None:
        """Event-driven: the monotonic time at which this room must be stepped next, None if only a message
        or a change (a poke) can move it: the game's own timer, the countdown, the join window, the end of an
        empty room's grace, a finished room's linger."""
        wakes: list[float] = []
        phase = self.phase
        if phase is RoomPhase.COUNTDOWN and self.countdown_ends is not None:
            wakes.append(self.countdown_ends)
        elif phase is RoomPhase.WAITING and self.join_deadline is not None:
            wakes.append(self.join_deadline)
        elif phase is RoomPhase.RUNNING and self.failed is None:
            game_ms = self.game.next_wake_ms()
            if game_ms is not None:
                wakes.append(self._clock_origin + game_ms / 1000)
        if phase is RoomPhase.FINISHED and self.finished_at is not None:
            linger = self.finished_at + self.settings.end_linger_s
            wakes.append(linger if self.result_saved else max(linger, self._clock() + RESULT_POLL_S))
        if (phase is RoomPhase.RUNNING and not self._connected and self._empty_since is not None
                and self.roster is not None):
            wakes.append(self._empty_since + self.settings.reconnect_grace_s)
        return min(wakes) if wakes else None

    def tick(self, now: float) -> None:
        if self.failed is not None:
            raise RoomFailed(f"the game failed in {self.failed}")
        game = self.game
        self.tick_no += 1
        self.stats.ticks += 1
        if self.event_driven:
            self._advance_clock()
        else:
            self.room_ms = round(self.tick_no * self._interval_ms)
        phase = self.phase
        if phase is RoomPhase.FINISHED or phase is RoomPhase.CLOSED:
            self._flush(now)
            return
        if phase is RoomPhase.COUNTDOWN or (phase is RoomPhase.WAITING and self.roster is not None):
            self._advance_phase(now)
        game.advance(self.room_ms)
        events = game.drain_events()
        if events:
            self._take_events(events)
        if self.phase is RoomPhase.RUNNING and game.end_reason is not None:
            self._finish(game.end_reason, now)
        parts = game.state()
        if parts is None:
            self._flush(now)
            if self._need_state:
                last = self._last_state
                for seat in self._need_state:
                    if seat.conn is not None and last is not None and send_frames(seat.conn, last.for_view(seat.view)):
                        seat.view.synced = True
                self._need_state.clear()
            return
        self._need_state.clear()
        if self.event_driven:
            message = {"type": "state", "tick": self.tick_no, "t": game.clock_ms, "now": self.room_ms, **parts}
        else:
            message = {"type": "state", "tick": self.tick_no, "t": game.clock_ms, **parts}
        frames = StateFrames(message, self._sent)
        self._sent = message
        if self.event_driven:
            self._last_state = frames
        self.stats.encodes += 1
        self._flush(now, frames)

    def _take_events(self, events: list[Event]) -> None:
        """Frames for this step's events (each encoded once), the leaderboard told of points scored, and the
        events to keep in Postgres written."""
        frames = self._frames
        for event in events:
            frame = text_frame(encode({"type": "event", **event.body}))
            if event.to is None:
                frames.append(frame)
                if self._ordered is not None:
                    self._ordered.append((None, frame))
            else:
                if self._ordered is None:
                    self._ordered = [(None, common) for common in frames]
                self._ordered.append((event.to, frame))
            if event.record:
                self._recorded_events += 1
                self._record("match_event", seq=self._recorded_events, epoch=self._epoch, body=event.body)
        self._score()

    def _flush(self, now: float, frames: StateFrames | None = None) -> None:
        """Send this tick's events and state as one write per connection.

        A client with too many unsent bytes gets the events only (they are small and rare, and a
        client that catches up must not have missed a join or the end of the match); after
        `slow_client_timeout_s` of that it is dropped.
        """
        events = self._frames
        ordered = self._ordered
        if ordered is not None:
            self._ordered = None
        if not events and frames is None and not ordered:
            return
        event_data = events[0] if len(events) == 1 else b"".join(events)
        messages = len(events) + (1 if frames is not None else 0)
        events.clear()
        limit = self.settings.slow_client_bytes
        stats = self.stats
        for seat in self._connected:
            conn = seat.conn
            if conn is None or conn.protocol.state is not _OPEN:
                continue
            transport = conn.transport
            own_events = event_data
            if ordered is not None:  # this step has events for single players: each gets the ones that are theirs
                pid = seat.pid
                own_events = b"".join(frame for to, frame in ordered if to is None or to == pid)
            if transport.get_write_buffer_size() > limit:
                self.stats.skipped_sends += 1
                if frames is not None:
                    seat.view.synced = False  # it misses this state: a keyframe when it reads again
                if seat.slow_since is None:
                    seat.slow_since = now
                elif now - seat.slow_since > self.settings.slow_client_timeout_s:
                    self.log.warning("room %s: dropping player %s, too slow to read", self.room_id, seat.player_id)
                    transport.abort()
                    continue
                if own_events:
                    transport.write(own_events)
                continue
            seat.slow_since = None
            if frames is not None:
                view = seat.view
                state = frames.for_view(view)
                view.synced = True
                own_data = own_events + state if own_events else state
            else:
                own_data = own_events
            transport.write(own_data)
            stats.sent_messages += messages
            stats.sent_bytes += len(own_data)
        if self._spectators:
            self._flush_spectators(event_data, frames)

    def _flush_spectators(self, event_data: bytes, frames: StateFrames | None) -> None:
        """The room's broadcast to its spectators (a slow one gets the events only)."""
        limit = self.settings.slow_client_bytes
        for conn, view in self._spectators.items():
            if conn.protocol.state is not _OPEN:
                continue
            transport = conn.transport
            if transport.get_write_buffer_size() > limit:
                if event_data:
                    transport.write(event_data)
                if frames is not None:
                    view.synced = False
                continue
            if frames is None:
                transport.write(event_data)
                continue
            state = frames.for_view(view)
            view.synced = True
            transport.write(event_data + state if event_data else state)

    def snapshot(self, wall_ms: int, *, record_positions: bool = False) -> bytes | None:
        """The running match as JSON for `room:ID:snapshot`: the seats in join order and the game's own
        snapshot (match clock, every player's state); None when the room is not running. With
        `record_positions`, the same players' state also goes to Postgres (less often than snapshots): what
        restores the room when Redis has lost its snapshot."""
        if self.phase is not RoomPhase.RUNNING:
            return None
        if self.event_driven:
            self._advance_clock()  # the room clock as of now, not of the last message: deadlines keep their time
        # Events a message made since the last step are numbered (and recorded) now, so that the snapshot's count
        # includes every event its game state already holds; their frames go out at the next step.
        pending = self.game.drain_events()
        if pending:
            self._take_events(pending)
        game = self.game.snapshot()
        if record_positions:
            self._record_positions(game, wall_ms)
        return encode({"v": SNAPSHOT_VERSION, "room": self.room_id, "mode": self.mode, "match": self.match_id,
                       "created_ms": self.created_ms, "started_ms": self.started_ms, "tick": self.tick_no,
                       "room_ms": self.room_ms, "events": self._recorded_events, "epoch": self._epoch,
                       "taken_ms": wall_ms, "roster": sorted(self.roster) if self.roster is not None else None,
                       "seats": [{"pid": seat.pid, "id": seat.player_id, "name": seat.name,
                                  "joined_ms": seat.joined_ms, "connected": seat.conn is not None}
                                 for seat in self._seats.values()],
                       "game": game})

    def _record_positions(self, game: dict[str, Any], wall_ms: int) -> None:
        """The players' state for Postgres, with what it takes to restore the room from it alone
        (persistence/recovery.py): each seat's pid and join time, the game's own state of each player, and the
        match's progress (tick, roster, the rest of the game's snapshot)."""
        seats = {seat.pid: seat for seat in self._seats.values()}
        players = [{"id": seat.player_id, "name": seat.name, "pid": seat.pid, "joined_ms": seat.joined_ms,
                    "state": entry}
                   for entry in game.get("players", [])
                   if isinstance(entry, dict) and (seat := seats.get(int(entry.get("pid") or 0))) is not None]
        self._record("positions", clock_ms=self.game.clock_ms, taken_ms=wall_ms, players=players, tick=self.tick_no,
                     roster=sorted(self.roster) if self.roster is not None else None, room_ms=self.room_ms,
                     events=self._recorded_events, epoch=self._epoch,
                     game={key: value for key, value in game.items() if key != "players"})

    def crash_frames(self, message: str) -> bytes:
        return text_frame(error_message(ErrorCode.ROOM_CRASHED, message))

    def evicted_frames(self) -> bytes:
        return text_frame(error_message(
            ErrorCode.ROOM_CLOSED, "this node lost its hold on the room while it stalled; join through the lobby "
            "again to be seated"))

    def cancel_frames(self) -> bytes:
        return text_frame(error_message(
            ErrorCode.MATCH_CANCELLED, f"fewer than {self.seats_rule.min} matched players reached the room "
            f"within {self.settings.join_window_s:g} s; join through the lobby again"))

    def describe(self, now: float) -> dict[str, object]:
        return {"mode": self.mode, "state": self.phase.value, "players": len(self._connected),
                "spectators": len(self._spectators),
                "seats": len(self._seats), "tick": self.tick_no, "countdown_ms": self._countdown_ms(now),
                "lobby": self.roster is not None}
