"""A census of the lobby's keys in Redis: which belong to the live set (nodes, leaderboards, live rooms and
players) and which are residue of matches, rooms or nodes that are gone. For operators, benchmarks and tests:
after the last match has ended and its result is durable, the residue should be empty."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from lobby.keys import text

# A mode's keys that live as long as the mode: `PREFIX:{MODE}:NAME`.
_MODE_WIDE = frozenset({"leaderboard", "rooms", "rooms:available", "queue"})
# A live node's own keys: `PREFIX:node:ID:NAME` (its heartbeat hash is `PREFIX:node:ID`).
_NODE_OWN = frozenset({"", "drain", "notices", "writes:spill", "writes:spill:inflight"})
_NODE_OWN_IN_MODE = frozenset({"rooms", "conns", "adopt"})
SCAN_COUNT = 1000


@dataclass(slots=True)
class Census:
    live: list[str] = field(default_factory=list)
    residue: dict[str, str] = field(default_factory=dict)  # key -> what kind of residue it is

    def residue_kinds(self) -> Counter[str]:
        return Counter(self.residue.values())


def _split_mode(prefix: str, key: str) -> tuple[str, str] | None:
    """(mode, rest) of `PREFIX:{MODE}:rest`, else None."""
    head = f"{prefix}:{{"
    if not key.startswith(head):
        return None
    mode, sep, rest = key[len(head):].partition("}:")
    return (mode, rest) if sep else None


async def take_census(client: aioredis.Redis, prefix: str) -> Census:
    """Every key under `prefix`, sorted into the live set and the residue (read with SCAN: a few round trips per
    thousand keys, never a blocking KEYS)."""
    keys = sorted([text(key) async for key in client.scan_iter(match=f"{prefix}:*", count=SCAN_COUNT)])
    nodes = {text(node) for node in await client.zrange(f"{prefix}:nodes", 0, -1)}
    rooms: dict[str, set[str]] = {}
    states: dict[tuple[str, str], str] = {}
    for key in keys:
        split = _split_mode(prefix, key)
        if split is not None and split[1] == "rooms":
            room_ids = {text(room) for room in await client.smembers(key)}
            rooms[split[0]] = room_ids
            for room_id in room_ids:
                state = await client.hget(f"{prefix}:{{{split[0]}}}:room:{room_id}", "state")
                states[(split[0], room_id)] = "" if state is None else text(state)
    census = Census()
    for key in keys:
        why = _residue_kind(prefix, key, nodes, rooms, states)
        if why is None:
            census.live.append(key)
        else:
            census.residue[key] = why
    return census


def _residue_kind(prefix: str, key: str, nodes: set[str], rooms: dict[str, set[str]],
                  states: dict[tuple[str, str], str]) -> str | None:
    """None for a key of the live set, else the kind of residue it is."""
    if key == f"{prefix}:nodes":
        return None
    node_head = f"{prefix}:node:"
    if key.startswith(node_head):
        node, _, rest = key[len(node_head):].partition(":")
        if rest == "writes:spill:dead":
            return "dead-letter writes"
        return None if node in nodes and rest in _NODE_OWN else f"node {rest or 'hash'} of a gone node"
    split = _split_mode(prefix, key)
    if split is None:
        return "unknown"
    mode, rest = split
    if rest in _MODE_WIDE:
        return None
    parts = rest.split(":")
    if parts[0] == "node" and len(parts) == 3:
        return None if parts[1] in nodes and parts[2] in _NODE_OWN_IN_MODE else f"node:{parts[2]}"
    if parts[0] == "player" and len(parts) == 2:
        return None  # a player's hash lives while they are (its TTL is refreshed while they play or wait)
    if parts[0] == "player" and len(parts) == 3:
        return f"player:{parts[2]}"
    if parts[0] == "room" and len(parts) in (2, 3):
        live = parts[1] in rooms.get(mode, set())
        kind = parts[2] if len(parts) == 3 else ""
        if kind == "snapshot":
            return None if live and states.get((mode, parts[1])) == "running" else "room:snapshot"
        if kind in ("", "players", "ttl"):
            return None if live else f"room{':' + kind if kind else ''} of a gone room"
        return f"room:{kind}"
    if parts[0] == "match" and len(parts) == 3:
        return f"match:{parts[2]}"
    return "unknown"
