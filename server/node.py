"""A node: the rooms it hosts, the players connected to it, and the tasks that run the rooms.

Every room runner is a task owned by the node's task group, so shutdown cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping

import orjson
from websockets.asyncio.server import ServerConnection

from game.base import GameFactory
from server.connection import JoinRequest
from server.lifecycle import RoomPhase
from server.protocol import CloseCode, ErrorCode, ProtocolError
from server.room import Room
from server.runner import RoomRunner
from server.settings import Settings
from server.tickstats import summarize_ms

log = logging.getLogger("tickroom.node")

# /stats: reuse an answer this young; summarize this many rooms between yields to the rooms; pool
# every POOL_STRIDE-th sample of each room into the node-wide totals.
STATS_MAX_AGE_S = 1.0
ROOMS_PER_SLICE = 20
POOL_STRIDE = 4


class Node:
    def __init__(self, settings: Settings, modes: Mapping[str, GameFactory], tasks: asyncio.TaskGroup,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.modes = dict(modes)
        self.rooms: dict[str, Room] = {}
        self._tasks = tasks
        self._players: dict[str, ServerConnection] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._rng = rng or random.Random()
        self.clock = clock
        self.started_at = clock()
        self.accepting = True
        self._stats_task: asyncio.Future[bytes] | None = None
        self._stats_at = 0.0

    @staticmethod
    def wall_ms() -> int:
        return int(time.time() * 1000)

    # -- players -----------------------------------------------------------------------------------

    def claim_player(self, player_id: str, ws: ServerConnection) -> bool:
        """One connection per player on this node; False if the player already has one."""
        if player_id in self._players:
            return False
        self._players[player_id] = ws
        return True

    def release_player(self, player_id: str, ws: ServerConnection) -> None:
        if self._players.get(player_id) is ws:
            del self._players[player_id]

    @property
    def connections(self) -> int:
        return len(self._players)

    # -- rooms -------------------------------------------------------------------------------------

    def room_for(self, join: JoinRequest) -> Room:
        room = self.rooms.get(join.room_id)
        if room is not None and room.phase is not RoomPhase.CLOSED:
            return room
        if not self.accepting:
            raise ProtocolError(ErrorCode.SERVER_FULL, "this node is not taking new rooms", CloseCode.POLICY)
        if len(self.rooms) >= self.settings.max_rooms:
            raise ProtocolError(ErrorCode.SERVER_FULL, "this node hosts as many rooms as it may", CloseCode.POLICY)
        factory = self.modes[join.mode]
        game = factory(random.Random(self._rng.getrandbits(64)))
        room_log = logging.getLogger(f"tickroom.room.{join.mode}")
        room = Room(join.room_id, join.mode, game, self.settings, self.clock(), room_log)
        self.rooms[join.room_id] = room
        self._runners[join.room_id] = self._tasks.create_task(self._run_room(room), name=f"room:{join.room_id}")
        log.info("room %s created (mode %s)", join.room_id, join.mode)
        return room

    async def _run_room(self, room: Room) -> None:
        try:
            await RoomRunner(room, logging.getLogger("tickroom.runner"), self.clock).run()
        except Exception:
            # The runner handles the game's failures itself; this is the last guard so that a bug in
            # one room never reaches the task group, which would cancel every other room.
            log.exception("room %s runner failed", room.room_id)
        finally:
            if self.rooms.get(room.room_id) is room:
                del self.rooms[room.room_id]
                del self._runners[room.room_id]
            log.info("room %s closed after %d ticks", room.room_id, room.tick_no)

    def stop_rooms(self) -> None:
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
