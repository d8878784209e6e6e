"""Room snapshots in Redis: `PREFIX:{MODE}:room:ID:snapshot`, a JSON document with a TTL, written in pipelined
batches and read back by recovery. Redis may lose them (Postgres keeps positions too, less often); a missing
or unreadable snapshot reads as None."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from lobby.keys import LobbyKeys

log = logging.getLogger("tickroom.persistence.snapshots")


@dataclass(frozen=True, slots=True)
class Snapshot:
    mode: str
    room_id: str
    body: bytes  # JSON, as `server/rooms/room.py` writes it


class SnapshotStore:
    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def key(self, mode: str, room_id: str) -> str:
        return LobbyKeys(self.prefix, mode).room_snapshot(room_id)

    async def save(self, snapshots: Sequence[Snapshot]) -> None:
        """Write all of them in one round trip (a pipeline without MULTI: each SET stands alone)."""
        if not snapshots:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for snapshot in snapshots:
                pipe.set(self.key(snapshot.mode, snapshot.room_id), snapshot.body, ex=self.ttl_s)
            await pipe.execute()

    async def delete(self, rooms: Sequence[tuple[str, str]]) -> None:
        """Delete the snapshots of these (mode, room id) in one round trip."""
        if not rooms:
            return
        async with self.client.pipeline(transaction=False) as pipe:  # one DEL each: modes have slots of their own
            for mode, room_id in rooms:
                pipe.delete(self.key(mode, room_id))
            await pipe.execute()

    async def load(self, mode: str, room_id: str) -> dict[str, Any] | None:
        return self._parse(mode, room_id, await self.client.get(self.key(mode, room_id)))

    async def load_many(self, mode: str, room_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The readable snapshots of these rooms, in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for room_id in room_ids:
                pipe.get(self.key(mode, room_id))
            replies = await pipe.execute()
        return {room_id: document for room_id, raw in zip(room_ids, replies, strict=True)
                if (document := self._parse(mode, room_id, raw)) is not None}

    @staticmethod
    def _parse(mode: str, room_id: str, raw: bytes | str | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("snapshot of room %s (%s) is not JSON; ignoring it", room_id, mode)
            return None
        return document if isinstance(document, dict) else None
