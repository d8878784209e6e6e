"""The game side's lobby writes (a player attached, detached or gone, a room over), run in order in the
background and retried through Redis outages, so that a tick or a connection handler never waits for Redis."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping

from lobby.outage import OUTAGE, Backoff, stop_if_cancelled
from lobby.seating import Outcome, Seating

log = logging.getLogger("tickroom.lobby")

WRITES_MAX = 100_000  # writes held through an outage before the oldest are given up

Write = Callable[[], Awaitable[object]]


class WriteQueue:
    def __init__(self, limit: int = WRITES_MAX) -> None:
        self.tally: Counter[str] | None = None  # Redis failures, for the node's metrics
        self.limit = limit
        self._writes: deque[tuple[str, Write]] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._writes)

    def submit(self, what: str, write: Write) -> None:
        """Queue `write` (named `what` in the logs) behind the ones already queued."""
        if len(self._writes) >= self.limit:
            dropped, _ = self._writes.popleft()
            log.error("lobby write queue full (%d): giving up %s", self.limit, dropped)
        self._writes.append((what, write))
        self._ready.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued write is done, for at most `timeout` seconds; True if they all were."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._writes:
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("shutting down with %d lobby write(s) not done; the sweep of this node repairs them",
                            len(self._writes))
                return False
            await asyncio.sleep(0.01)
        return True

    async def run(self) -> None:
        """Run the writes one by one until cancelled; a write that meets an outage is tried again."""
        backoff = Backoff(tally=self.tally)
        while True:
            stop_if_cancelled()
            if not self._writes:
                self._ready.clear()
                await self._ready.wait()
                continue
            what, write = self._writes[0]
            try:
                await write()
                backoff.reset("lobby writes")
            except OUTAGE as error:
                await backoff.wait("lobby writes", error)
                continue
            except Exception:
                log.exception("lobby write %s failed", what)
            self._writes.popleft()


class GameReports:
    """What the rooms of this node tell the lobby about their players, queued as writes."""

    def __init__(self, writes: WriteQueue, seatings: Mapping[str, Seating], publish: Callable[[str, Outcome], None],
                 wall_ms: Callable[[], int], node_id: str) -> None:
        self.writes = writes
        self.seatings = seatings
        self._publish = publish
        self.wall_ms = wall_ms
        self.node_id = node_id
        self.conns: set[str] = set()  # this node's live game connections, as the lobby knows them

    def attached(self, mode: str, player_id: str, room_id: str, conn_id: str) -> None:
        self.conns.add(conn_id)

        async def attach() -> None:
            await self.seatings[mode].attach(player_id, room_id, self.wall_ms(), conn_id=conn_id,
                                             conn_node=self.node_id)

        self.writes.submit(f"attach {player_id} to {room_id}", attach)

    def detached(self, mode: str, player_id: str, conn_id: str) -> None:
        self.conns.discard(conn_id)

        async def detach() -> None:
            await self.seatings[mode].detach(player_id, conn_id, self.wall_ms())

        self.writes.submit(f"detach {player_id}", detach)

    def left(self, mode: str, player_id: str, conn_id: str) -> None:
        """The player gave up their seat in a match (`leave`, or the reconnect grace ran out): `conn_id` is
        the connection that must still hold them ('' for "none"), so a player who came back keeps it. The
        connection counts as live until the write is done, so that a quick lobby join cannot take it over and
        get back the seat being given up."""

        async def leave() -> None:
            try:
                outcome = await self.seatings[mode].leave(player_id, self.wall_ms(), conn_id=conn_id, scope="seat")
            finally:
                self.conns.discard(conn_id)
            self._publish(mode, outcome)

        self.writes.submit(f"{player_id} leaves their match", leave)

    def saved(self, mode: str, match_id: str, player_ids: list[str]) -> None:
        """The match's result is durable and these players had left its room: their next join tells them."""

        async def note() -> None:
            await self.seatings[mode].note_saved(match_id, player_ids)

        self.writes.submit(f"result of {match_id} saved", note)

    def gone(self, conn_id: str) -> None:
        """A game connection ended after its match: nothing to write, only to forget."""
        self.conns.discard(conn_id)

    def room_over(self, mode: str, room_id: str, match_id: str = "") -> None:
        async def finish() -> None:
            outcome = await self.seatings[mode].finish(room_id, self.wall_ms(), host=self.node_id, match_id=match_id)
            self._publish(mode, outcome)

        self.writes.submit(f"finish {room_id}", finish)

    def result_in_postgres(self, mode: str, room_id: str, match_id: str) -> None:
        """The match's result (or cancellation) is committed: its guards in Redis go. Queued behind the room's
        `finish` when this node submitted one, so that the `over` mark that finish sets is there to delete."""

        async def settle() -> None:
            await self.seatings[mode].settle(room_id, match_id, self.wall_ms())

        self.writes.submit(f"settle {match_id}", settle)
