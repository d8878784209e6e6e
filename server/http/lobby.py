"""The lobby's small HTTP endpoints: `GET /lobby/rooms` (every room with its count and countdown) and
`GET /lobby/rooms/ID` (one room and its players), read from Redis on every request."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import orjson

from lobby.hub import LobbyHub
from lobby.outage import LobbyUnavailable
from lobby.seating import RoomRecord
from server.net.protocol import ErrorCode, handshake_error_body

ROOM_PATH = re.compile(r"/lobby/rooms/([A-Za-z0-9_-]{1,64})/?")


class LobbyEndpoints:
    def __init__(self, hub: LobbyHub) -> None:
        self.hub = hub

    async def answer(self, path: str, query: dict[str, list[str]]) -> tuple[HTTPStatus, bytes]:
        mode = query.get("mode", ["arena"])[0]
        if mode not in self.hub.seatings:
            return HTTPStatus.BAD_REQUEST, handshake_error_body(
                ErrorCode.UNKNOWN_MODE, f"unknown mode {mode[:40]!r}; this lobby has {sorted(self.hub.seatings)}")
        try:
            if path.rstrip("/") == "/lobby/rooms":
                return HTTPStatus.OK, await self._rooms(mode)
            match = ROOM_PATH.fullmatch(path)
            if match is None:
                return HTTPStatus.NOT_FOUND, handshake_error_body(ErrorCode.NOT_FOUND, f"no endpoint at {path[:80]}")
            return await self._room(mode, match.group(1))
        except LobbyUnavailable:
            return HTTPStatus.SERVICE_UNAVAILABLE, handshake_error_body(
                ErrorCode.LOBBY_UNAVAILABLE, "matchmaking is unavailable right now (Redis is unreachable)")

    def _summary(self, record: RoomRecord, now_ms: int) -> dict[str, Any]:
        countdown = None if record.countdown_ends_ms is None else max(0, record.countdown_ends_ms - now_ms)
        return {"id": record.room_id, "state": record.state, "node": record.node, "players": len(record.players),
                "countdown_ms": countdown, "created_ms": record.created_ms, "started_ms": record.started_ms}

    async def _rooms(self, mode: str) -> bytes:
        records = await self.hub.rooms(mode)
        now = self.hub.wall_ms()
        # Open rooms first (fullest first, as the lobby fills them), then running ones.
        records.sort(key=lambda r: (r.state == "running", -len(r.players), r.created_ms, r.room_id))
        return orjson.dumps({"mode": mode, "rooms": [self._summary(record, now) for record in records]})

    async def _room(self, mode: str, room_id: str) -> tuple[HTTPStatus, bytes]:
        record = await self.hub.room(mode, room_id)
        if record is None:
            return HTTPStatus.NOT_FOUND, handshake_error_body(ErrorCode.ROOM_NOT_FOUND, f"no room {room_id}")
        body = self._summary(record, self.hub.wall_ms())
        body["mode"] = mode
        body["url"] = self.hub.node_url(record.node)
        body["players"] = [member.wire() for member in record.players]
        return HTTPStatus.OK, orjson.dumps(body)
