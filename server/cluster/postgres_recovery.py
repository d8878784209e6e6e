"""Recovery from Postgres: live matches whose host is gone and that Redis lost (flushed, failed over without its
data) are claimed in Redis by one node and restored there from the positions and progress Postgres keeps, or
cancelled when nothing can restore them. The Redis path (sweep, snapshot) comes first; this is what is left."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from lobby.hub import LobbyHub
from lobby.outage import stop_if_cancelled
from lobby.seating import Claim, Member, Outcome
from persistence.recovery import (
    LiveMatch,
    StoredMatch,
    beat,
    heartbeat_ages,
    live_matches_elsewhere,
    stored_matches,
)
from server.ops.settings import Settings
from server.rooms.room import SNAPSHOT_VERSION

log = logging.getLogger("tickroom.recovery")

MISSING_SCANS = 3  # a node missing from the lobby's directory this many dead-after times is gone

Read = Callable[[Callable[[asyncpg.Connection], Awaitable[Any]]], Awaitable[Any]]
Submit = Callable[[dict[str, Any]], "asyncio.Future[None]"]


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def room_document(stored: StoredMatch) -> dict[str, Any]:
    """A room snapshot (`Room.snapshot`'s layout) of what Postgres kept of a running match."""
    return {"v": SNAPSHOT_VERSION, "room": stored.room_id, "mode": stored.mode, "match": str(stored.id),
            "created_ms": _ms(stored.created_at), "started_ms": _ms(stored.started_at), "tick": stored.tick,
            "room_ms": stored.room_ms, "events": stored.events, "epoch": stored.epoch,
            "taken_ms": _ms(stored.saved_at), "roster": stored.roster,
            "seats": [{"pid": seat.pid, "id": seat.player_id, "name": seat.name, "joined_ms": _ms(seat.joined_at) or 0}
                      for seat in stored.seats],
            "game": {**stored.game, "players": [seat.state for seat in stored.seats]}}


class PostgresRecovery:
    """Beats in Postgres every heartbeat, and scans Postgres for live matches of nodes that are not alive: this
    node's own from before a restart at once, another node's once it is missing from the lobby's directory and
    its heartbeat in Postgres is older than `node_dead_after_s` (see `_orphaned`). The lobby's `reclaim` script
    gives each to one node only, and only when Redis has neither the room nor its snapshot."""

    def __init__(self, settings: Settings, hub: LobbyHub, read: Read, submit: Submit,
                 restore: Callable[[dict[str, Any], dict[str, int] | None], object],
                 told: Callable[[str, list[str]], Awaitable[dict[str, dict[str, int]]]],
                 hosted: Callable[[], Iterable[str]], modes: Iterable[str],
                 clock: Callable[[], float] = time.monotonic, accepting: Callable[[], bool] = lambda: True) -> None:
        self._accepting = accepting  # a draining node claims nothing
        self.settings = settings
        self.node_id = settings.node_id
        self.hub = hub
        self._read = read
        self._submit = submit
        self._restore = restore
        self._told = told
        self._hosted = hosted
        self.modes = frozenset(modes)
        self.clock = clock
        self.started_at = datetime.now(UTC)
        self._missing_since: dict[str, float] = {}
        self.restored = 0
        self.cancelled = 0

    async def run(self) -> None:
        """Beat in Postgres every heartbeat, and scan: once the lobby's directory has been read (right after the
        first heartbeat), then every `node_dead_after_s`, or every heartbeat while some node with live matches
        went missing recently; a scan that fails (Postgres or Redis down) is tried again at the next. The beats
        have a loop of their own, each bounded in time: a slow scan never makes this node look gone."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._beat_loop(), name="postgres-heartbeat")
            group.create_task(self._scan_loop(), name="postgres-recovery")

    async def _beat_loop(self) -> None:
        settings = self.settings
        while True:
            stop_if_cancelled()
            try:
                async with asyncio.timeout(settings.node_dead_after_s / 3):
                    await self._read(lambda conn: beat(conn, self.node_id))
            except Exception as error:
                stop_if_cancelled()
                log.debug("heartbeat in Postgres failed (%s: %s)", type(error).__name__, error)
            await asyncio.sleep(settings.node_heartbeat_s)

    async def _scan_loop(self) -> None:
        settings = self.settings
        next_scan = 0.0
        while True:
            stop_if_cancelled()
            upkeep = self.hub.upkeep
            if upkeep.surveyed.is_set() and upkeep.reachable and self.clock() >= next_scan:
                try:
                    await self.scan()
                except Exception as error:
                    stop_if_cancelled()
                    log.warning("recovery scan failed (%s: %s); trying again later", type(error).__name__, error)
                # Quick scans only while a node went missing lately: one missing for longer is either claimed
                # already or refused for good (its rooms came back through Redis), and is looked at as usual.
                now = self.clock()
                recent = any(now - since < (MISSING_SCANS + 1) * settings.node_dead_after_s
                             for since in self._missing_since.values())
                next_scan = now + (settings.node_heartbeat_s if recent else settings.node_dead_after_s)
            await asyncio.sleep(settings.node_heartbeat_s)

    def _orphaned(self, matches: list[LiveMatch], beat_ages: dict[str, float]) -> list[LiveMatch]:
        """Of the live matches of nodes missing from the directory: this node's own from a previous life; those
        of nodes whose heartbeat in Postgres is older than the dead-after time too (gone from both stores: a
        live node beats in Postgres whatever became of Redis); and, for a node with no heartbeat there (older
        code, say), those missing from every scan for `MISSING_SCANS` times the dead-after time (live nodes come
        back into an emptied Redis within a heartbeat, or their outage back-off, 5 s at most, after a restart)."""
        now = self.clock()
        dead_after_s = self.settings.node_dead_after_s
        missing = {match.node for match in matches if match.node != self.node_id}
        self._missing_since = {node: self._missing_since.get(node, now) for node in missing}
        hosted = set(self._hosted())

        def gone(node: str) -> bool:
            age = beat_ages.get(node)
            if age is not None:
                return age > dead_after_s
            return now - self._missing_since[node] >= MISSING_SCANS * dead_after_s

        return [match for match in matches if match.mode in self.modes and (
            (match.node == self.node_id and match.created_at < self.started_at and match.room_id not in hosted)
            or (match.node != self.node_id and gone(match.node)))]

    async def scan(self) -> int:
        """One pass; how many matches this node claimed."""
        if not self._accepting():
            return 0
        live = {node.node_id for node in self.hub.upkeep.live} - {self.node_id}
        matches: list[LiveMatch] = await self._read(lambda conn: live_matches_elsewhere(conn, live))
        missing = {match.node for match in matches} - {self.node_id}
        ages: dict[str, float] = await self._read(lambda conn: heartbeat_ages(conn, missing)) if missing else {}
        orphaned = self._orphaned(matches, ages)
        if not orphaned:
            return 0
        running = [match.id for match in orphaned if match.state == "running"]
        stored: dict[uuid.UUID, StoredMatch] = (
            await self._read(lambda conn: stored_matches(conn, match_ids=running)) if running else {})
        claimed = 0
        for mode in sorted({match.mode for match in orphaned}):
            in_mode = [match for match in orphaned if match.mode == mode]
            restorable = {match.id: stored[match.id] for match in in_mode if self._restorable(stored.get(match.id))}
            told = await self._told(mode, [str(match_id) for match_id in restorable])
            claims = [self._claim_of(match, restorable.get(match.id)) for match in in_mode]
            outcomes = await self.hub.reclaim_many(mode, claims)
            # No await from here on: a player back already finds each claimed room here, not an empty one.
            pending: list[LiveMatch] = []
            for match, outcome in zip(in_mode, outcomes, strict=True):
                if outcome.outcome != "claimed":
                    continue
                claimed += 1
                progress = restorable.get(match.id)
                if progress is None or not self._restored(match, progress, outcome, told.get(str(match.id))):
                    pending.append(match)
            for match in pending:
                self._cancel(match)
                if restorable.get(match.id) is not None:
                    await self.hub.give_back(mode, match.room_id)
        return claimed

    @staticmethod
    def _claim_of(match: LiveMatch, progress: StoredMatch | None) -> Claim:
        if progress is None:
            return Claim(match.room_id, str(match.id), match.node)
        roster = set(progress.roster or ())
        return Claim(match.room_id, str(match.id), match.node, created_ms=_ms(match.created_at) or 0,
                     started_ms=_ms(progress.started_at) or 0,
                     members=tuple(Member(seat.player_id, seat.name) for seat in progress.seats
                                   if seat.player_id in roster))

    def _restored(self, match: LiveMatch, progress: StoredMatch, outcome: Outcome,
                  told: dict[str, int] | None) -> bool:
        document = room_document(progress)
        if outcome.view is not None:
            # Only the players the lobby placed in the room again: one who plays another match by now is not
            # waited for (their seat in the game stays, for the ranking).
            document["roster"] = outcome.view.player_ids
        try:
            self._restore(document, told)
        except Exception:
            log.exception("room %s: what Postgres kept of match %s could not be restored", match.room_id, match.id)
            return False
        self.restored += 1
        log.warning("room %s (match %s of node %s, which is gone) restored from Postgres as of %s", match.room_id,
                    match.id, match.node, progress.saved_at.isoformat())
        return True

    async def documents(self, mode: str, room_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Room snapshots from Postgres of the running matches of these rooms (for rooms the sweep gave this
        node whose Redis snapshot is missing), by room id; at most `node_dead_after_s / 3` (TimeoutError after
        that): this runs in the heartbeat, which must not stall."""
        async with asyncio.timeout(self.settings.node_dead_after_s / 3):
            stored: dict[uuid.UUID, StoredMatch] = await self._read(
                lambda conn: stored_matches(conn, room_ids=room_ids, mode=mode))
        return {match.room_id: room_document(match) for match in stored.values() if self._restorable(match)}

    def _restorable(self, stored: StoredMatch | None) -> bool:
        """A lobby match whose progress is recent enough for its players to still be about."""
        if stored is None or stored.roster is None:
            return False
        age_s = (datetime.now(UTC) - stored.saved_at).total_seconds()
        return age_s <= self.settings.snapshot_ttl_s

    def _cancel(self, match: LiveMatch) -> None:
        """A live match of a node that is gone, which nothing can restore: cancelled (its players join anew)."""
        self.cancelled += 1
        log.warning("match %s (room %s, %s on node %s, which is gone) cannot be restored; recorded as cancelled",
                    match.id, match.room_id, match.state, match.node)
        self._submit({"op": "match_result", "match": str(match.id), "room": match.room_id, "mode": match.mode,
                      "node": match.node, "created_ms": _ms(match.created_at), "started_ms": None,
                      "ended_ms": int(time.time() * 1000), "reason": "host_lost", "cancelled": True, "players": []})
