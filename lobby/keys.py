"""Where the lobby keeps things in Redis: every key of one game mode shares a hash tag.

`{prefix}:{{mode}}:...` puts all of a mode's keys in one Redis Cluster slot, so the lobby's scripts, which
read and write several of them at once, stay legal on a cluster. The scripts build the same names from the
base (`lobby/lua/common.lua`); this class names them for Python readers, tests and the docs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def text(value: Any) -> str:
    """A Redis reply as text: bytes from a client without `decode_responses`, str from one with it."""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class LobbyKeys:
    prefix: str
    mode: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.mode}}}"

    @property
    def available(self) -> str:
        """Sorted set of rooms that still have a seat, scored by their player count."""
        return f"{self.base}:rooms:available"

    @property
    def queue(self) -> str:
        """Sorted set of waiting players (room-less or in a room not started yet), scored by when they began."""
        return f"{self.base}:queue"

    @property
    def rooms(self) -> str:
        """Set of every room id of the mode, for listing."""
        return f"{self.base}:rooms"

    def room_snapshot(self, room_id: str) -> str:
        """A running room's latest snapshot (persistence/snapshots.py), with a TTL: what recovery restores."""
        return f"{self.base}:room:{room_id}:snapshot"

    def room_over(self, room_id: str) -> str:
        """Set for an hour when the lobby saw a room end: recovery from Postgres leaves its match alone."""
        return f"{self.base}:room:{room_id}:over"

    def match_told(self, match_id: str) -> str:
        """Hash: player id -> the points of this match the leaderboard was told of (so that a room restored
        from an older snapshot tells it only the difference)."""
        return f"{self.base}:match:{match_id}:told"

    def match_claim(self, match_id: str) -> str:
        """The node that claimed a live match the lobby had lost, to restore it from Postgres (an hour)."""
        return f"{self.base}:match:{match_id}:claim"

    @property
    def leaderboard(self) -> str:
        """Sorted set of player ids by total score (lobby/leaderboard.py; kept in step with Postgres)."""
        return f"{self.base}:leaderboard"

    def room(self, room_id: str) -> str:
        """Hash: mode, node, state, created_ms, started_ms, countdown_ends_ms, players (JSON, join order)."""
        return f"{self.base}:room:{room_id}"

    def room_players(self, room_id: str) -> str:
        """Set of the room's player ids."""
        return f"{self.base}:room:{room_id}:players"

    def room_shadow(self, room_id: str) -> str:
        """The key whose expiry is the room's expiry; the room's data outlives it so it can still be read."""
        return f"{self.base}:room:{room_id}:ttl"

    def player(self, player_id: str) -> str:
        """Hash: room, node, status, joined_ms, name, conn, conn_node, conn_kind."""
        return f"{self.base}:player:{player_id}"

    def player_saved(self, player_id: str) -> str:
        """Set of the matches whose results became durable after the player left their room (join.lua tells
        and deletes it)."""
        return f"{self.base}:player:{player_id}:saved"

    def node_rooms(self, node_id: str) -> str:
        """Set of the rooms a node hosts (for the sweep when it dies)."""
        return f"{self.base}:node:{node_id}:rooms"

    def node_conns(self, node_id: str) -> str:
        """Set of the players whose connection is on a node (for the sweep when it dies)."""
        return f"{self.base}:node:{node_id}:conns"

    def node_adopt(self, node_id: str) -> str:
        """Set of the running rooms a sweep gave this node to restore from their snapshots (recovery)."""
        return f"{self.base}:node:{node_id}:adopt"

    def node_swept(self, node_id: str) -> str:
        """Set of the running rooms a sweep took from a node (kept an hour, for a node that only stalled)."""
        return f"{self.base}:node:{node_id}:swept"

    def room_id_of_shadow(self, key: str) -> str | None:
        """The room id if `key` is one of this mode's shadow keys, else None."""
        head, tail = f"{self.base}:room:", ":ttl"
        if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
            return key[len(head):-len(tail)]
        return None
