"""The write-behind queue to Postgres: rooms and sessions submit writes without awaiting Postgres, a worker
writes them in batches, one transaction per batch. Nothing is dropped:

- while Postgres is down the writes wait and the worker retries with back-off;
- past `memory_limit` waiting writes, the oldest are moved to a Redis list (the spill), which the worker
  empties first, so the order of writes is kept; if Redis is down too they stay in memory (and a warning says
  so) rather than being lost;
- `submit` returns a future that resolves once the write is durable: committed in Postgres, or in the spill;
  a match result is announced to players only then;
- every write is idempotent (upserts, and match changes through `change_match`'s state table), so a batch
  replayed after a commit whose answer was lost changes nothing the second time: each result lands exactly
  once;
- a write that Postgres refuses for its content (not for being down) is moved to a dead-letter Redis list
  with the error, and the rest of its batch goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

from lobby.outage import OUTAGE, stop_if_cancelled
from persistence.matches import MatchRow, change_match, get_match

log = logging.getLogger("tickroom.persistence.writes")

Write = dict[str, Any]  # {"op": NAME, ...}: JSON, so that it can wait in Redis
BATCH = 200
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
MEMORY_LIMIT = 10_000
# Postgres being unreachable or restarting, as opposed to refusing a write for its content.
PG_DOWN: tuple[type[BaseException], ...] = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                                            asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
                                            asyncpg.CrashShutdownError, TimeoutError)


def spill_key(prefix: str, node_id: str) -> str:
    """A node's Redis list of writes waiting for Postgres (one per node: one worker reads and empties it)."""
    return f"{prefix}:node:{node_id}:writes:spill"


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


# -- the writes: each idempotent ---------------------------------------------------------------------------

async def _ensure_match(conn: asyncpg.Connection, write: Write) -> None:
    match_id = uuid.UUID(write["match"])
    if await conn.fetchval("SELECT 1 FROM matches WHERE id = $1", match_id) is not None:
        return
    created = _time(write["created_ms"])
    # A room id names one live match at a time. A waiting match of the same room that another node opened
    # before it died (the sweep moved the room here, where its match is a new one) never started: cancel it.
    # Only an older one: a late write of that older match (from a spill) must not cancel the newer.
    for other in await conn.fetch("SELECT id FROM matches WHERE room_id = $1 AND state = 'waiting' AND id <> $2 "
                                  "AND created_at < $3", write["room"], match_id, created):
        await change_match(conn, other["id"], _superseded)
    # And a late write of such an older match finds the room's newer match live: it is recorded superseded.
    newer = await conn.fetchval("SELECT 1 FROM matches WHERE room_id = $1 AND state IN ('waiting', 'running') "
                                "AND created_at >= $2", write["room"], created)
    await conn.execute(
        "INSERT INTO matches (id, room_id, mode, node, state, created_at, ended_at, end_reason) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
        match_id, write["room"], write["mode"], write["node"], "cancelled" if newer else "waiting", created,
        datetime.now(UTC) if newer else None, "superseded" if newer else None)


def _superseded(row: MatchRow) -> MatchRow | None:
    if row.state != "waiting":
        return None
    return row.moved_to("cancelled", ended_at=datetime.now(UTC), end_reason="superseded")


async def _players_seen(conn: asyncpg.Connection, players: list[dict[str, Any]], at: datetime | None) -> None:
    await conn.executemany(
        "INSERT INTO players (id, name, last_seen) VALUES ($1, $2, $3) "
        "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, "
        "last_seen = GREATEST(players.last_seen, EXCLUDED.last_seen)",
        [(uuid.UUID(p["id"]), p["name"], at) for p in players])


async def _match_opened(conn: asyncpg.Connection, write: Write) -> None:
    await _ensure_match(conn, write)


async def _match_started(conn: asyncpg.Connection, write: Write) -> None:
    await _ensure_match(conn, write)
    started = _time(write["started_ms"])

    def start(row: MatchRow) -> MatchRow | None:
        return None if row.state != "waiting" else row.moved_to("running", started_at=started)

    await change_match(conn, uuid.UUID(write["match"]), start)


async def _match_result(conn: asyncpg.Connection, write: Write) -> None:
    """The end of a match: its row finished (or cancelled), and each player's line of the result."""
    await _ensure_match(conn, write)
    match_id = uuid.UUID(write["match"])
    ended = _time(write["ended_ms"])
    started = _time(write.get("started_ms"))
    final_state = "cancelled" if write.get("cancelled") else "finished"

    recorded_before = False

    def finish(row: MatchRow) -> MatchRow | None:
        nonlocal recorded_before
        if row.state in ("finished", "cancelled"):
            recorded_before = True  # a replay, or another node's result for the same match: the first stands
            return None
        if final_state == "finished" and row.state == "waiting":
            row = row.moved_to("running", started_at=started or ended)
        return row.moved_to(final_state, ended_at=ended, end_reason=write.get("reason"))

    await change_match(conn, match_id, finish)
    if recorded_before:
        return
    players = write.get("players", [])
    await _players_seen(conn, players, ended)
    await conn.executemany(
        "INSERT INTO match_players (match_id, player_id, join_order, joined_at, left_at, rank, kills, deaths, score, "
        "figures) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
        "ON CONFLICT (match_id, player_id) DO UPDATE SET left_at = EXCLUDED.left_at, rank = EXCLUDED.rank, "
        "kills = EXCLUDED.kills, deaths = EXCLUDED.deaths, score = EXCLUDED.score, figures = EXCLUDED.figures",
        [(match_id, uuid.UUID(p["id"]), p["order"], _time(p["joined_ms"]), _time(p.get("left_ms")), p.get("rank"),
          *_kills_deaths(p), p.get("score", 0), orjson.dumps(_figures(p)).decode()) for p in players])
    await conn.execute("DELETE FROM player_positions WHERE match_id = $1", match_id)
    await conn.execute("DELETE FROM match_progress WHERE match_id = $1", match_id)
    # One line per match, naming its players: a player's way is followed into Postgres by their id.
    log.info("match %s (room %s) recorded %s", match_id, write["room"], final_state,
             extra={"match": str(match_id), "room": write["room"], "players": [p["id"] for p in players]})


def _figures(line: dict[str, Any]) -> dict[str, Any]:
    figures = line.get("figures")
    if figures is None:  # a write queued by an older node: the arena's figures were columns of the line
        figures = {key: line[key] for key in ("kills", "deaths") if key in line}
    return dict(figures)


def _kills_deaths(line: dict[str, Any]) -> tuple[int, int]:
    """The arena's columns, from its figures (other games have neither: 0)."""
    figures = _figures(line)
    kills, deaths = figures.get("kills", 0), figures.get("deaths", 0)
    return (kills if isinstance(kills, int) else 0), (deaths if isinstance(deaths, int) else 0)


def _number(state: dict[str, Any], key: str) -> Any:
    value = state.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


async def _positions(conn: asyncpg.Connection, write: Write) -> None:
    """The latest state of each player of a live match, and the match's progress with it (what restores the
    room from Postgres alone); an older write never overwrites a newer one."""
    await _ensure_match(conn, write)
    match_id = uuid.UUID(write["match"])
    row = await get_match(conn, match_id)
    if row is not None and row.state in ("finished", "cancelled"):
        return  # the result is in; positions of a match that is over mean nothing
    players = write["players"]
    taken = _time(write["taken_ms"])
    await _players_seen(conn, players, taken)
    await conn.executemany(
        "INSERT INTO player_positions (match_id, player_id, x, y, hp, kills, deaths, score, match_clock_ms, saved_at, "
        "pid, joined_at, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
        "ON CONFLICT (match_id, player_id) DO UPDATE SET x = EXCLUDED.x, y = EXCLUDED.y, hp = EXCLUDED.hp, "
        "kills = EXCLUDED.kills, deaths = EXCLUDED.deaths, score = EXCLUDED.score, "
        "match_clock_ms = EXCLUDED.match_clock_ms, saved_at = EXCLUDED.saved_at, pid = EXCLUDED.pid, "
        "joined_at = EXCLUDED.joined_at, state = EXCLUDED.state "
        "WHERE player_positions.match_clock_ms <= EXCLUDED.match_clock_ms",
        [(match_id, uuid.UUID(p["id"]), *(_number(state, key) for key in ("x", "y", "hp")),
          *(_number(state, key) or 0 for key in ("kills", "deaths", "score")),
          write["clock_ms"], taken, p.get("pid"), _time(p.get("joined_ms")),
          None if p.get("state") is None else orjson.dumps(p["state"]).decode())
         for p in players for state in (p.get("state") or p,)])
    if "game" in write:
        await conn.execute(
            "INSERT INTO match_progress (match_id, roster, tick, match_clock_ms, game, saved_at, room_ms, events, "
            "epoch) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (match_id) DO UPDATE SET "
            "roster = EXCLUDED.roster, tick = EXCLUDED.tick, match_clock_ms = EXCLUDED.match_clock_ms, "
            "game = EXCLUDED.game, saved_at = EXCLUDED.saved_at, room_ms = EXCLUDED.room_ms, "
            "events = EXCLUDED.events, epoch = EXCLUDED.epoch "
            "WHERE match_progress.match_clock_ms <= EXCLUDED.match_clock_ms",
            match_id, None if write.get("roster") is None else orjson.dumps(write["roster"]).decode(),
            write.get("tick", 0), write["clock_ms"], orjson.dumps(write["game"]).decode(), taken,
            write.get("room_ms", 0), write.get("events", 0), write.get("epoch", 0))


async def _match_moved(conn: asyncpg.Connection, write: Write) -> None:
    """A live match restored on another node (recovery): the row names its new host."""
    await _ensure_match(conn, write)

    def move(row: MatchRow) -> MatchRow | None:
        return None if row.state in ("finished", "cancelled") else row.moved_to(row.state, node=write["node"])

    await change_match(conn, uuid.UUID(write["match"]), move)


async def _match_event(conn: asyncpg.Connection, write: Write) -> None:
    """An event the game asked to keep (`Event.record`), under its number in the match; a write of an epoch older
    than the match's last rewind (a timeline that did not go on) changes nothing."""
    await _ensure_match(conn, write)
    await conn.execute(
        "INSERT INTO match_events (match_id, seq, epoch, body) "
        "SELECT $1, $2, $3, $4 FROM matches WHERE id = $1 AND event_epoch <= $3 "
        "ON CONFLICT (match_id, seq) DO UPDATE SET body = EXCLUDED.body, epoch = EXCLUDED.epoch, recorded_at = now() "
        "WHERE match_events.epoch <= EXCLUDED.epoch",
        uuid.UUID(write["match"]), write["seq"], write.get("epoch", 0), orjson.dumps(write["body"]).decode())


async def _events_rewound(conn: asyncpg.Connection, write: Write) -> None:
    """A match restored (its epoch `epoch`) from a point at which it had recorded `after` events: the later
    events of older epochs are of a timeline that did not go on, and older epochs write nothing from now on."""
    await _ensure_match(conn, write)
    match_id, epoch = uuid.UUID(write["match"]), write.get("epoch", 0)
    await conn.execute("UPDATE matches SET event_epoch = $2 WHERE id = $1 AND event_epoch < $2", match_id, epoch)
    await conn.execute("DELETE FROM match_events WHERE match_id = $1 AND seq > $2 AND epoch < $3", match_id,
                       write["after"], epoch)


APPLY: dict[str, Callable[[asyncpg.Connection, Write], Awaitable[None]]] = {
    "match_event": _match_event,
    "events_rewound": _events_rewound,
    "match_opened": _match_opened,
    "match_started": _match_started,
    "match_result": _match_result,
    "positions": _positions,
    "match_moved": _match_moved,
}


# -- the queue ---------------------------------------------------------------------------------------------

TAKE_OVER_CHUNK = 1000
# Moves up to ARGV[1] writes from the head of KEYS[1] to the tail of KEYS[2], in order; how many it moved.
_TAKE_OVER = """
local moved = 0
while moved < tonumber(ARGV[1]) and redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
return moved
"""
# The worker's next spilled batch: what is in flight (KEYS[2]) if a batch was cut short, else up to ARGV[1]
# writes moved there from the head of the spill (KEYS[1]). The batch leaves the spill before it is written,
# so that a node taking the spill over meanwhile never loses a write (it may write one twice: idempotent).
_NEXT_BATCH = """
local batch = redis.call('LRANGE', KEYS[2], 0, -1)
if #batch > 0 then return batch end
for _ = 1, tonumber(ARGV[1]) do
  local write = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not write then break end
  table.insert(batch, write)
end
return batch
"""


class WriteRefused(Exception):
    """Postgres refused the write for its content; it waits in the dead-letter list."""


@dataclass(slots=True)
class _Pending:
    write: Write
    durable: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class WriteBehind:
    """`submit()` from anywhere (never blocks); `run()` as a background task; `drain()` at shutdown."""

    def __init__(self, database_url: str, redis: aioredis.Redis, spill_key: str, *,
                 memory_limit: int = MEMORY_LIMIT, batch: int = BATCH) -> None:
        self.database_url = database_url
        self.redis = redis
        self.spill_key = spill_key
        self.inflight_key = f"{spill_key}:inflight"
        self.dead_key = f"{spill_key}:dead"
        self.memory_limit = memory_limit
        self.batch = batch
        self._memory: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._conn: asyncpg.Connection | None = None
        self.written = 0  # writes committed (counting replays), for /stats and the tests
        self.retries = 0
        self._spilling: asyncio.Task[None] | None = None
        self._on_redis = False  # the worker's round is waiting for Redis (else for Postgres)
        self.tally: Counter[str] | None = None  # failed rounds by backend ("postgres", "redis"), for metrics
        # Told of the writes of each committed transaction (in Postgres now, not only in the spill), on this
        # node's or a spill taken over: what the node cleans up once a match's result is in Postgres.
        self.committed: Callable[[list[Write]], None] | None = None

    @property
    def depth(self) -> int:
        return len(self._memory)

    def submit(self, write: Write) -> asyncio.Future[None]:
        """Queue `write`; the future resolves once it is durable (in Postgres, or in the Redis spill)."""
        if write.get("op") not in APPLY:
            raise ValueError(f"unknown write {write.get('op')!r}")
        pending = _Pending(write)
        self._memory.append(pending)
        self._idle.clear()
        self._wake.set()
        if len(self._memory) > self.memory_limit and (self._spilling is None or self._spilling.done()):
            self._spilling = asyncio.get_running_loop().create_task(self._spill())
        return pending.durable

    async def _spill(self) -> None:
        """Move the oldest writes over the memory limit to the Redis spill, in order."""
        while len(self._memory) > self.memory_limit:
            chunk = [self._memory[i] for i in range(min(self.batch, len(self._memory) - self.memory_limit))]
            try:
                await self.redis.rpush(self.spill_key, *(orjson.dumps(p.write) for p in chunk))
            except OUTAGE as error:
                log.warning("Redis is unreachable too (%s): %d writes wait in memory", error, len(self._memory))
                return
            self._settle(chunk)

    async def take_over(self, spill_key: str) -> int:
        """Append the writes a node that is gone left in its spill to this node's spill, for this worker to
        write (in their order, after ours). Moved a chunk at a time, each chunk atomically: any number of
        nodes may take over the same spill at once, every write ends up in exactly one of theirs."""
        moved = 0
        for source in (f"{spill_key}:inflight", spill_key):  # a batch it was writing is older than its spill
            while True:
                count = int(await self.redis.eval(_TAKE_OVER, 2, source, self.spill_key, TAKE_OVER_CHUNK))
                moved += count
                if count < TAKE_OVER_CHUNK:
                    break
        if moved:
            log.warning("took over %d writes that a node that is gone left in %s", moved, spill_key)
            self._idle.clear()
            self._wake.set()
        return moved

    async def run(self) -> None:
        delay = RETRY_MIN_S
        failing = ""
        while True:
            stop_if_cancelled()
            try:
                did = await self._round()
            except Exception as error:  # an outage, or anything unexpected: never take the node down with it
                stop_if_cancelled()
                self.retries += 1
                # An OSError may come from either side: the round says which one it was talking to.
                what = "Redis (the write spill)" if self._on_redis and isinstance(error, OUTAGE) else "Postgres"
                if self.tally is not None:
                    self.tally["postgres" if what == "Postgres" else "redis"] += 1
                if not isinstance(error, PG_DOWN + OUTAGE):
                    log.exception("the write queue failed unexpectedly; retrying with back-off")
                if what != "Redis (the write spill)":
                    await self._drop_connection()
                if failing != what:
                    log.warning("%s unreachable (%s: %s); %d writes wait, retrying with back-off", what,
                                type(error).__name__, error, len(self._memory))
                    failing = what
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            if failing:
                log.info("%s reachable again; the queued writes go on", failing)
                failing = ""
            delay = RETRY_MIN_S
            if not did:
                self._idle.set()
                self._wake.clear()
                stop_if_cancelled()  # redis-py may have swallowed a cancellation in this round
                await self._wake.wait()

    async def _round(self) -> bool:
        """Write one batch, spilled writes first; False when there was nothing to write."""
        self._on_redis = True
        spilled = await self.redis.eval(_NEXT_BATCH, 2, self.spill_key, self.inflight_key, self.batch)
        self._on_redis = False
        if spilled:
            await self._write([orjson.loads(raw) for raw in spilled])
            self._on_redis = True
            await self.redis.delete(self.inflight_key)
            self._on_redis = False
            return True
        if not self._memory:
            return False
        chunk = [self._memory[i] for i in range(min(self.batch, len(self._memory)))]
        self._settle(chunk, refused=await self._write([p.write for p in chunk]))
        return True

    def _settle(self, chunk: list[_Pending], refused: Collection[int] = ()) -> None:
        """The oldest writes, now durable (written or spilled) or refused: off the queue, futures resolved. The
        other side (the worker, or a spill) may have settled some of them meanwhile: those are gone already."""
        for index, pending in enumerate(chunk):
            if self._memory and self._memory[0] is pending:
                self._memory.popleft()
            if not pending.durable.done():
                if index in refused:  # not in Postgres: whoever waits must not announce it as saved
                    pending.durable.set_exception(WriteRefused(f"the {pending.write['op']} write was refused"))
                else:
                    pending.durable.set_result(None)

    async def _write(self, writes: list[Write]) -> set[int]:
        """Write a batch; the positions of the writes that were refused (set aside in the dead-letter list)."""
        conn = await self._connect()
        refused: set[int] = set()
        try:
            async with conn.transaction():
                for write in writes:
                    await APPLY[write["op"]](conn, write)
        except asyncpg.DataError:
            refused = await self._one_by_one(conn, writes)  # asyncpg's DataError is an InterfaceError too
        except PG_DOWN:
            raise
        except Exception:
            # One of them is refused for its content: write them one by one, and set that one aside.
            refused = await self._one_by_one(conn, writes)
        else:
            self.written += len(writes)
        self._tell_committed([write for index, write in enumerate(writes) if index not in refused])
        return refused

    def _tell_committed(self, writes: list[Write]) -> None:
        if self.committed is None or not writes:
            return
        try:
            self.committed(writes)
        except Exception:  # what follows a commit never undoes it, nor stops the writes behind it
            log.exception("handling %d committed writes failed", len(writes))

    async def _one_by_one(self, conn: asyncpg.Connection, writes: list[Write]) -> set[int]:
        """Each write in a transaction of its own; the positions of those set aside."""
        return {index for index, write in enumerate(writes) if not await self._write_alone(conn, write)}

    async def _write_alone(self, conn: asyncpg.Connection, write: Write) -> bool:
        """False when the write is refused for its content (then kept in the dead-letter list)."""
        try:
            async with conn.transaction():
                await APPLY[write["op"]](conn, write)
            self.written += 1
            return True
        except asyncpg.DataError as error:
            refusal: Exception = error
        except PG_DOWN:
            raise
        except Exception as error:  # a constraint, a bad value, a match that cannot take the change...
            refusal = error
        log.error("a %s write was refused (%r); it is kept in %s", write["op"], refusal, self.dead_key,
                  extra={"match": write.get("match"), "room": write.get("room"),
                         "players": [p.get("id") for p in write.get("players", []) if isinstance(p, dict)]})
        await self.redis.rpush(self.dead_key, orjson.dumps({"write": write, "error": str(refusal)}))
        return False

    async def _connect(self) -> asyncpg.Connection:
        """The worker's one connection (the writes are sequential by design: their order matters)."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.database_url, timeout=5, command_timeout=30)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def drain(self, timeout: float) -> bool:
        """Wait until every submitted write is written (True), or `timeout` passes (False: they stay queued, in
        memory or in the spill)."""
        try:
            async with asyncio.timeout(timeout):
                while self._memory or not self._idle.is_set():
                    self._wake.set()
                    await self._idle.wait()
                    if self._memory:
                        self._idle.clear()
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        if self._spilling is not None:
            self._spilling.cancel()
        await self._drop_connection()
