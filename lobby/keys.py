"""Where the lobby keeps things in Redis: every key of one game mode shares a hash tag.

`{prefix}:{{mode}}:...` puts all of a mode's keys in one Redis Cluster slot, so the lobby's scripts,
which read and write several of them at once, stay legal on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def room(self, room_id: str) -> str:
        """Hash: mode, node, state, created_ms, started_ms, countdown_ends_ms, players (JSON, join order)."""
        return f"{self.base}:room:{room_id}"

    def room_players(self, room_id: str) -> str:
        """Set of the room's player ids."""
        return f"{self.base}:room:{room_id}:players"

    def player(self, player_id: str) -> str:
        """Hash: room, node, status, joined_ms."""
        return f"{self.base}:player:{player_id}"
