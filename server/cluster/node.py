"""A node: the rooms it hosts, the players connected to it, and the tasks that run the rooms.

Every room runner is a task owned by the node's task group, so shutdown cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from lobby.hub import LobbyHub
from lobby.seating import Claim, Member
from lobby.upkeep import HostedMatch, LocalState
from persistence.snapshots import SnapshotStore
from server.net.connection import GameConnection, JoinRequest, game_conn_id
from server.net.protocol import CloseCode, ErrorCode, MessageDecoder, ProtocolError
from server.ops.metrics import NodeMetrics
from server.ops.settings import Settings
from server.rooms.catalog import HostedGame
from server.rooms.lifecycle import RoomPhase
from server.rooms.loadgauge import LoadGauge, LoadLimits
from server.rooms.room import Recorder, Room, Scorer, Seat
from server.rooms.runner import RoomRunner
from server.rooms.ticker import Ticker
from server.rooms.tickstats import summarize_ms

log = logging.getLogger("tickroom.node")


async def _nothing_told(mode: str, match_ids: list[str]) -> dict[str, dict[str, int]]:
    return {}


def _keep_snapshot(mode: str, room_id: str) -> None:
    return None

# /stats: reuse an answer this young; summarize this many rooms between yields to the rooms; pool
# every POOL_STRIDE-th sample of each room into the node-wide totals.
STATS_MAX_AGE_S = 1.0
ROOMS_PER_SLICE = 20
POOL_STRIDE = 4


class Node:
    def __init__(self, settings: Settings, modes: Mapping[str, HostedGame], tasks: asyncio.TaskGroup,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.modes = dict(modes)
        self.rooms: dict[str, Room] = {}
        self._tasks = tasks
        self._players: dict[str, GameConnection] = {}
        self._released: dict[str, asyncio.Future[None]] = {}  # players whose dropped connection is being let go
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._rng = rng or random.Random()
        self.clock = clock
        self.started_at = clock()
        self.accepting = True
        self.drain_state = "serving"  # server/cluster/drain.py
        self._emptied = asyncio.Event()  # set while the node hosts no room
        self._emptied.set()
        self._stats_task: asyncio.Future[bytes] | None = None
        self._stats_at = 0.0
        # Set by the app once Redis is configured: where lobby rooms report their players and their end.
        self.lobby: LobbyHub | None = None
        # Set by the app when matches are recorded in Postgres (the write-behind queue's `submit`).
        self.recorder: Recorder | None = None
        self.scorer: Scorer | None = None  # the leaderboard feed's `add`, likewise
        # And its `told`: what the leaderboard heard of given matches (mode, match ids), for restored rooms.
        self.told: Callable[[str, list[str]], Awaitable[dict[str, dict[str, int]]]] = _nothing_told
        self.snapshots: SnapshotStore | None = None  # where recovery finds the rooms it restores
        # And where it finds those Redis has no snapshot of (mode, room ids -> room snapshots from Postgres).
        self.stored_rooms: Callable[[str, list[str]], Awaitable[dict[str, dict[str, Any]]]] | None = None
        # And which of given matches Postgres has as over (their results durable): never restored again.
        self.ended_matches: Callable[[list[str]], Awaitable[set[str]]] | None = None
        # The snapshotter's `forget`: a room whose match ended here takes its snapshot with it (mode, room id).
        self.drop_snapshot: Callable[[str, str], None] = _keep_snapshot
        self._grace: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.metrics = NodeMetrics()  # the app shares its own (server/ops/metrics.py)
        # Every fixed-tick room ticks from this one timer (server/rooms/ticker.py).
        self.ticker = Ticker(asyncio.get_running_loop(), clock)
        # Whether its CPU and ticks leave room for another room (sampled by `watch_load`).
        self.load = LoadGauge(LoadLimits(cpu=settings.cpu_limit, lateness_s=settings.lateness_limit_ms / 1000))
        self.on_load_change: Callable[[], None] | None = None  # `full` changed: the app tells the lobby at once

    @property
    def _time_limit_ms(self) -> int:
        return round(self.settings.match_time_s * 1000)

    def decoder_for(self, mode: str) -> MessageDecoder:
        """The decoder of the messages a player of `mode` may send on /game."""
        return self.modes[mode].decoder

    @staticmethod
    def wall_ms() -> int:
        return int(time.time() * 1000)

    # -- players -----------------------------------------------------------------------------------

    async def claim_player(self, player_id: str, ws: GameConnection) -> bool:
        """One connection per player on this node; False if the player keeps another one. That other one is
        probed first: if it does not answer within `stale_probe_s` (a device that went away without closing),
        it is dropped and this one takes over once its session has let go."""
        while (held := self._players.get(player_id)) is not None:
            if await held.probe(self.settings.stale_probe_s):
                return False
            held.abort()  # no answer, or already closing (its client may be gone): it is replaced now
            released = self._released.get(player_id)
            if released is None:
                released = self._released[player_id] = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self.settings.stale_probe_s):
                    await asyncio.shield(released)
            except TimeoutError:
                return False
        self._players[player_id] = ws
        return True

    def release_player(self, player_id: str, ws: GameConnection) -> None:
        if self._players.get(player_id) is ws:
            del self._players[player_id]
            released = self._released.pop(player_id, None)
            if released is not None and not released.done():
                released.set_result(None)

    @property
    def takes_rooms(self) -> bool:
        """Whether the lobby may place a new room here: not draining, below its room limit and its load limit."""
        return self.accepting and not self.load.full and len(self.rooms) < self.settings.max_rooms

    async def watch_load(self, every_s: float = 1.0) -> None:
        """Sample the load gauge (server/rooms/loadgauge.py) every second; tell `on_load_change` when the node
        starts or stops taking rooms for its load."""
        while True:
            await asyncio.sleep(every_s)
            running = sum(1 for room in self.rooms.values() if room.phase is RoomPhase.RUNNING)
            starting = sum(1 for room in self.rooms.values()
                           if room.phase in (RoomPhase.WAITING, RoomPhase.COUNTDOWN))
            overloaded = self.load.overloaded
            changed = self.load.sample(running, starting)
            if self.load.overloaded != overloaded:
                if self.load.overloaded:
                    log.warning("node at its capacity (CPU %.0f %% of a core, %.1f %% of ticks late, %d rooms): it "
                                "takes no new room", 100 * self.load.cpu, 100 * self.load.late_share, len(self.rooms))
                else:
                    log.info("node below its capacity again (CPU %.0f %%, %d rooms): it takes new rooms",
                             100 * self.load.cpu, len(self.rooms))
            if changed:
                self._load_changed()

    def room_placed(self) -> None:
        """A new room was placed here (by this node's lobby, or a development room): it spends the load gauge's
        allowance, and the lobby hears at once when none is left."""
        if self.load.room_placed():
            self._load_changed()

    def _load_changed(self) -> None:
        if self.on_load_change is not None:
            self.on_load_change()

    @property
    def connections(self) -> int:
        return len(self._players)

    # -- rooms -------------------------------------------------------------------------------------

    def room_for(self, join: JoinRequest) -> Room:
        room = self.rooms.get(join.room_id)
        if room is not None and room.phase is not RoomPhase.CLOSED:
            if join.roster is not None:
                room.admit(join.roster)
            return room
        if not self.accepting and join.roster is None:
            # A draining node still hosts the lobby's rooms placed on it before the lobby knew (the ticket says
            # so); it only refuses new development rooms.
            raise ProtocolError(ErrorCode.SERVER_FULL, "this node is not taking new rooms", CloseCode.POLICY)
        if len(self.rooms) >= self.settings.max_rooms:
            raise ProtocolError(ErrorCode.SERVER_FULL, "this node hosts as many rooms as it may", CloseCode.POLICY)
        if self.load.full and join.roster is None:
            raise ProtocolError(ErrorCode.SERVER_FULL, "this node is at its capacity and takes no new room",
                                CloseCode.POLICY)
        if join.roster is None:
            self.room_placed()  # a lobby room was counted when the lobby placed it
        hosted = self.modes[join.mode]
        game = hosted.make(random.Random(self._rng.getrandbits(64)), self._time_limit_ms)
        room_log = logging.getLogger(f"tickroom.room.{join.mode}")
        room = Room(join.room_id, hosted, game, self.settings, self.clock(), room_log, roster=join.roster,
                    node_id=self.settings.node_id, recorder=self.recorder, scorer=self.scorer, clock=self.clock)
        self.rooms[join.room_id] = room
        self._runners[join.room_id] = self._start_runner(room)
        log.info("room %s created (mode %s)", join.room_id, join.mode)
        return room

    def watchable_room(self, room_id: str) -> Room:
        """A room a spectator may watch: one this node hosts and that is not over (never a new one)."""
        room = self.rooms.get(room_id)
        if room is None or room.phase in (RoomPhase.FINISHED, RoomPhase.CLOSED):
            raise ProtocolError(ErrorCode.ROOM_NOT_FOUND, f"room {room_id} is not running here", CloseCode.POLICY)
        return room

    def restore_room(self, document: dict[str, Any], told: dict[str, int] | None = None) -> Room:
        """Resume the running match of a snapshot here (recovery); ValueError for one that cannot be read."""
        room_id, mode = str(document.get("room")), str(document.get("mode"))
        if room_id in self.rooms:
            return self.rooms[room_id]
        if mode not in self.modes:
            raise ValueError(f"this node has no mode {mode!r}")
        hosted = self.modes[mode]
        game = hosted.make(random.Random(self._rng.getrandbits(64)), self._time_limit_ms)
        room = Room.restored(document, hosted, game, self.settings, self.clock(),
                             logging.getLogger(f"tickroom.room.{mode}"), node_id=self.settings.node_id,
                             recorder=self.recorder, scorer=self.scorer, told=told, clock=self.clock)
        self.rooms[room_id] = room
        self._runners[room_id] = self._start_runner(room)
        if room.roster is not None and self.lobby is not None:
            # Nobody is connected yet: each player has the reconnect grace to come back, as after a drop.
            loop = asyncio.get_running_loop()
            for player_id in room.roster:
                self._grace[(room_id, player_id)] = loop.call_later(self.settings.reconnect_grace_s,
                                                                    self._grace_over, room, player_id)
        log.info("room %s restored from its snapshot of %d ms ago (match %s, clock %d ms)", room_id,
                 max(0, self.wall_ms() - (room.restored_from or 0)), room.match_id, room.game.clock_ms)
        return room

    async def adopt_rooms(self, mode: str, room_ids: list[str]) -> None:
        """Running matches this node was given (a dead node's, or its own from before a restart): restore each
        from its Redis snapshot (all read in one round trip), else from what Postgres kept of it; give the
        players of any without either back to the lobby."""
        todo = [room_id for room_id in room_ids if room_id not in self.rooms]
        documents = await self.snapshots.load_many(mode, todo) if self.snapshots is not None and todo else {}
        missing = [room_id for room_id in todo if room_id not in documents]
        if missing and self.stored_rooms is not None:
            try:
                documents.update(await self.stored_rooms(mode, missing))
            except Exception as error:  # Postgres down: those rooms end, as without a snapshot
                log.warning("rooms %s (%s) have no snapshot, and Postgres could not be read for them: %r",
                            missing, mode, error)
        if documents and self.ended_matches is not None:
            # A match whose result is in Postgres stays over, whatever snapshot is left of it: its node finished
            # it and its lobby guards (the `over` mark, what the leaderboard was told) may be gone already.
            try:
                ended = await self.ended_matches([str(d.get("match")) for d in documents.values()])
            except Exception as error:  # Postgres down: the snapshots are all there is to go by
                log.warning("could not ask Postgres which of rooms %s (%s) are over: %r", sorted(documents), mode,
                            error)
                ended = set()
            for room_id in [room_id for room_id, d in documents.items() if str(d.get("match")) in ended]:
                log.info("room %s (%s): its match is over in Postgres; not restored", room_id, mode)
                del documents[room_id]
        told = await self.told(mode, [str(d.get("match")) for d in documents.values()]) if documents else {}
        for room_id in todo:
            document = documents.get(room_id)
            if document is not None and document.get("room") == room_id and document.get("mode") == mode:
                try:
                    self.restore_room(document, told.get(str(document.get("match"))))
                    continue
                except Exception:  # a snapshot it cannot read, or a game that fails to restore: the room ends
                    log.exception("room %s: its snapshot could not be restored", room_id)
            log.warning("room %s (%s): nothing to restore it from (no snapshot in Redis nor progress in "
                        "Postgres); its players go back to the lobby", room_id, mode)
            if self.lobby is not None:
                await self.lobby.give_back(mode, room_id)

    async def idle(self) -> None:
        """Until the node hosts no room."""
        while self.rooms:
            await self._emptied.wait()

    def _start_runner(self, room: Room) -> asyncio.Task[None]:
        if room.roster is not None:
            room.saved_while_away = self._saved_while_away
        self._emptied.clear()
        # A fresh context: the room's log lines are not those of the player whose join created it.
        return self._tasks.create_task(self._run_room(room), name=f"room:{room.room_id}", context=contextvars.Context())

    async def _run_room(self, room: Room) -> None:
        try:
            await RoomRunner(room, logging.getLogger("tickroom.runner"), self.clock, self.ticker, self._room_over,
                             self.metrics, self.load).run()
        except Exception:
            # The runner handles the game's failures itself; this is the last guard so that a bug in
            # one room never reaches the task group, which would cancel every other room.
            log.exception("room %s runner failed", room.room_id)
        finally:
            if self.rooms.get(room.room_id) is room:
                del self.rooms[room.room_id]
                del self._runners[room.room_id]
                if not self.rooms:
                    self._emptied.set()
            if not room.released:  # released first: shutdown or eviction, the match goes on elsewhere
                room.record_unfinished("crashed" if room.failed is not None else "abandoned")
            metrics = self.metrics
            metrics.traffic.messages_out += room.stats.sent_messages
            metrics.traffic.bytes_out += room.stats.sent_bytes
            if room.started_ms is not None and not (room.released and room.end_reason is None):
                metrics.matches_ended[room.end_reason or ("crashed" if room.failed is not None else "abandoned")] += 1
            self._room_over(room)
            if room.result_recorded:  # its match ended here (not one that goes on elsewhere): no restore needs it
                self.drop_snapshot(room.mode, room.room_id)
            log.info("room %s closed after %d ticks", room.room_id, room.tick_no)

    # -- lobby rooms: what the lobby must hear of their players ---------------------------------------

    def _saved_while_away(self, room: Room, player_ids: list[str]) -> None:
        if self.lobby is not None:
            self.lobby.games.saved(room.mode, room.match_id, player_ids)

    def _room_over(self, room: Room) -> None:
        """The match ended (or the room closed without one): its players are free to join again at once,
        even while the room lingers to show the result."""
        if room.roster is not None and self.lobby is not None and not room.released:
            room.released = True
            self.lobby.games.room_over(room.mode, room.room_id, room.match_id)

    def result_in_postgres(self, mode: str, room_id: str, match_id: str) -> None:
        """A match's result (or cancellation) is committed in Postgres, by this node or from a spill it took
        over: the lobby's guards of the match go (lobby/lua/settle.lua)."""
        if self.lobby is None or mode not in self.modes:
            return
        room = self.rooms.get(room_id)
        if room is not None and room.match_id == match_id:
            self._room_over(room)  # its `finish` first (if not queued yet): the settle write deletes its mark
        self.lobby.games.result_in_postgres(mode, room_id, match_id)

    def seated(self, room: Room, seat: Seat, conn_id: str) -> None:
        if room.roster is None or self.lobby is None:
            return
        timer = self._grace.pop((room.room_id, seat.player_id), None)
        if timer is not None:  # back within the reconnect grace (after a drop, or into a restored match)
            timer.cancel()
            self.metrics.reconnects += 1
        self.lobby.games.attached(room.mode, seat.player_id, room.room_id, conn_id)

    def unseated(self, room: Room, seat: Seat, conn_id: str, *, left: bool) -> None:
        """A player's game connection is gone: `left` when they sent `leave`, else they dropped. Before the
        match ends, a player who left gives their seat up at once; one who dropped keeps it for the
        reconnect grace window (they come back through the lobby), then gives it up."""
        lobby = self.lobby
        if room.roster is None or lobby is None:
            return
        if room.phase in (RoomPhase.FINISHED, RoomPhase.CLOSED):
            if left:  # (a last player's `leave` may be what ended the match)
                room.walked_out(seat.player_id)
            lobby.games.gone(conn_id)  # the match is over: the lobby freed its players already
            return
        if left:
            room.dismiss(seat.player_id, quit=True)
            lobby.games.left(room.mode, seat.player_id, conn_id)
            return
        lobby.games.detached(room.mode, seat.player_id, conn_id)
        if room.phase is RoomPhase.RUNNING:
            key = (room.room_id, seat.player_id)
            old = self._grace.pop(key, None)
            if old is not None:
                old.cancel()
            self._grace[key] = asyncio.get_running_loop().call_later(
                self.settings.reconnect_grace_s, self._grace_over, room, seat.player_id)

    def _grace_over(self, room: Room, player_id: str) -> None:
        self._grace.pop((room.room_id, player_id), None)
        if self.lobby is not None and not room.is_connected(player_id) and room.phase is RoomPhase.RUNNING:
            log.info("room %s: player %s did not come back in time; their seat is free", room.room_id, player_id)
            room.dismiss(player_id)
            self.lobby.games.left(room.mode, player_id, "")

    def evict_lobby_rooms(self, mode: str, taken: set[str]) -> None:
        """Close this node's lobby rooms of `mode` that a sweep took over while this node stalled: their players
        were given back to the lobby and may already play elsewhere."""
        for room in list(self.rooms.values()):
            if room.roster is not None and room.mode == mode and room.room_id in taken and not room.evicted:
                log.error("room %s was taken over while this node stalled; closing it", room.room_id)
                room.evicted = True
                room.released = True  # its match goes on where the sweep moved it: the lobby must not end it
                room.poke()  # an event-driven room closes now, not at its next message

    def lobby_state(self) -> LocalState:
        """For the hub: this node's load, and the lobby players and rooms whose keys it keeps alive."""
        state = LocalState(load=len(self.rooms), accepting=self.takes_rooms, state=self.drain_state)
        for room in self.rooms.values():
            if room.roster is not None:
                state.rooms.setdefault(room.mode, set()).add(room.room_id)
                state.players.setdefault(room.mode, []).extend(
                    player_id for player_id in room.roster if room.is_connected(player_id))
        return state

    def hosted_matches(self) -> list[HostedMatch]:
        """The running lobby matches this node hosts, for the lobby to register again if Redis lost them."""
        matches = []
        for room in self.rooms.values():
            if room.roster is None or room.phase is not RoomPhase.RUNNING or room.released or room.evicted:
                continue
            seats = [seat for seat in room.seats() if seat.player_id in room.roster]
            claim = Claim(room.room_id, room.match_id, self.settings.node_id, created_ms=room.created_ms,
                          started_ms=room.started_ms or 0,
                          members=tuple(Member(seat.player_id, seat.name) for seat in seats))
            connected = tuple((seat.player_id, game_conn_id(seat.conn)) for seat in seats if seat.conn is not None)
            matches.append(HostedMatch(room.mode, claim, connected))
        return matches

    def stop_rooms(self) -> None:
        """Shutdown: stop every room without ending its lobby match: a running match goes on on the node that
        the sweep of this (deregistered) node moves it to, from the snapshot taken just before."""
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()
        for room in self.rooms.values():
            if room.phase is not RoomPhase.FINISHED:
                room.released = True
        for task in self._runners.values():
            task.cancel()

    def hand_off_rooms(self, last: bytes) -> None:
        """Draining, at the deadline: the lobby moved these rooms to other nodes (which restore the running
        ones from the snapshots just written); close them here without ending their matches, telling each
        player `last` (a `reconnect`) first."""
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()
        for room in list(self.rooms.values()):
            room.released = True
            for conn in room.connections():
                conn.close(CloseCode.GOING_AWAY, "node draining", last=last)
        for task in self._runners.values():
            task.cancel()

    # -- stats -------------------------------------------------------------------------------------

    async def stats(self) -> bytes:
        """`/stats` as JSON: computed at most once per `STATS_MAX_AGE_S`, yielding to the rooms as it goes,
        so that polling it (anyone may) never holds up a tick for long."""
        now = self.clock()
        if self._stats_task is None or (self._stats_task.done() and now - self._stats_at > STATS_MAX_AGE_S):
            self._stats_at = now
            self._stats_task = asyncio.ensure_future(self._compute_stats())
        return await asyncio.shield(self._stats_task)

    async def _compute_stats(self) -> bytes:
        now = self.clock()
        rooms: dict[str, object] = {}
        pooled_lateness: list[float] = []
        pooled_duration: list[float] = []
        for count, (room_id, room) in enumerate(list(self.rooms.items()), start=1):
            stats = room.stats
            lateness = stats.lateness.values()
            duration = stats.duration.values()
            pooled_lateness.extend(lateness[::POOL_STRIDE])
            pooled_duration.extend(duration[::POOL_STRIDE])
            elapsed = now - stats.started_at
            rooms[room_id] = {
                **room.describe(now),
                "ticks": stats.ticks,
                "ticks_per_s": round(stats.ticks / elapsed, 2) if elapsed > 0 else 0.0,
                "state_encodes": stats.encodes,
                "lateness_ms": summarize_ms(lateness),
                "duration_ms": summarize_ms(duration),
                "skipped_sends": stats.skipped_sends,
                "late_resets": stats.late_resets,
            }
            if count % ROOMS_PER_SLICE == 0:
                await asyncio.sleep(0)
        return orjson.dumps({
            "node": self.settings.node_id,
            "uptime_s": round(now - self.started_at, 3),
            "connections": self.connections,
            "rooms": rooms,
            "totals": {
                "rooms": len(rooms),
                "lateness_ms": summarize_ms(pooled_lateness),
                "duration_ms": summarize_ms(pooled_duration),
            },
        })
