"""The nodes of a deployment, as seen in Redis: who is alive, where players connect, how loaded.

Each node heart-beats a hash with a short TTL; a node whose hash expired is dead. A sorted set indexes
the nodes by load so that new rooms go to the least-loaded live node. A dead node stays in the index until
a live node has swept up after it (`forget`), so that a sweeper dying half-way leaves the work findable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis

from lobby.keys import text

# Delete a node's hash only if its heartbeat is still the one the caller saw.
_DECLARE_DEAD = """
if redis.call('HGET', KEYS[1], 'heartbeat_ms') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    url: str
    load: int
    accepting: bool = True  # False: full, or draining; it keeps its rooms but takes no new one
    state: str = "serving"  # serving, draining, handing_off, drained
    # How old its last heartbeat was when surveyed, by its key's TTL (no clocks compared), and the heartbeat's
    # own stamp (what `declare_dead` checks); not part of identity.
    beat_age_ms: int = field(default=0, compare=False)
    heartbeat_ms: str = field(default="", compare=False)



class NodeRegistry:
    def __init__(self, client: aioredis.Redis, prefix: str, dead_after_s: float = 5.0) -> None:
        self.client = client
        self.prefix = prefix
        self.dead_after_ms = int(dead_after_s * 1000)

    @property
    def index(self) -> str:
        return f"{self.prefix}:nodes"

    def node_key(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    def drain_key(self, node_id: str) -> str:
        """An operator's request that the node drain (`tickroom drain`): the deadline in seconds."""
        return f"{self.prefix}:node:{node_id}:drain"

    async def heartbeat(self, node_id: str, url: str, load: int, now_ms: int, *, accepting: bool = True,
                        state: str = "serving") -> tuple[bool, float | None]:
        """Say this node is alive (for `dead_after_s` more), where it is, how loaded, if it takes rooms and
        whether it drains. Answers whether the node's hash was still there (False: it had expired, and the
        others may have taken the node for dead and swept it), and the drain deadline an operator asked for
        (None: no request)."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.exists(self.node_key(node_id))
            pipe.hset(self.node_key(node_id), mapping={"url": url, "load": load, "heartbeat_ms": now_ms,
                                                       "accepting": int(accepting), "state": state})
            pipe.pexpire(self.node_key(node_id), self.dead_after_ms)
            pipe.zadd(self.index, {node_id: load})
            pipe.get(self.drain_key(node_id))
            replies = await pipe.execute()
        drain = replies[4]
        return bool(replies[0]), None if drain is None else float(text(drain))

    async def request_drain(self, node_id: str, deadline_s: float) -> None:
        """Ask a node to drain (it reads this at its next heartbeat, and deletes it); kept a minute at most, so
        that a node started again later under this id does not take it for its own."""
        await self.client.set(self.drain_key(node_id), repr(float(deadline_s)), ex=60)

    async def clear_drain(self, node_id: str) -> None:
        """The node took the request (a node started again under this id must not drain at once)."""
        await self.client.delete(self.drain_key(node_id))

    async def state_of(self, node_id: str) -> str | None:
        """A live node's state (serving, draining, handing_off, drained); None when it is not alive."""
        state = await self.client.hget(self.node_key(node_id), "state")
        if state is None:
            return None if not await self.client.exists(self.node_key(node_id)) else "serving"
        return text(state)

    async def deregister(self, node_id: str) -> None:
        """A node stops: it is dead at once, and stays in the index until a live node has swept up after it
        (moved its waiting rooms, freed its players), as after a crash but without the wait."""
        await self.client.delete(self.node_key(node_id))

    async def declare_dead(self, node: NodeInfo) -> bool:
        """Make a node dead now, as its key's expiry would, unless it heart-beat since `node` was surveyed."""
        return bool(await self.client.eval(_DECLARE_DEAD, 1, self.node_key(node.node_id), node.heartbeat_ms))

    async def survey(self) -> tuple[list[NodeInfo], list[str]]:
        """Live nodes, least loaded first, and the ids of dead nodes still waiting to be swept up after."""
        ids = [text(node_id) for node_id in await self.client.zrange(self.index, 0, -1)]
        if not ids:
            return [], []
        async with self.client.pipeline(transaction=False) as pipe:
            for node_id in ids:
                pipe.hmget(self.node_key(node_id), "url", "load", "accepting", "state", "heartbeat_ms")
                pipe.pttl(self.node_key(node_id))
            replies = await pipe.execute()
        live, dead = [], []
        for node_id, (url, load, accepting, state, beat), ttl_ms in zip(ids, replies[::2], replies[1::2],
                                                                       strict=True):
            if url is None:
                dead.append(node_id)
            else:
                live.append(NodeInfo(node_id, text(url), int(load), accepting is None or text(accepting) == "1",
                                     "serving" if state is None else text(state),
                                     beat_age_ms=max(0, self.dead_after_ms - int(ttl_ms)) if ttl_ms >= 0 else 0,
                                     heartbeat_ms="" if beat is None else text(beat)))
        live.sort(key=lambda node: (node.load, node.node_id))
        return live, dead

    async def live_nodes(self) -> list[NodeInfo]:
        return (await self.survey())[0]

    async def forget(self, node_id: str) -> None:
        """Take a dead node out of the index once what it left behind has been swept up."""
        await self.client.zrem(self.index, node_id)

    async def count_room(self, node_id: str) -> None:
        """A room was just placed on the node: count it in the index at once (the next heartbeat sets the true
        figure there again). The index score is a hint for operators; nodes choose by the load in the hashes
        they survey, which each node bumps in its own copy as it places rooms (lobby/upkeep.py)."""
        await self.client.zincrby(self.index, 1, node_id)

    async def url_of(self, node_id: str) -> str | None:
        url = await self.client.hget(self.node_key(node_id), "url")
        return None if url is None else text(url)

    async def least_loaded(self) -> NodeInfo | None:
        nodes = await self.live_nodes()
        return nodes[0] if nodes else None

    async def is_alive(self, node_id: str) -> bool:
        return bool(await self.client.exists(self.node_key(node_id)))
