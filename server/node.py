"""A node: the rooms it hosts, the players connected to it, and the tasks that run the rooms.

Every room runner is a task owned by the node's task group, so shutdown cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping

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

    def stats(self) -> dict[str, object]:
        now = self.clock()
        rooms: dict[str, object] = {}
        all_lateness: list[float] = []
        all_duration: list[float] = []
        for room_id, room in self.rooms.items():
            stats = room.stats
            lateness = stats.lateness.values()
            duration = stats.duration.values()
            all_lateness.extend(lateness)
            all_duration.extend(duration)
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
        return {
            "node": self.settings.node_id,
            "uptime_s": round(now - self.started_at, 3),
            "connections": self.connections,
            "rooms": rooms,
            "totals": {
                "rooms": len(self.rooms),
                "lateness_ms": summarize_ms(all_lateness),
                "duration_ms": summarize_ms(all_duration),
            },
        }
