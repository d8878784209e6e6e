"""Every `snapshot_every_s`, each running room's snapshot goes to Redis, off the tick path.

The interval is cut into one-second slots and each room has its slot (by a hash of its id), so the work is
spread evenly instead of landing on one tick every 30 s. At each slot the rooms due are read synchronously
(a few tens of µs each: the game's state as JSON) and written in one pipelined round trip by this task;
no room ever awaits Redis. A Redis outage skips snapshots (logged once); the next round writes them again.
Every `POSITIONS_EVERY`th round a room's players' positions also go to Postgres, through the write-behind queue.
A room whose match ended is `forget`-ten: its snapshot is deleted by this task, after any write of it in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Iterable

from lobby.outage import OUTAGE, stop_if_cancelled
from persistence.snapshots import Snapshot, SnapshotStore
from server.rooms.room import Room

log = logging.getLogger("tickroom.snapshots")

SLOT_S = 1.0
SAVE_FAILED: tuple[type[BaseException], ...] = (TimeoutError, *OUTAGE)
POSITIONS_EVERY = 2  # every other snapshot of a room also goes to Postgres as its players' positions


def slot_of(room_id: str, slots: int) -> int:
    return zlib.crc32(room_id.encode()) % slots


class Snapshotter:
    def __init__(self, rooms: Callable[[], Iterable[Room]], store: SnapshotStore, every_s: float, *,
                 positions_every: int = POSITIONS_EVERY, on_slot: Callable[[float], None] | None = None) -> None:
        self._rooms = rooms
        self._on_slot = on_slot  # told how long each slot's snapshots took to take and write (metrics)
        self.store = store
        self.slots = max(1, round(every_s / SLOT_S))
        self.slot_s = every_s / self.slots
        self.positions_every = positions_every
        self._round = 0  # full intervals done
        self._failing = False
        self._gone: list[tuple[str, str]] = []  # (mode, room id) of rooms whose snapshot is to be deleted

    def forget(self, mode: str, room_id: str) -> None:
        """The room's match ended: its snapshot goes at the next slot, after the write of it that may be in
        flight (a deletion of its own could overtake that write and leave the snapshot behind)."""
        self._gone.append((mode, room_id))

    def due(self, slot: int) -> list[Snapshot]:
        """The snapshots of the running rooms whose turn `slot` is (every `positions_every`th round, their
        positions go to Postgres as well)."""
        return self._take([room for room in self._rooms() if slot_of(room.room_id, self.slots) == slot],
                          record_positions=self._round % self.positions_every == 0)

    @staticmethod
    def _take(rooms: Iterable[Room], *, record_positions: bool = False) -> list[Snapshot]:
        wall_ms = int(time.time() * 1000)
        snapshots = []
        for room in list(rooms):
            try:
                body = room.snapshot(wall_ms, record_positions=record_positions)
            except Exception:  # a game that cannot describe itself loses its snapshot, not the node
                log.exception("room %s: snapshot failed", room.room_id)
                continue
            if body is not None:
                snapshots.append(Snapshot(room.mode, room.room_id, body))
        return snapshots

    async def save_all(self, timeout: float) -> int:
        """Every running room's snapshot now, in one round trip (graceful shutdown); how many were written."""
        snapshots = self._take(self._rooms())
        try:
            async with asyncio.timeout(timeout):
                await self.store.save(snapshots)
        except SAVE_FAILED as error:
            log.warning("the last snapshots of %d rooms did not reach Redis: %r", len(snapshots), error)
            return 0
        return len(snapshots)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.slot_s
        slot = 0
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += self.slot_s
            began = time.perf_counter()
            snapshots = self.due(slot)
            slot = (slot + 1) % self.slots
            if slot == 0:
                self._round += 1
            gone, self._gone = self._gone, []
            try:
                await self.store.save(snapshots)
                await self.store.delete(gone)
            except OUTAGE as error:
                self._gone = gone + self._gone
                stop_if_cancelled()
                if not self._failing:
                    log.warning("room snapshots are not reaching Redis (%s); retrying each round", error)
                    self._failing = True
                continue
            except Exception:
                stop_if_cancelled()
                self._gone = gone + self._gone
                log.exception("writing %d room snapshots failed", len(snapshots))
                continue
            stop_if_cancelled()  # redis-py may have swallowed a cancellation in the save
            if self._on_slot is not None and snapshots:
                self._on_slot(time.perf_counter() - began)
            if self._failing:
                log.info("room snapshots reach Redis again")
                self._failing = False
