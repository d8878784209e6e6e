"""The leaderboard in Redis: one sorted set per game mode, player ids scored by their total score.

This is the interface the rest of the server uses; the persistence issue keeps it in step with Postgres (it
adds each kill's points as they happen and rebuilds the set from Postgres when Redis lost it).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from lobby.keys import LobbyKeys, text
from lobby.outage import Backoff, stop_if_cancelled


@dataclass(frozen=True, slots=True)
class Standing:
    rank: int  # 1 for the best score; equal scores share a rank
    player_id: str
    score: int



class Leaderboard:
    def __init__(self, client: aioredis.Redis, keys: LobbyKeys) -> None:
        self.client = client
        self.key = keys.leaderboard

    async def add(self, player_id: str, points: int) -> int:
        """Add `points` (may be negative) to the player's score; their new score."""
        score = await self.client.zincrby(self.key, points, player_id)
        assert score is not None  # ZINCRBY always answers the new score
        return int(score)

    async def replace(self, scores: dict[str, int]) -> None:
        """Set the whole board at once (a rebuild from Postgres): atomically, so readers never see it half done."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.key)
            if scores:
                pipe.zadd(self.key, scores)
            await pipe.execute()

    async def top(self, limit: int) -> list[Standing]:
        """The best `limit` players, best first; equal scores share a rank (1, 1, 3) and are listed by player id."""
        entries: list[Any] = await self.client.zrevrange(self.key, 0, max(0, limit - 1), withscores=True)
        entries.sort(key=lambda entry: (-entry[1], text(entry[0])))
        standings: list[Standing] = []
        for position, (player_id, score) in enumerate(entries, start=1):
            tied = standings and standings[-1].score == int(score)
            standings.append(Standing(standings[-1].rank if tied else position, text(player_id), int(score)))
        return standings

    async def standing(self, player_id: str) -> Standing | None:
        """One player's rank and score, or None if they have none."""
        score = await self.client.zscore(self.key, player_id)
        if score is None:
            return None
        better = await self.client.zcount(self.key, f"({score}", "+inf")
        return Standing(int(better) + 1, player_id, int(score))


# A match's "told" hash is deleted once its result is in Postgres (`forget`); this TTL only bounds the hash of a
# match whose end no node saw through (a node lost with the match and nothing to restore it from).
TOLD_TTL_S = 86_400


COALESCE_S = 0.2  # how long points wait for others to share their write


class LeaderboardFeed:
    """Points added as they happen (each kill), without awaiting: summed per player in memory and written by
    one task in a pipeline. Points that Redis could not take stay summed here and go with the next write."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.tally: Counter[str] | None = None  # Redis failures, for the node's metrics
        self.client = client
        self.prefix = prefix
        self._pending: dict[tuple[str, str, str], int] = {}  # (mode, match, player) -> points
        self._over: set[tuple[str, str]] = set()  # (mode, match): results in Postgres, their "told" to delete
        self._wake = asyncio.Event()
        self.written = 0  # point updates written, for the tests

    def add(self, mode: str, match_id: str, player_id: str, points: int) -> None:
        """Add the points (0 too: the player is listed on the board, as after a rebuild from Postgres)."""
        key = (mode, match_id, player_id)
        self._pending[key] = self._pending.get(key, 0) + points
        self._wake.set()

    def forget(self, mode: str, match_id: str) -> None:
        """The match's result is in Postgres: what the leaderboard was told of it guards nothing any more (no
        restore brings back a match Postgres has as over). Deleted after any points of it still to write, so
        that a late write never creates the hash again."""
        self._over.add((mode, match_id))
        self._wake.set()

    async def told(self, mode: str, match_ids: list[str]) -> dict[str, dict[str, int]]:
        """For each match, the points per player the leaderboard has been told of so far."""
        async with self.client.pipeline(transaction=False) as pipe:
            for match_id in match_ids:
                pipe.hgetall(LobbyKeys(self.prefix, mode).match_told(match_id))
            replies = await pipe.execute()
        return {match_id: {text(k): int(v) for k, v in reply.items()}
                for match_id, reply in zip(match_ids, replies, strict=True)}

    async def run(self) -> None:
        backoff = Backoff(tally=self.tally)
        while True:
            stop_if_cancelled()  # redis-py may swallow a cancellation that hits it mid-call
            await self._wake.wait()
            # Points of the next moments go in the same write: one round trip per kill would cost the node more
            # than a room's tick (a pipeline per kill was ~7 % of a loaded node's CPU).
            await asyncio.sleep(COALESCE_S)
            self._wake.clear()
            pending, self._pending = self._pending, {}
            over, self._over = self._over, set()
            try:
                async with self.client.pipeline(transaction=True) as pipe:  # the board and what it was told
                    for (mode, match_id, player_id), points in pending.items():
                        keys = LobbyKeys(self.prefix, mode)
                        pipe.zincrby(keys.leaderboard, points, player_id)
                        pipe.hincrby(keys.match_told(match_id), player_id, points)
                        pipe.expire(keys.match_told(match_id), TOLD_TTL_S)
                    for mode, match_id in over:
                        pipe.delete(LobbyKeys(self.prefix, mode).match_told(match_id))
                    await pipe.execute()
            except Exception as error:  # an outage, or anything unexpected: keep the points, back off
                for key, points in pending.items():  # keep them for the next write
                    self._pending[key] = self._pending.get(key, 0) + points
                self._over |= over
                self._wake.set()
                await backoff.wait("the leaderboard feed", error)
                continue
            self.written += len(pending)
            backoff.reset("the leaderboard feed")


async def rebuild_if_missing(client: aioredis.Redis, keys: LobbyKeys,
                             totals: Callable[[], Awaitable[dict[str, int]]]) -> bool:
    """When Redis has no leaderboard for the mode (a new deployment, or Redis lost its data), rebuild it from
    Postgres's totals; True if it did."""
    if await client.exists(keys.leaderboard):
        return False
    await Leaderboard(client, keys).replace(await totals())
    return True
